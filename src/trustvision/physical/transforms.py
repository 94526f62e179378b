"""A distribution of differentiable, batched image transforms — the "T" of Expectation over Transformation.

Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018 (EOT): an
adversarial example that must survive a camera is optimised over a distribution of transformations
(rotation, scale, translation, lighting, blur, sensor noise, compression).  :class:`TransformDistribution`
is that distribution: every image of a batch gets its own parameters (:meth:`~TransformDistribution.sample`)
and the whole batch is transformed at once on its device (:meth:`~TransformDistribution.apply`).

Spec (``--eot``), comma-separated ``name:VALUE`` or ``name:LOW-HIGH`` items, each at most once::

    rotate:15        angle uniform in [-15, 15] degrees          (LOW-HIGH: [LOW, HIGH], within ±180)
    scale:0.9-1.1    zoom factor uniform in [0.9, 1.1]           (one value v < 1: [1 - v, 1 + v])
    translate:0.1    shift uniform in [-0.1, 0.1] of the side, each axis independently (≤ 1)
    brightness:0.2   additive offset uniform in [-0.2, 0.2]      (≤ 1)
    contrast:0.2     factor uniform in [0.8, 1.2] about each image's mean grey   (LOW-HIGH: factors)
    blur:1.5         Gaussian blur, sigma uniform in [0, 1.5] pixels (≤ 10)
    noise:0.03       additive Gaussian noise, std uniform in [0, 0.03] (≤ 1)
    jpeg:60-90       JPEG at an integer quality uniform in [60, 90] (one value: that quality; 1..100)

The order of application is fixed, whatever the order in the spec, and follows the physical chain
print -> pose -> light -> optics -> sensor -> encoder: one affine warp (rotation, scale, translation:
``F.affine_grid`` + bilinear ``F.grid_sample``, aspect-correct, ``padding`` outside the image), contrast,
brightness, blur (separable per-image Gaussian kernels, one grouped convolution per axis), noise,
clamp to [0, 1], JPEG (:mod:`.jpeg`).

Why our own ``affine_grid`` code and not kornia: the eight transforms above are each a few lines of
torch once per-image parameters are tensors, the whole chain runs in one pass without a dependency
(kornia's augmentation containers also re-sample parameters on every call and would need their
``params`` plumbing to replay a draw), and JPEG is not in kornia's stable differentiable set with a
real-codec twin — so the dependency would buy little and add a second parameter convention.

Shapes: images (N, C, H, W) in [0, 1]; parameters (N,) per image (``translate``: (N, 2)).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from ..parsing import parse_number
from .jpeg import jpeg_pil, jpeg_torch


@dataclass(frozen=True)
class _Item:
    symmetric: bool        # one value v -> [-v, v] (or [1 - v, 1 + v] for factors)
    factor: bool           # centred on 1 (scale, contrast)
    low: float             # smallest allowed bound
    high: float            # largest allowed bound
    unit: str


ITEMS: dict[str, _Item] = {
    "rotate": _Item(True, False, -180, 180, "degrees"),
    "scale": _Item(True, True, 1e-3, 10, "zoom factor"),
    "translate": _Item(True, False, -1, 1, "fraction of the side"),
    "brightness": _Item(True, False, -1, 1, "offset"),
    "contrast": _Item(True, True, 0, 10, "factor"),
    "blur": _Item(False, False, 0, 10, "sigma in pixels"),
    "noise": _Item(False, False, 0, 1, "std"),
    "jpeg": _Item(False, False, 1, 100, "quality"),
}
"""The transform names a spec may use, with the range rules of the module docstring."""

_EXAMPLES = {"rotate": "15", "scale": "0.9-1.1", "translate": "0.1", "brightness": "0.2", "contrast": "0.2",
             "blur": "1.5", "noise": "0.03", "jpeg": "60-90"}
_NUM = r"[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+(?:\.\d*)?)?"
_VALUE = re.compile(rf"^\s*(-?{_NUM})\s*(?:-\s*(-?{_NUM})\s*)?$")


def _parse_item(item: str, what: str) -> tuple[str, tuple[float, float]]:
    name, sep, value = (s.strip() for s in item.partition(":"))
    if name not in ITEMS:
        raise TrustVisionError(f"{what}: unknown transform {name!r} in {item!r}; choose from {', '.join(ITEMS)}")
    rule = ITEMS[name]
    m = _VALUE.match(value) if sep else None
    if m is None:
        raise TrustVisionError(f"{what}: {item!r} needs a value, NAME:VALUE or NAME:LOW-HIGH (e.g. {name}:"
                               f"{_EXAMPLES[name]})")
    a = parse_number(m.group(1))
    if m.group(2) is not None:
        lo, hi = a, parse_number(m.group(2))
    elif rule.factor:
        if not 0 <= a < 1:
            raise TrustVisionError(f"{what}: {item!r}: one value is a relative change ±v and must be in [0, 1); "
                                   f"give a range like {name}:0.9-1.1")
        lo, hi = 1 - a, 1 + a
    elif rule.symmetric:
        lo, hi = -abs(a), abs(a)
    elif name == "jpeg":
        lo = hi = a
    else:
        lo, hi = 0.0, a
    if not (math.isfinite(lo) and math.isfinite(hi)) or min(lo, hi) < rule.low or max(lo, hi) > rule.high:
        raise TrustVisionError(f"{what}: {item!r} is out of range: {name} ({rule.unit}) must lie in "
                               f"[{rule.low:g}, {rule.high:g}]")
    if lo > hi:
        raise TrustVisionError(f"{what}: {item!r}: LOW must not exceed HIGH")
    return name, (float(lo), float(hi))


class TransformDistribution:
    """Per-image random transforms, differentiable and batched (see the module docstring for the spec).

    Args:
        ranges: transform name -> (low, high) (the parsed spec); absent names are not applied.
        padding: ``grid_sample`` padding outside the warped image: ``"zeros"`` (a dark border; right for
            MNIST-like images on black), ``"border"`` or ``"reflection"``.

    Example::

        t = TransformDistribution.parse("rotate:15,brightness:0.2,jpeg:60-90")
        g = torch.Generator().manual_seed(0)
        x_t = t(x, g)                                    # (N, C, H, W), one draw per image
        p = t.sample(len(x), g); x_real = t.apply(x, p, differentiable=False)   # real JPEG codec
    """

    def __init__(self, ranges: dict[str, tuple[float, float]], *, padding: str = "zeros") -> None:
        unknown = [k for k in ranges if k not in ITEMS]
        if unknown:
            raise TrustVisionError(f"unknown transform {unknown[0]!r}; choose from {', '.join(ITEMS)}")
        if padding not in ("zeros", "border", "reflection"):
            raise TrustVisionError(f"padding must be zeros, border or reflection, got {padding!r}")
        self.ranges = {k: (float(v[0]), float(v[1])) for k, v in ranges.items()}
        self.padding = padding

    @classmethod
    def parse(cls, spec: str, *, what: str = "--eot", padding: str = "zeros") -> "TransformDistribution":
        """The distribution of a spec like ``"rotate:15,scale:0.9-1.1,jpeg:60-90"``.

        Raises a one-line :class:`TrustVisionError` naming ``what`` (the option) and the bad item.
        """
        items = [s.strip() for s in str(spec).split(",") if s.strip()]
        if not items:
            raise TrustVisionError(f"{what}: empty transform spec; e.g. rotate:15,scale:0.9-1.1,brightness:0.2")
        ranges: dict[str, tuple[float, float]] = {}
        for item in items:
            name, rng = _parse_item(item, what)
            if name in ranges:
                raise TrustVisionError(f"{what}: {name!r} is given twice")
            ranges[name] = rng
        return cls(ranges, padding=padding)

    def describe(self) -> str:
        """The canonical spec string (round-trips through :meth:`parse`)."""
        return ",".join(f"{k}:{lo:g}-{hi:g}" for k, (lo, hi) in self.ranges.items())

    __str__ = describe

    def __repr__(self) -> str:
        return f"TransformDistribution({self.describe()!r})"

    # ---------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> dict[str, Tensor]:
        """Parameters for ``n`` images, each (n,) uniform in its range (``translate``: (n, 2); ``jpeg``: integers)."""
        device = torch.device(device) if device is not None else (generator.device if generator is not None
                                                                   else torch.device("cpu"))
        out = {}
        for name, (lo, hi) in self.ranges.items():
            shape = (n, 2) if name == "translate" else (n,)
            if name == "jpeg":
                out[name] = torch.randint(int(lo), int(hi) + 1, shape, generator=generator, device=device).float()
            else:
                out[name] = lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)
        return out

    # ------------------------------------------------------------------ apply
    def apply(self, x: Tensor, params: dict[str, Tensor], *, differentiable: bool = True,
              generator: torch.Generator | None = None) -> Tensor:
        """Transform ``x`` (N, C, H, W) in [0, 1] with per-image ``params`` (from :meth:`sample`) -> (N, C, H, W).

        ``differentiable``: JPEG through the smooth-rounding torch codec (gradients flow); False: the real
        codec (Pillow), for judging.  ``generator`` draws the sensor noise (the only randomness left).
        """
        if x.ndim != 4:
            raise TrustVisionError(f"transforms take N,C,H,W images, got shape {tuple(x.shape)}")
        p = {k: v.to(x.device, x.dtype) for k, v in params.items()}
        if {"rotate", "scale", "translate"} & p.keys():
            x = affine(x, p.get("rotate"), p.get("scale"), p.get("translate"), padding=self.padding)
        if "contrast" in p:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * p["contrast"].view(-1, 1, 1, 1) + mean
        if "brightness" in p:
            x = x + p["brightness"].view(-1, 1, 1, 1)
        if "blur" in p:
            x = gaussian_blur(x, p["blur"], radius=math.ceil(3 * self.ranges.get("blur", (0, 0))[1]))
        if "noise" in p:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + noise * p["noise"].view(-1, 1, 1, 1)
        x = x.clamp(0, 1)
        if "jpeg" in p:
            x = jpeg_torch(x, p["jpeg"], differentiable=True) if differentiable else jpeg_pil(x, p["jpeg"])
        return x

    def __call__(self, x: Tensor, generator: torch.Generator | None = None, *, differentiable: bool = True) -> Tensor:
        """One fresh draw per image: :meth:`sample` then :meth:`apply`."""
        return self.apply(x, self.sample(len(x), generator, x.device), differentiable=differentiable,
                          generator=generator)


def affine(x: Tensor, angle: Tensor | None = None, scale: Tensor | None = None, translate: Tensor | None = None,
           *, padding: str = "zeros") -> Tensor:
    """Rotate by ``angle`` (N,) degrees, zoom by ``scale`` (N,) and shift by ``translate`` (N, 2) (fractions of
    the width, height) each image of ``x`` (N, C, H, W) about its centre; bilinear, differentiable in ``x``
    and the parameters.  Rotation is aspect-correct (a square stays square on a non-square image)."""
    n, _, h, w = x.shape
    a = torch.zeros(n, device=x.device, dtype=x.dtype) if angle is None else angle * (math.pi / 180)
    s = torch.ones(n, device=x.device, dtype=x.dtype) if scale is None else scale
    t = torch.zeros(n, 2, device=x.device, dtype=x.dtype) if translate is None else translate
    cos, sin = torch.cos(a) / s, torch.sin(a) / s          # inverse map: output -> input, R(-a) / s
    r = h / w                                              # normalised coords: x in units of W/2, y of H/2
    theta = torch.stack([torch.stack([cos, sin * r, torch.zeros_like(a)], 1),
                         torch.stack([-sin / r, cos, torch.zeros_like(a)], 1)], 1)      # (N, 2, 3)
    shift = 2 * t                                          # output = forward(input) + shift
    theta[:, :, 2] = -(theta[:, :, :2] @ shift[:, :, None])[:, :, 0]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def gaussian_blur(x: Tensor, sigma: Tensor, radius: int | None = None) -> Tensor:
    """Blur each image of ``x`` (N, C, H, W) with its own Gaussian ``sigma`` (N,) pixels; separable, reflect padding.

    ``radius`` (kernel half-width) defaults to ``ceil(3 · max sigma)`` (a host read; pass it inside loops).
    Sigma 0 leaves the image unchanged.
    """
    n, c, h, w = x.shape
    if radius is None:
        radius = math.ceil(3 * float(sigma.max())) if len(sigma) else 0
    radius = min(int(radius), h - 1, w - 1)
    if radius <= 0:
        return x
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype).clamp_min(1e-3).view(n, 1)
    kern = torch.exp(-0.5 * (k[None] / s) ** 2)
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, 0)        # (N·C, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kern.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, kern.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)
