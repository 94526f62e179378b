"""The physical world: transforms a camera applies (EOT) and the common corruptions of Hendrycks & Dietterich.

* :mod:`.transforms` — :class:`TransformDistribution`, per-image differentiable transforms (rotation, scale,
  translation, brightness, contrast, blur, noise, JPEG) for Expectation over Transformation (Athalye et al. 2018)
  and adversarial patches;
* :mod:`.jpeg` — JPEG in torch (differentiable, Shin & Song 2017) and the real codec (Pillow);
* :mod:`.corruptions` — the ImageNet-C corruption families (Hendrycks & Dietterich, ICLR 2019) at five
  severities, batched in torch.
"""
from __future__ import annotations

from .transforms import ITEMS, TransformDistribution, affine, gaussian_blur

__all__ = ["ITEMS", "TransformDistribution", "affine", "gaussian_blur"]
