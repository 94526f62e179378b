"""Input-transformation defences as Classifier wrappers — the ones that *look* strong.

Each transform maps pixels (N, C, H, W) in [0, 1] to pixels of the same shape before the model:

* :class:`JPEG` — JPEG compression (Dziugaite et al. 2016; Guo et al., ICLR 2018), through Pillow;
  not differentiable (the output is detached uint8 data).
* :class:`BitDepth` — colour bit-depth reduction, "feature squeezing" (Xu, Evans & Qi, NDSS 2018);
  ``round`` has a zero gradient almost everywhere.
* :class:`Median` — median smoothing over a k×k window (Xu et al. 2018); differentiable (the gradient
  flows to the median pixel of each window).
* :class:`RandomResizePad` — random resizing and padding (Xie et al., "Mitigating Adversarial Effects
  Through Randomization", ICLR 2018): each image is shrunk by a random factor in ``[min_scale, 1]``
  and placed at a random offset on a zero canvas, batched with one ``affine_grid``/``grid_sample``.
  Differentiable but random: every call draws anew from the transform's own seeded stream.

Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018, showed
that all of these fall to *adaptive* attacks: **BPDA** (backward pass differentiable approximation:
use the identity as the transform's gradient) for the shattered gradients of JPEG and bit-depth, and
**EOT** (expectation over transformation: attack the mean over random draws) for randomization.
:meth:`DefendedClassifier.bpda` gives the straight-through view ``x + (t(x) − x).detach()``, whose forward
pass is the defence's exactly; :mod:`trustvision.evaluation.sections.adaptive` detects when to use it.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..registry import Registry


DEFENCES: Registry[type["InputTransform"]] = Registry("defence")
"""Input-transformation defences by ``--defense`` spec name; add one with ``@DEFENCES.register("name")``."""


class InputTransform(nn.Module):
    """Base class: ``forward(x (N, C, H, W) in [0, 1]) -> (N, C, H, W)``.

    ``arg_type`` converts the one optional argument of a ``--defense NAME:ARG`` spec for the constructor.
    """

    name: ClassVar[str] = "transform"
    differentiable: ClassVar[bool] = True
    random: ClassVar[bool] = False
    arg_type: ClassVar[type] = int

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(x)

    def transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


@DEFENCES.register("jpeg")
class JPEG(InputTransform):
    """JPEG round trip at ``quality`` (1–100); 1- and 3-channel images."""

    name = "jpeg"
    differentiable = False

    def __init__(self, quality: int = 75) -> None:
        super().__init__()
        if not (isinstance(quality, int) and 1 <= quality <= 100):
            raise TrustVisionError(f"jpeg: quality must be an integer in 1..100, got {quality!r}")
        self.quality = quality

    def transform(self, x: Tensor) -> Tensor:
        import io

        import numpy as np
        from PIL import Image
        if x.shape[1] not in (1, 3):
            raise TrustVisionError(f"jpeg: images must have 1 or 3 channels, got {x.shape[1]}")
        u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.empty_like(u8)
        for i, img in enumerate(u8):          # Pillow codes one image at a time (CPU work either way)
            buf = io.BytesIO()
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=self.quality)
            out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255

    def describe(self) -> str:
        return f"jpeg(quality={self.quality})"


@DEFENCES.register("bitdepth")
class BitDepth(InputTransform):
    """Quantise each channel to ``bits`` bits: ``round(x·(2^b − 1)) / (2^b − 1)``."""

    name = "bitdepth"
    differentiable = False

    def __init__(self, bits: int = 3) -> None:
        super().__init__()
        if not (isinstance(bits, int) and 1 <= bits <= 8):
            raise TrustVisionError(f"bitdepth: bits must be an integer in 1..8, got {bits!r}")
        self.levels = 2 ** bits - 1
        self.bits = bits

    def transform(self, x: Tensor) -> Tensor:
        return torch.round(x * self.levels) / self.levels

    def describe(self) -> str:
        return f"bitdepth(bits={self.bits})"


@DEFENCES.register("median")
class Median(InputTransform):
    """k×k median filter with reflection padding (k odd)."""

    name = "median"

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        if not (isinstance(k, int) and k >= 1 and k % 2 == 1):
            raise TrustVisionError(f"median: window k must be an odd integer >= 1, got {k!r}")
        self.k = k

    def transform(self, x: Tensor) -> Tensor:
        p = self.k // 2
        padded = F.pad(x, (p, p, p, p), mode="reflect") if p else x
        n, c, h, w = x.shape
        windows = F.unfold(padded.reshape(n * c, 1, h + 2 * p, w + 2 * p), self.k)     # (NC, k², HW)
        return windows.median(dim=1).values.view(n, c, h, w)

    def describe(self) -> str:
        return f"median(k={self.k})"


@DEFENCES.register("resize-pad")
class RandomResizePad(InputTransform):
    """Shrink each image by a random factor in ``[min_scale, 1]`` and pad it at a random offset (zeros)."""

    name = "resize-pad"
    random = True
    arg_type = float

    def __init__(self, min_scale: float = 0.8, seed: int = 0) -> None:
        super().__init__()
        if not 0 < min_scale <= 1:
            raise TrustVisionError(f"resize-pad: min_scale must be in (0, 1], got {min_scale!r}")
        self.min_scale, self.seed = float(min_scale), int(seed)
        self._gen: torch.Generator | None = None

    def transform(self, x: Tensor) -> Tensor:
        if self._gen is None or self._gen.device != x.device:
            self._gen = torch.Generator(device=x.device).manual_seed(self.seed)
        n = len(x)
        u = torch.rand(n, 3, generator=self._gen, device=x.device, dtype=x.dtype)
        s = self.min_scale + (1 - self.min_scale) * u[:, 0]                 # shrink factor
        shift = (1 - s)[:, None] * (2 * u[:, 1:] - 1)                       # keeps the image on the canvas
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
        theta[:, :, 2] = -shift / s[:, None]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def describe(self) -> str:
        return f"resize-pad(min_scale={self.min_scale:g})"


class _Defended(nn.Module):
    def __init__(self, transform: InputTransform, base: Classifier, straight_through: bool) -> None:
        super().__init__()
        self.transform, self.base, self.straight_through = transform, base, straight_through
        self.base_module = base.module          # registered, so weights_hash() covers the model

    def forward(self, x: Tensor) -> Tensor:
        t = self.transform(x)
        if self.straight_through:              # BPDA: forward t(x), backward identity
            t = x + (t - x).detach()
        return self.base(t)


class DefendedClassifier(Classifier):
    """``base`` behind an input transformation; same labels, channels and device as ``base``.

    ``DefendedClassifier(clf, JPEG(75))(x)`` = ``clf(jpeg(x))`` for pixels ``x`` (N, C, H, W) in [0, 1].
    """

    def __init__(self, base: Classifier, transform: InputTransform, *, straight_through: bool = False) -> None:
        if not isinstance(transform, InputTransform):
            raise TrustVisionError(f"defence must be an InputTransform, got {type(transform).__name__}")
        self.base, self.transform = base, transform
        super().__init__(_Defended(transform, base, straight_through), num_classes=base.num_classes, channels=base.channels,
                         input_size=base.input_size, labels=base.labels, device=base.device,
                         name=f"{base.name} + {transform.describe()}" + (" [BPDA]" if straight_through else ""))

    @property
    def random(self) -> bool:
        return self.transform.random

    def bpda(self) -> "DefendedClassifier":
        """The BPDA view: the same forward pass up to float rounding (same transform object and random stream), identity
        gradient through the transform."""
        return DefendedClassifier(self.base, self.transform, straight_through=True)


def defend(classifier: Classifier, spec: str) -> DefendedClassifier:
    """``classifier`` behind the transform named by ``spec``: ``jpeg[:QUALITY]``, ``bitdepth[:BITS]``,
    ``median[:K]``, ``resize-pad[:MIN_SCALE]`` or another :data:`DEFENCES` entry."""
    name, _, arg = spec.partition(":")
    if name not in DEFENCES.names():
        raise TrustVisionError(f"--defense {spec!r}: choose from {', '.join(DEFENCES)} (e.g. jpeg:75)")
    cls = DEFENCES.get(name)
    if not arg:
        return DefendedClassifier(classifier, cls())
    try:
        value = cls.arg_type(arg)
    except ValueError:
        raise TrustVisionError(f"--defense {spec!r}: {arg!r} is not a number") from None
    return DefendedClassifier(classifier, cls(value))
