"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015).

An encoder of ``depth`` down-sampling stages (two 3x3 convolutions, batch norm, ReLU, 2x2 max-pool) and a
decoder that up-samples (bilinear interpolation or a 2x2 transposed convolution), concatenates the skip
connection of the same scale and applies two 3x3 convolutions; a 1x1 convolution gives K class logits.
Padding keeps the output the size of the input (the paper's valid convolutions and overlap-tile are not
used: inputs here are small and whole).  Widths double at every stage: ``width * 2**level``.

Shapes: ``x`` (N, C, H, W) in [0, 1] (any H, W; odd sizes are handled by resizing the up-sampled map to
the skip's size), an optional ``prior`` (N, P, H, W) concatenated to the input (the test-time annotation
prior of :mod:`.leak`), logits (N, K, H, W).  :meth:`UNet.embed` gives (N, D) image embeddings (the
global-average-pooled bottleneck) for retrieval.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrustVisionError

UPSAMPLING = ("bilinear", "transpose")


def conv_bn_relu(cin: int, cout: int, batch_norm: bool = True) -> list[nn.Module]:
    """A 3x3 same-padding convolution, optional batch norm, ReLU (as a list of layers)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class DoubleConv(nn.Sequential):
    """Two (3x3 conv, BN, ReLU): (N, cin, H, W) -> (N, cout, H, W)."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True) -> None:
        super().__init__(*conv_bn_relu(cin, cout, batch_norm), *conv_bn_relu(cout, cout, batch_norm))


class Upsample(nn.Module):
    """Up-sample (N, cin, h, w) to the skip's size: bilinear (channels kept) or 2x2 transposed conv (cin // 2)."""

    def __init__(self, cin: int, mode: str) -> None:
        super().__init__()
        if mode not in UPSAMPLING:
            raise TrustVisionError(f"up-sampling must be one of {UPSAMPLING}, got {mode!r}")
        self.mode = mode
        self.out_channels = cin if mode == "bilinear" else cin // 2
        self.tconv = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2) if mode == "transpose" else None

    def forward(self, x: Tensor, size: torch.Size) -> Tensor:
        if self.tconv is None:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.tconv(x)
        return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def check_geometry(depth: int, width: int) -> None:
    """One-line errors for impossible depth/width settings."""
    if depth < 1 or depth > 6:
        raise TrustVisionError(f"--depth must be 1..6, got {depth}")
    if width < 2:
        raise TrustVisionError(f"--width must be >= 2, got {width}")


class UNet(nn.Module):
    """U-Net: ``forward(x (N, C, H, W), prior (N, P, H, W) | None) -> logits (N, K, H, W)``.

    Args:
        in_channels: image channels C.
        num_classes: K output classes.
        depth: number of 2x down-sampling stages (the bottleneck is at 1 / 2**depth resolution).
        width: channels of the first stage (doubled per stage).
        batch_norm: batch norm after every convolution.
        up: ``"bilinear"`` or ``"transpose"`` up-sampling.
        prior_channels: P extra input channels (the leak prior); 0 for none.
    """

    feedback = False

    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 3, width: int = 16,
                 batch_norm: bool = True, up: str = "bilinear", prior_channels: int = 0) -> None:
        super().__init__()
        check_geometry(depth, width)
        self.in_channels, self.num_classes, self.prior_channels = in_channels, num_classes, prior_channels
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "depth": depth, "width": width,
                       "batch_norm": batch_norm, "up": up, "prior_channels": prior_channels}
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([DoubleConv(in_channels + prior_channels, widths[0], batch_norm)] +
                                  [DoubleConv(widths[i], widths[i + 1], batch_norm) for i in range(depth)])
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            upm = Upsample(widths[i + 1], up)
            self.ups.append(upm)
            self.dec.append(DoubleConv(upm.out_channels + widths[i], widths[i], batch_norm))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _input(self, x: Tensor, prior: Tensor | None) -> Tensor:
        if self.prior_channels:
            if prior is None or prior.shape[1] != self.prior_channels:
                raise TrustVisionError(f"this U-Net was built for a {self.prior_channels}-channel leak prior; "
                                       f"got {None if prior is None else tuple(prior.shape)}")
            return torch.cat([x, prior.to(x.dtype)], 1)
        if prior is not None:
            raise TrustVisionError("a leak prior was given but this U-Net was built without prior channels")
        return x

    def encode(self, x: Tensor, prior: Tensor | None = None) -> list[Tensor]:
        """Feature maps of every encoder stage, finest first; the last is the bottleneck (N, width*2**depth, h, w)."""
        feats = [self.down[0](self._input(x, prior))]
        for block in self.down[1:]:
            feats.append(block(F.max_pool2d(feats[-1], 2)))
        return feats

    def decode(self, feats: list[Tensor]) -> Tensor:
        """Logits (N, K, H, W) from the encoder's feature maps."""
        h = feats[-1]
        for upm, block, skip in zip(self.ups, self.dec, reversed(feats[:-1])):
            h = block(torch.cat([upm(h, skip.shape[-2:]), skip], 1))
        return self.head(h)

    def forward(self, x: Tensor, prior: Tensor | None = None) -> Tensor:
        return self.decode(self.encode(x, prior))

    def embed(self, x: Tensor, prior: Tensor | None = None) -> Tensor:
        """Image embeddings (N, D): the global-average-pooled bottleneck, for nearest-neighbour retrieval."""
        return self.encode(x, prior)[-1].mean(dim=(2, 3))
