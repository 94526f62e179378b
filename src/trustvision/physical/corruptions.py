"""Common corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", ICLR 2019 — ImageNet-C) at five severities, batched in torch on the device.

The families that make sense for small images, with the severity parameters of the authors' code (as
packaged in ``imagecorruptions`` 1.1.2, Michaelis et al. 2019; the weather families — snow, frost, fog,
spatter — and glass blur, a per-pixel Python loop, are left out):

=================  ================================================  =================================
name               parameter per severity 1..5                       in torch
=================  ================================================  =================================
gaussian_noise     std .08 .12 .18 .26 .38                           ``x + N(0, c)``
shot_noise         photons 60 25 12 5 3                              ``Poisson(x·c)/c``
impulse_noise      amount .03 .06 .09 .17 .27                        salt & pepper, half each
defocus_blur       disk radius 3 4 6 8 10 (alias blur .1 .5 ...)     anti-aliased disk kernel, grouped conv
motion_blur        radius 10 15 15 15 20, sigma 3 5 8 12 15          Gaussian-weighted trail, angle ±45°
zoom_blur          zooms 1..1.10/.01 ... 1..1.30/.03                 mean of centre zooms (affine grid)
brightness         +.1 .2 .3 .4 .5 on HSV value                      ``rgb · V'/V`` (exact HSV)
contrast           factor .4 .3 .2 .1 .05 about the channel mean     elementwise
elastic_transform  alpha 12.5 16.25 21.25 25 30, sigma 1% of side    smoothed random field, grid_sample
pixelate           factor .6 .5 .4 .3 .25                            box down, nearest up
jpeg_compression   quality 25 18 15 10 7                             :func:`~.jpeg.jpeg_torch` (exact rounding)
=================  ================================================  =================================

**Small images.**  The blur radii and sigmas are in pixels of 224-pixel ImageNet images: a radius-10 disk
would erase a 28-pixel digit.  With ``scale=None`` (the default) the *pixel-sized* parameters — defocus radius,
motion radius and sigma — are multiplied by ``min(1, min(H, W) / 224)`` (so a 28×28 image sees the blur a
224-pixel image sees after downscaling by 8); every other parameter is dimensionless (a std, a factor,
a quality, a zoom, or already relative to the side like elastic's sigma) and kept.  ``scale=1`` gives the
paper's numbers at any size.  Differences from the package (tests/test_physical.py measures them):
pixelate's box filter is ``adaptive_avg_pool2d`` (integer-bin areas, Pillow weighs fractional pixels),
zoom blur samples the zoomed centre with a bilinear affine grid instead of ``scipy.ndimage.zoom``'s
corner-aligned crop, elastic smooths with a ±3-sigma separable kernel and reflects at the border like
``map_coordinates``, JPEG is our torch codec (about one grey level from libjpeg).

Shapes: images (N, C, H, W) in [0, 1] with C in {1, 3}; every image draws its own randomness from ``generator``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from ..registry import Registry
from .jpeg import jpeg_torch
from .transforms import affine

CorruptionFn = Callable[[Tensor, int, "torch.Generator | None", float], Tensor]
CORRUPTIONS: Registry[CorruptionFn] = Registry("corruption")
"""Corruption functions ``f(x, severity, generator, pixel_scale) -> x`` by name (the ImageNet-C names)."""

SEVERITIES = (1, 2, 3, 4, 5)
REFERENCE_SIDE = 224


def pixel_scale(h: int, w: int) -> float:
    """The factor applied to pixel-sized parameters for an H×W image: ``min(1, min(H, W) / 224)``."""
    return min(1.0, min(h, w) / REFERENCE_SIDE)


def corrupt(x: Tensor, name: str, severity: int, *, generator: torch.Generator | None = None,
            scale: float | None = None) -> Tensor:
    """``x`` (N, C, H, W) in [0, 1] under corruption ``name`` at ``severity`` (1..5); (N, C, H, W) in [0, 1].

    ``scale``: multiplier of pixel-sized parameters (None: :func:`pixel_scale` of the image size; 1: the paper's).
    """
    fn = CORRUPTIONS.get(name)
    if severity not in SEVERITIES:
        raise TrustVisionError(f"corruption severity must be 1..5, got {severity!r}")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise TrustVisionError(f"corruptions take N,C,H,W images with 1 or 3 channels, got {tuple(x.shape)}")
    s = pixel_scale(*x.shape[-2:]) if scale is None else float(scale)
    return fn(x, severity, generator, s).clamp(0, 1)


def _rand(x: Tensor, gen, shape=None) -> Tensor:
    return torch.rand(shape or x.shape, generator=gen, device=x.device, dtype=x.dtype)


@CORRUPTIONS.register("gaussian_noise", help="additive Gaussian noise")
def gaussian_noise(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    c = [.08, .12, .18, .26, .38][severity - 1]
    return x + c * torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


@CORRUPTIONS.register("shot_noise", help="Poisson (photon) noise")
def shot_noise(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    c = [60, 25, 12, 5, 3][severity - 1]
    return torch.poisson(x * c, generator=gen) / c


@CORRUPTIONS.register("impulse_noise", help="salt-and-pepper noise")
def impulse_noise(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    c = [.03, .06, .09, .17, .27][severity - 1]
    hit, salt = _rand(x, gen) < c, _rand(x, gen) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _disk(radius: float, alias_blur: float, device, dtype) -> Tensor:
    """The package's anti-aliased defocus disk: (k, k), sums to 1."""
    half = 8 if radius <= 8 else math.ceil(radius)
    ax = torch.arange(-half, half + 1, device=device, dtype=dtype)
    disk = ((ax[:, None] ** 2 + ax[None, :] ** 2) <= radius ** 2).to(dtype)
    disk = disk / disk.sum()
    ks = 3 if radius <= 8 else 5
    g = torch.exp(-0.5 * (torch.arange(ks, device=device, dtype=dtype) - ks // 2) ** 2 / alias_blur ** 2)
    g = g / g.sum()
    p = F.pad(disk[None, None], (ks // 2,) * 4, mode="reflect")
    return F.conv2d(F.conv2d(p, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))[0, 0]


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate every channel with ``kernel`` (k, k); reflect-101 border like ``cv2.filter2D``; same size."""
    n, c, h, w = x.shape
    r = kernel.shape[-1] // 2
    if r >= min(h, w):                              # reflection needs r < side: replicate instead
        xp = F.pad(x, (r, r, r, r), mode="replicate")
    else:
        xp = F.pad(x, (r, r, r, r), mode="reflect")
    return F.conv2d(xp.reshape(n * c, 1, h + 2 * r, w + 2 * r), kernel[None, None]).view(n, c, h, w)


@CORRUPTIONS.register("defocus_blur", help="out-of-focus blur (a disk)")
def defocus_blur(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    radius, alias = [(3, .1), (4, .5), (6, .5), (8, .5), (10, .5)][severity - 1]
    return _filter(x, _disk(radius * scale, alias, x.device, x.dtype))


@CORRUPTIONS.register("motion_blur", help="camera-shake trail at a random angle")
def motion_blur(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    radius, sigma = max(0, round(radius * scale)), sigma * scale
    width = 2 * radius + 1
    n, c, h, w = x.shape
    k = torch.exp(-torch.arange(width, device=x.device, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    angle = (_rand(x, gen, (n,)) * 90 - 45) * (math.pi / 180)
    i = torch.arange(width, device=x.device, dtype=x.dtype)[:, None]
    dy = -torch.ceil(i * torch.sin(angle) - 0.5).long()                 # (width, N) integer shifts of tap i
    dx = -torch.ceil(i * torch.cos(angle) - 0.5).long()
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    out = torch.zeros_like(x)
    flat = x.reshape(n, c, h * w)
    for t in range(width):                                              # taps, not images: all N at once
        r = (rows[None, :] - dy[t][:, None]).clamp(0, h - 1)            # (N, H): replicate the edge
        q = (cols[None, :] - dx[t][:, None]).clamp(0, w - 1)            # (N, W)
        idx = (r[:, :, None] * w + q[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
        out = out + k[t] * flat.gather(2, idx).view(n, c, h, w)
    return out


@CORRUPTIONS.register("zoom_blur", help="radial blur from zooming during exposure")
def zoom_blur(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    step, top = [(.01, 1.11), (.01, 1.16), (.02, 1.21), (.02, 1.26), (.03, 1.31)][severity - 1]
    zooms = torch.arange(1, top, step).tolist()
    out = x.clone()
    n = len(x)
    for z in zooms:                                                     # zoom factors, not images
        out = out + affine(x, scale=torch.full((n,), z, device=x.device, dtype=x.dtype), padding="border")
    return out / (len(zooms) + 1)


@CORRUPTIONS.register("brightness", help="brighter (HSV value + c)")
def brightness(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    c = [.1, .2, .3, .4, .5][severity - 1]
    if x.shape[1] == 1:
        return x + c
    v = x.amax(1, keepdim=True)                                         # HSV value; hue and saturation kept
    v2 = (v + c).clamp(max=1)
    return torch.where(v > 0, x * v2 / v.clamp_min(1e-12), v2.expand_as(x))


@CORRUPTIONS.register("contrast", help="lower contrast about each channel's mean")
def contrast(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    c = [.4, .3, .2, .1, .05][severity - 1]
    m = x.mean(dim=(2, 3), keepdim=True)
    return (x - m) * c + m


def _smooth(field: Tensor, sigma_h: float, sigma_w: float, truncate: float = 3.0) -> Tensor:
    """Separable Gaussian smoothing of (N, 1, H, W) with per-axis sigmas, half-width ``int(truncate·sigma + 0.5)``."""
    for dim, s in ((2, sigma_h), (3, sigma_w)):
        r = min(int(truncate * s + 0.5), field.shape[dim] - 1)
        if r <= 0 or s <= 0:
            continue
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, device=field.device, dtype=field.dtype) / s) ** 2)
        k = (k / k.sum()).view(1, 1, -1, 1) if dim == 2 else (k / k.sum()).view(1, 1, 1, -1)
        pad = (0, 0, r, r) if dim == 2 else (r, r, 0, 0)
        field = F.conv2d(F.pad(field, pad, mode="reflect"), k)
    return field


@CORRUPTIONS.register("elastic_transform", help="smooth random local warps")
def elastic_transform(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    alpha = 250 * [.05, .065, .085, .1, .12][severity - 1]
    n, c, h, w = x.shape
    most = h * 0.005
    fields = [_smooth((_rand(x, gen, (n, 1, h, w)) * 2 - 1) * most, h * 0.01, w * 0.01) * alpha for _ in range(2)]
    dx, dy = fields
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    gx = (xs + dx[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys + dy[:, 0]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], -1)                                    # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


@CORRUPTIONS.register("pixelate", help="box-downsample then nearest-upsample")
def pixelate(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    c = [.6, .5, .4, .3, .25][severity - 1]
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, int(h * c)), max(1, int(w * c))))
    return F.interpolate(small, size=(h, w), mode="nearest-exact")


@CORRUPTIONS.register("jpeg_compression", help="JPEG at low quality")
def jpeg_compression(x: Tensor, severity: int, gen=None, scale: float = 1.0) -> Tensor:
    q = [25, 18, 15, 10, 7][severity - 1]
    return jpeg_torch(x, torch.full((len(x),), float(q), device=x.device), differentiable=False)
