"""Map operations shared by the inspection methods: Gaussian smoothing, SSIM maps, image scores.

All batched on the input's device and differentiable (attacks on the detector need gradients).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError


def gaussian_kernel1d(sigma: float, device=None, truncate: float = 4.0) -> Tensor:
    """A normalised 1-D Gaussian (2*ceil(truncate*sigma)+1 taps), float32."""
    r = max(1, int(math.ceil(truncate * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of ``maps`` (N, H, W) or (N, C, H, W); reflect padding; sigma 0 = no-op."""
    if sigma <= 0:
        return maps
    squeeze = maps.dim() == 3
    x = maps[:, None] if squeeze else maps
    c, (h, w) = x.shape[1], x.shape[-2:]
    k = gaussian_kernel1d(sigma, x.device).to(x.dtype)
    r = min(k.numel() // 2, h - 1, w - 1)                  # reflect padding must stay inside the image
    k = k[k.numel() // 2 - r: k.numel() // 2 + r + 1]
    k = k / k.sum()
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x[:, 0] if squeeze else x


def ssim_map(x: Tensor, y: Tensor, *, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM (Wang et al. 2004) of (N, C, H, W) images, averaged over channels -> (N, H, W).

    Gaussian window (sigma 1.5), constants K1 = 0.01, K2 = 0.03, as in the SSIM paper.
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
    sxx = gaussian_blur(x * x, sigma) - mu_x ** 2
    syy = gaussian_blur(y * y, sigma) - mu_y ** 2
    sxy = gaussian_blur(x * y, sigma) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.mean(1)


def reduce_map(maps: Tensor, how: str = "max", topk: float = 0.01) -> Tensor:
    """Image scores (N,) from maps (N, H, W): ``max``, or ``topk`` = mean of the top ``topk`` fraction."""
    flat = maps.flatten(1)
    if how == "max":
        return flat.amax(1)
    if how == "topk":
        k = max(1, int(round(topk * flat.shape[1])))
        return flat.topk(k, dim=1).values.mean(1)
    raise TrustVisionError(f"score: unknown reduction {how!r}; use max or topk")
