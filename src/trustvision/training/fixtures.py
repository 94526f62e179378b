"""Trained, cached MNIST models for the demo, the tests, the examples and the benchmarks.

Each is :func:`trustvision.models.zoo.small.smallcnn` (10 classes, 1 channel) trained on the bundled MNIST
digits (80/20 seeded split) by the one trainer (:mod:`.trainer`) and cached by :func:`.cache.cached_model`:

* :func:`mnist_demo_model`: standard training, the demo model;
* :func:`noise_trained_mnist`: Gaussian-noise training, the base classifier of randomized smoothing
  (Cohen, Rosenfeld & Kolter, ICML 2019; :mod:`trustvision.defenses.smoothing`);
* :func:`adversarially_trained_mnist`: PGD-AT / fast AT / TRADES (see :mod:`.methods`).

Each returns ``(module, train set, test set, weights path, cached?)``; images are (N, 1, 28, 28) in [0, 1].
The cache keys are those the models have always had, so existing cache entries stay valid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data import bundled
from ..data.dataset import Dataset
from ..models.zoo import small as zoo
from ..progress import Progress
from .cache import cached_model
from .config import TrainConfig
from .trainer import train, train_classifier

Fixture = tuple[nn.Module, Dataset, Dataset, Path, bool]


def _torch_version() -> str:
    return torch.__version__.split("+")[0]


def mnist_demo_model(*, seed: int = 0, epochs: int = 4,
                     progress: Progress | Callable[[int, int], None] | None = None) -> Fixture:
    """The demo model: standard training for ``epochs`` epochs (one-cycle Adam, lr 2e-3, batch 64)."""
    train_set, test_set = bundled.load("mnist").split(0.2, seed=seed)
    key = {"name": "mnist-smallcnn", "seed": seed, "epochs": epochs, "v": 3, "torch": _torch_version()}
    module, path, cached = cached_model(
        key, lambda: zoo.smallcnn(10, 1),
        lambda m: train_classifier(m, train_set, epochs=epochs, seed=seed, progress=progress))
    return module, train_set, test_set, path, cached


def noise_trained_mnist(sigma: float = 0.25, *, seed: int = 0, epochs: int = 4,
                        progress: Progress | Callable[[int, int], None] | None = None) -> Fixture:
    """The demo recipe with Gaussian noise N(0, sigma²) added to every training batch (no clamping)."""
    train_set, test_set = bundled.load("mnist").split(0.2, seed=seed)
    key = {"name": "mnist-smallcnn-noise", "sigma": float(sigma), "seed": seed, "epochs": epochs, "v": 1,
           "torch": _torch_version()}
    module, path, cached = cached_model(
        key, lambda: zoo.smallcnn(10, 1),
        lambda m: train_classifier(m, train_set, epochs=epochs, seed=seed, noise_sigma=sigma, progress=progress))
    return module, train_set, test_set, path, cached


def adversarially_trained_mnist(method: str = "pgd", *, eps: float = 0.2, epochs: int = 3, attack_steps: int = 3,
                                seed: int = 0, progress: Progress | None = None) -> Fixture:
    """``method`` training at L∞ ``eps`` (Adam, cosine schedule, batch 64; eps ramps up over the first epoch)."""
    train_set, test_set = bundled.load("mnist").split(0.2, seed=seed)
    cfg = TrainConfig(method=method, epochs=epochs, batch_size=64, eps=eps, eps_warmup_epochs=1.0,
                      attack_steps=attack_steps, seed=seed)
    key = {"name": f"mnist-smallcnn-{method}", "config": cfg.describe(), "v": 1, "torch": _torch_version()}
    module, path, cached = cached_model(
        key, lambda: zoo.smallcnn(10, 1),
        lambda m: train(m, train_set, None, cfg, progress=progress).module)
    return module, train_set, test_set, path, cached
