"""A small, seeded trainer for the bundled demo/test models, with an on-disk cache.

Trained weights are stored as safetensors under ``~/.cache/trustvision`` (or
``$TRUSTVISION_CACHE``), keyed by a hash of everything that determines them, so
the demo and the test-suite train once per machine.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import Dataset
from ..errors import TrustVisionError


def cache_dir() -> Path:
    d = Path(os.environ.get("TRUSTVISION_CACHE", Path.home() / ".cache" / "trustvision"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def train_classifier(module: nn.Module, data: Dataset, *, epochs: int = 3, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0, device: str = "cpu", progress: Callable[[int, int], None] | None = None,
                     noise_sigma: float = 0.0) -> nn.Module:
    """Train ``module`` in place with Adam + cross-entropy on ``data`` (pixels in [0, 1]); returns it in eval mode.

    ``noise_sigma > 0`` adds Gaussian noise N(0, noise_sigma²) to every training batch (no clamping), the
    base-classifier training of randomized smoothing (Cohen et al. 2019; see :mod:`trustvision.defenses`).
    """
    if not noise_sigma >= 0:
        raise TrustVisionError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    module.to(device).train()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    done = 0
    for _ in range(epochs):
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = data.x[idx].to(device), data.y[idx].to(device)
            if noise_sigma > 0:
                xb = xb + noise_sigma * torch.randn_like(xb)
            loss = F.cross_entropy(module(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if progress:
                progress(done, steps)
    return module.eval()


def cached_model(key: dict, build: Callable[[], nn.Module], train: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, Path, bool]:
    """Build a model and load cached weights for ``key``, or train and cache them.

    Returns (module, weights path, whether it came from the cache).
    """
    from safetensors.torch import load_file, save_file
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{key.get('name', 'model')}-{digest}.safetensors"
    with torch.random.fork_rng():               # seeded initialisation, caller's RNG state untouched
        torch.manual_seed(int(key.get("seed", 0)))
        module = build()
    if path.exists():
        try:
            module.load_state_dict(load_file(str(path)))
            return module.eval(), path, True
        except Exception:            # a corrupt cache entry: retrain
            path.unlink(missing_ok=True)
    module = train(module)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    return module.eval(), path, False


def mnist_demo_model(*, seed: int = 0, epochs: int = 4, progress=None) -> tuple[nn.Module, Dataset, Dataset, Path, bool]:
    """The demo model: :func:`trustvision.models.zoo.small.smallcnn` trained on the bundled MNIST (80/20 seeded split).

    Returns (module, train set, test set, weights path, cached?).
    """
    from ..data import bundled
    from ..models.zoo import small as zoo
    train, test = bundled.load("mnist").split(0.2, seed=seed)
    key = {"name": "mnist-smallcnn", "seed": seed, "epochs": epochs, "v": 3, "torch": torch.__version__.split("+")[0]}
    module, path, cached = cached_model(
        key, lambda: zoo.smallcnn(10, 1),
        lambda m: train_classifier(m, train, epochs=epochs, seed=seed, progress=progress))
    return module, train, test, path, cached
