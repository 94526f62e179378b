"""JPEG compression in torch: a differentiable approximation for gradients, the real codec for judging.

Baseline JPEG (ITU-T T.81, as libjpeg/Pillow code it): RGB -> YCbCr, 4:2:0 chroma subsampling (2×2 mean),
level shift by 128, 8×8 block DCT-II, division by the quality-scaled IJG quantisation tables
(``scale = 5000/q`` below quality 50, ``200 - 2q`` above; entries ``floor((T·scale + 50)/100)`` clamped to
[1, 255]), rounding, and the inverse path (chroma upsampled by the half-pixel triangle filter, i.e.
bilinear — libjpeg's "fancy upsampling").  Grey images (C = 1) code the luma channel only.

Rounding is where gradients die: :func:`jpeg_torch` with ``differentiable=True`` uses the smooth rounding
of Shin & Song, "JPEG-resistant Adversarial Images" (NIPS 2017 MLSec workshop),
``round(x) + (x - round(x))^3`` — the same value as rounding to within 1/8 of a quantisation step, with a
nonzero derivative ``3(x - round(x))^2`` (the identity's direction, damped near integers).
``differentiable=False`` rounds exactly (the torch codec then matches Pillow to about one grey level; see
tests/test_physical.py).  :func:`jpeg_pil` is the real codec (Pillow/libjpeg), for judging.

Shapes: images (N, C, H, W) in [0, 1] with C in {1, 3}; ``quality`` (N,) per image, integers in 1..100.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError

_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
         14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
           47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32
_RGB2YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
_YCC2RGB = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]


def _dct_matrix(device, dtype) -> Tensor:
    """(8, 8) orthonormal DCT-II matrix ``D``: coefficients = D @ block @ D.T."""
    k = torch.arange(8, device=device, dtype=dtype)[:, None]
    n = torch.arange(8, device=device, dtype=dtype)[None, :]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = d[0] / math.sqrt(2)
    return d


def quant_tables(quality: Tensor, chroma: bool = False) -> Tensor:
    """(N,) qualities in 1..100 -> (N, 8, 8) IJG quantisation tables (luma, or chroma if ``chroma``)."""
    q = quality.float().clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q)
    base = torch.tensor(_CHROMA if chroma else _LUMA, device=q.device, dtype=torch.float32).view(1, 8, 8)
    return torch.floor((base * scale.view(-1, 1, 1) + 50) / 100).clamp(1, 255)


def smooth_round(x: Tensor) -> Tensor:
    """Shin & Song (2017) differentiable rounding ``round(x) + (x - round(x))^3`` (elementwise)."""
    r = torch.round(x)
    return r + (x - r) ** 3


def _code_plane(p: Tensor, table: Tensor, rounding) -> Tensor:
    """One plane (N, H, W) in 0..255 (H, W multiples of 8) through DCT, quantisation, rounding and back."""
    n, h, w = p.shape
    d = _dct_matrix(p.device, p.dtype)
    blocks = (p - 128).view(n, h // 8, 8, w // 8, 8).transpose(2, 3)          # (N, bh, bw, 8, 8)
    t = table.to(p.dtype).view(n, 1, 1, 8, 8)
    coef = rounding(d @ blocks @ d.T / t) * t
    out = d.T @ coef @ d + 128
    return out.transpose(2, 3).reshape(n, h, w)


def jpeg_torch(x: Tensor, quality: Tensor, *, differentiable: bool = True) -> Tensor:
    """JPEG round trip of ``x`` (N, C, H, W) in [0, 1] at per-image ``quality`` (N,); returns (N, C, H, W) in [0, 1].

    ``differentiable=True``: Shin & Song smooth rounding (gradients flow); False: exact rounding.
    """
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise TrustVisionError(f"jpeg: images must have 1 or 3 channels, got {c}")
    quality = quality.to(x.device).expand(n) if quality.ndim == 0 else quality.to(x.device)
    rounding = smooth_round if differentiable else torch.round
    mcu = 8 if c == 1 else 16
    ph, pw = (-h) % mcu, (-w) % mcu
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    if c == 1:
        y = _code_plane(xp[:, 0] * 255, quant_tables(quality), rounding)[:, None]
    else:
        ycc = torch.einsum("ij,njhw->nihw", torch.tensor(_RGB2YCC, device=x.device, dtype=x.dtype), xp * 255)
        luma = _code_plane(ycc[:, 0], quant_tables(quality), rounding)
        small = F.avg_pool2d(ycc[:, 1:], 2) + 128                                # (N, 2, H/2, W/2)
        ct = quant_tables(quality, chroma=True)
        cb, cr = (_code_plane(small[:, i], ct, rounding) for i in range(2))
        chroma = F.interpolate(torch.stack([cb, cr], 1), scale_factor=2, mode="bilinear", align_corners=False)
        ycc = torch.cat([luma[:, None], chroma - 128], 1)
        y = torch.einsum("ij,njhw->nihw", torch.tensor(_YCC2RGB, device=x.device, dtype=x.dtype), ycc)
    return (y[:, :, :h, :w] / 255).clamp(0, 1)


def jpeg_pil(x: Tensor, quality: Tensor) -> Tensor:
    """The real codec (Pillow/libjpeg) at per-image ``quality`` (N,); ``x`` (N, C, H, W) in [0, 1], C in {1, 3}.

    Not differentiable (uint8 data, coded one image at a time on the CPU); for judging, never inside an
    attack's iteration loop.  Returns (N, C, H, W) on ``x``'s device.
    """
    from PIL import Image
    n, c = x.shape[:2]
    if c not in (1, 3):
        raise TrustVisionError(f"jpeg: images must have 1 or 3 channels, got {c}")
    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    qs = quality.expand(n) if quality.ndim == 0 else quality
    qs = [int(q) for q in qs.round().clamp(1, 100).cpu().tolist()]
    out = np.empty_like(u8)
    for i, (img, q) in enumerate(zip(u8, qs)):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if c == 1 else img).save(buf, format="JPEG", quality=q)
        out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255
