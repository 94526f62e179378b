"""Feedback U-Net (Shibuya & Hotta, "Feedback U-Net for Cell Image Segmentation", CVPR Workshops 2020).

The U-Net's output is fed back into the **same** network: round 1 reads the image, round ``r > 1`` reads
the class-probability map (softmax of round ``r - 1``'s logits).  Every block of the encoder and the decoder
is a convolutional LSTM block (Shi et al., NeurIPS 2015, :class:`ConvLSTMCell` followed by a 3x3 conv + BN +
ReLU, in place of U-Net's first convolution), whose hidden and cell states carry the features of round
``r - 1`` into round ``r``: "the features in the second round are extracted based on the features acquired
in the first round".  The loss covers every round (:mod:`.train` averages the per-round cross-entropies).

Implementation choices (documented deviations; ``examples/segmentation_table.py --ablation`` measures the
effect of ``lstm="none"``, not yet run at full size, see docs/segmentation-results.md):

* the two inputs (image: C channels, probabilities: K channels) get their own 3x3 stem convolution, so that
  the rest of the network — all the ConvLSTM blocks, the decoder and the head — is shared by the rounds;
* ``lstm="none"`` is a simplification without memory: plain U-Net blocks, and round ``r > 1`` reads the
  image stem plus the probability stem (it would otherwise have lost the image);
* the fed-back probabilities are not detached: gradients flow through every round (training and attacks).

Shapes: ``x`` (N, C, H, W) in [0, 1], optional ``prior`` (N, P, H, W) (the leak prior, given to both stems),
``forward(x, prior, rounds=R)`` -> list of R logit maps (N, K, H, W).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrustVisionError
from .unet import DoubleConv, Upsample, check_geometry, conv_bn_relu

LSTM_MODES = ("all", "none")


class ConvLSTMCell(nn.Module):
    """Convolutional LSTM cell: gates from one 3x3 convolution over [input, hidden].

    ``forward(x (N, cin, H, W), state (h, c) each (N, hid, H, W) | None) -> (h, c)``; a None state is zeros.
    """

    def __init__(self, cin: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Conv2d(cin + hidden, 4 * hidden, 3, padding=1)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            z = x.new_zeros(x.shape[0], self.hidden, *x.shape[-2:])
            state = (z, z)
        h, c = state
        i, f, o, g = self.gates(torch.cat([x, h], 1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class LSTMBlock(nn.Module):
    """ConvLSTM cell then (3x3 conv, BN, ReLU): ``(x, state) -> (y (N, cout, H, W), new state)``."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.cell = ConvLSTMCell(cin, cout)
        self.post = nn.Sequential(*conv_bn_relu(cout, cout, batch_norm))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = self.cell(x, state)
        return self.post(h), (h, c)


class PlainBlock(nn.Module):
    """A U-Net double convolution with the block interface of :class:`LSTMBlock` (no state)."""

    def __init__(self, cin: int, cout: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = DoubleConv(cin, cout, batch_norm)

    def forward(self, x: Tensor, state: None) -> tuple[Tensor, None]:
        return self.conv(x), None


class FeedbackUNet(nn.Module):
    """Feedback U-Net with ConvLSTM blocks; ``forward(x, prior=None, rounds=None) -> [logits (N, K, H, W)] * R``.

    Args:
        in_channels, num_classes, depth, width, batch_norm, up, prior_channels: as :class:`~.unet.UNet`.
        rounds: default number of rounds (the paper uses 2).
        lstm: ``"all"`` (the paper: ConvLSTM blocks everywhere) or ``"none"`` (see the module docstring).
    """

    feedback = True

    def __init__(self, in_channels: int, num_classes: int, *, depth: int = 3, width: int = 16,
                 batch_norm: bool = True, up: str = "bilinear", prior_channels: int = 0, rounds: int = 2,
                 lstm: str = "all") -> None:
        super().__init__()
        check_geometry(depth, width)
        if lstm not in LSTM_MODES:
            raise TrustVisionError(f"lstm must be one of {LSTM_MODES}, got {lstm!r}")
        if rounds < 1:
            raise TrustVisionError(f"--rounds must be >= 1, got {rounds}")
        self.in_channels, self.num_classes, self.prior_channels = in_channels, num_classes, prior_channels
        self.rounds, self.lstm = rounds, lstm
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "depth": depth, "width": width,
                       "batch_norm": batch_norm, "up": up, "prior_channels": prior_channels, "rounds": rounds,
                       "lstm": lstm}
        block = LSTMBlock if lstm == "all" else PlainBlock
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.stem_image = nn.Sequential(*conv_bn_relu(in_channels + prior_channels, width, batch_norm))
        self.stem_feedback = nn.Sequential(*conv_bn_relu(num_classes + prior_channels, width, batch_norm))
        self.down = nn.ModuleList([block(width, widths[0], batch_norm)] +
                                  [block(widths[i], widths[i + 1], batch_norm) for i in range(depth)])
        self.ups, self.dec = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(depth)):
            upm = Upsample(widths[i + 1], up)
            self.ups.append(upm)
            self.dec.append(block(upm.out_channels + widths[i], widths[i], batch_norm))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _with_prior(self, t: Tensor, prior: Tensor | None) -> Tensor:
        if self.prior_channels:
            if prior is None or prior.shape[1] != self.prior_channels:
                raise TrustVisionError(f"this Feedback U-Net was built for a {self.prior_channels}-channel leak "
                                       f"prior; got {None if prior is None else tuple(prior.shape)}")
            return torch.cat([t, prior.to(t.dtype)], 1)
        if prior is not None:
            raise TrustVisionError("a leak prior was given but this Feedback U-Net has no prior channels")
        return t

    def _round(self, h: Tensor, states: list) -> tuple[Tensor, list, Tensor]:
        """One pass of the shared network from stem features ``h``; returns logits, new states, bottleneck."""
        new: list = []
        feats = []
        for i, blk in enumerate(self.down):
            h, st = blk(h if i == 0 else F.max_pool2d(feats[-1], 2), states[len(new)])
            feats.append(h)
            new.append(st)
        for upm, blk, skip in zip(self.ups, self.dec, reversed(feats[:-1])):
            h, st = blk(torch.cat([upm(h, skip.shape[-2:]), skip], 1), states[len(new)])
            new.append(st)
        return self.head(h), new, feats[-1]

    def forward(self, x: Tensor, prior: Tensor | None = None, rounds: int | None = None) -> list[Tensor]:
        rounds = self.rounds if rounds is None else int(rounds)
        if rounds < 1:
            raise TrustVisionError(f"--rounds must be >= 1, got {rounds}")
        image = self.stem_image(self._with_prior(x, prior))
        states: list = [None] * (len(self.down) + len(self.dec))
        outs: list[Tensor] = []
        for r in range(rounds):
            if r == 0:
                h = image
            else:
                h = self.stem_feedback(self._with_prior(torch.softmax(outs[-1], 1), prior))
                if self.lstm == "none":
                    h = h + image
            logits, states, _ = self._round(h, states)
            outs.append(logits)
        return outs

    def embed(self, x: Tensor, prior: Tensor | None = None) -> Tensor:
        """Image embeddings (N, D): the global-average-pooled round-1 bottleneck."""
        states: list = [None] * (len(self.down) + len(self.dec))
        return self._round(self.stem_image(self._with_prior(x, prior)), states)[2].mean(dim=(2, 3))
