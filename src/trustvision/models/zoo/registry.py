"""The architecture registry: every zoo factory registers itself where it is defined.

``ARCHITECTURES.get("lenet")(num_classes, channels)`` builds a model; :mod:`trustvision.models.loading`
resolves ``trustvision:NAME`` specs through it.  Factories take ``(num_classes, channels, ...)`` and
return an ``nn.Module`` mapping images (B, channels, H, W) to logits (B, num_classes).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ...registry import Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")
