"""Forward batch sizes chosen by device and model: one rule for every forward-heavy loop.

Randomized smoothing (Cohen et al., ICML 2019: CERTIFY draws 10⁵ noisy copies per image), the
deletion/insertion curves of RISE (Petsiuk et al., BMVC 2018), corruption sweeps and anomaly scoring
all push many images through the same model with nothing to wait for between batches.  How many
images to put in one forward pass depends on where it runs:

* **CPU** — throughput peaks while a batch's activations stay in the core's caches and falls once
  they spill to memory, but models with large weights need large batches to amortise streaming
  the weights through the caches.  Measured on a shared 2-core Xeon, one thread
  (``OMP_NUM_THREADS=1 python bench/floor.py --sweep``, ``bench/results/floor-2026-11-30-cpu.md``):
  the MNIST CNN (0.6 MB of weights) runs fastest at 64 images and loses a quarter at 256 and half
  at 4 096; a CIFAR-size ResNet-18 (45 MB of weights) runs fastest at 256 and at half that rate at 16.  So the rule takes the larger of a cache term — :data:`CPU_INPUT_BUDGET` bytes of input
  pixels per batch — and a weight term — one image per :data:`CPU_WEIGHT_SHARE` bytes of weights —,
  rounded down to a power of two, at most :data:`CPU_MAX_INPUT` bytes of input and within
  ``[CPU_MIN, CPU_MAX]``: 64 MNIST digits (1×28×28) for the small CNN, 256 CIFAR images for
  ResNet-18, 32 ImageNet images (3×224×224) for a ResNet-50.
* **GPU / MPS** — large batches keep the device busy; the budget scales with the device's memory
  (1/1024 of it in input pixels, at least :data:`GPU_INPUT_BUDGET`), held in ``[GPU_MIN, GPU_MAX]``:
  4 096 MNIST digits or CIFAR images, 128 ImageNet images on an 80 GB card.

The "model" part of the rule is the size of its weights (the classifier's ``module`` parameters) and
the input the model really sees: the classifier's ``input_size`` (it resizes inputs to it) when
set, else the ``sample_shape`` given, and its precision (bf16 halves the bytes per pixel).  ``override`` always wins, so users can tune it per call (``--batch-size``).

Shapes: ``sample_shape`` is one image's ``(C, H, W)``; the result is a number of images.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .errors import TrustVisionError

__all__ = ["CPU_INPUT_BUDGET", "CPU_MAX", "CPU_MAX_INPUT", "CPU_WEIGHT_SHARE", "CPU_MIN", "GPU_INPUT_BUDGET", "GPU_MAX", "GPU_MIN", "forward_batch"]

CPU_INPUT_BUDGET = 256 << 10        # cache term: bytes of input pixels per CPU batch
CPU_WEIGHT_SHARE = 128 << 10        # weight term: one image per this many bytes of weights
CPU_MAX_INPUT = 32 << 20            # never more than this many bytes of input per CPU batch
CPU_MIN, CPU_MAX = 8, 512
GPU_INPUT_BUDGET = 64 << 20         # bytes of input pixels per GPU batch (at least 64 MiB)
GPU_MIN, GPU_MAX = 64, 4096


def _pow2_floor(n: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(n, 1.0)))))


def _gpu_budget(device: torch.device) -> int:
    """Input bytes per batch on an accelerator: 1/1024 of its memory, at least :data:`GPU_INPUT_BUDGET`."""
    if device.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(device).total_memory
        return max(GPU_INPUT_BUDGET, total // 1024)
    return GPU_INPUT_BUDGET


def _weight_bytes(classifier: Any) -> int:
    """Bytes of the classifier's parameters: its ``module``'s, or its own when it is an ``nn.Module`` (else 0)."""
    module = classifier if isinstance(classifier, torch.nn.Module) else getattr(classifier, "module", None)
    try:
        return sum(p.numel() * p.element_size() for p in module.parameters()) if module is not None else 0
    except (AttributeError, TypeError, RuntimeError):
        return 0


def _sample_bytes(classifier: Any, sample_shape: Sequence[int]) -> int:
    """Bytes of one image as the model sees it: (C, input_size or H, W) at the classifier's precision."""
    shape = tuple(int(s) for s in sample_shape)
    if len(shape) < 1 or any(s < 1 for s in shape):
        raise TrustVisionError(f"forward_batch: sample_shape must be positive sizes like (C, H, W), got {shape}")
    size = getattr(classifier, "input_size", None)
    if size is not None and len(shape) == 3:
        shape = (shape[0], *size)
    per_pixel = 2 if getattr(classifier, "precision", "fp32") == "bf16" else 4
    return per_pixel * math.prod(shape)


def forward_batch(classifier: Any, device: str | torch.device | None = None, *, sample_shape: Sequence[int],
                  override: int | None = None) -> int:
    """Images per forward pass for ``classifier`` on ``device`` (see the module docstring for the rule).

    Args:
        classifier: the model (a :class:`~trustvision.models.classifier.Classifier`; its ``input_size``
            and ``precision`` are read when present), or a bare ``nn.Module`` such as an anomaly detector's
            network (its own parameters are the weights).
        device: where the forward passes run (default: the classifier's ``device``, else the CPU).
        sample_shape: one input's shape ``(C, H, W)``.
        override: a user's choice (``--batch-size``); returned as is when given (an integer >= 1).
    Returns: an integer >= 1 — the override, or a power of two in ``[CPU_MIN, CPU_MAX]`` on a CPU and
    ``[GPU_MIN, GPU_MAX]`` on an accelerator.
    """
    if override is not None:
        if isinstance(override, bool) or not isinstance(override, int) or override < 1:
            raise TrustVisionError(f"batch size must be an integer >= 1, got {override!r}")
        return override
    dev = torch.device(device if device is not None else getattr(classifier, "device", "cpu"))
    per_image = _sample_bytes(classifier, sample_shape)
    if dev.type == "cpu":
        want = max(CPU_INPUT_BUDGET / per_image, _weight_bytes(classifier) / CPU_WEIGHT_SHARE)
        return min(CPU_MAX, max(CPU_MIN, _pow2_floor(min(want, CPU_MAX_INPUT / per_image))))
    return min(GPU_MAX, max(GPU_MIN, _pow2_floor(_gpu_budget(dev) / per_image)))
