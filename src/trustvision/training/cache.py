"""An on-disk cache of trained weights, safe when several processes ask for the same model at once.

Weights are stored as safetensors under ``~/.cache/trustvision`` (or ``$TRUSTVISION_CACHE``), keyed by
a hash of everything that determines them, so the demo, the test suite and the examples train once per
machine.  Built on :func:`trustvision.persist.cached_file`: the first process to ask trains under a lock
and writes the file atomically (a unique temporary name, then a rename); the others wait for the lock
and load the winner's file.  Trained-model builders using it are in :mod:`.fixtures`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..persist import cached_file


def cache_dir() -> Path:
    """The cache folder (``$TRUSTVISION_CACHE``, default ``~/.cache/trustvision``), created if missing."""
    d = Path(os.environ.get("TRUSTVISION_CACHE", Path.home() / ".cache" / "trustvision"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_path(key: dict) -> Path:
    """Where the weights for ``key`` live: ``NAME-<16 hex digits>.safetensors``.

    The digest is SHA-256 of the key's sorted JSON, not :func:`trustvision.persist.digest` (which
    length-prefixes its parts): kept so that existing cache entries stay valid.
    """
    key_digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{key.get('name', 'model')}-{key_digest}.safetensors"


def cached_model(key: dict, build: Callable[[], nn.Module],
                 train: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, Path, bool]:
    """Build a model and load cached weights for ``key``, or train and cache them.

    ``build()`` runs under ``torch.manual_seed(key["seed"])`` (default 0) with the caller's RNG state
    restored afterwards; ``train(module)`` trains it in place and returns it.  A corrupt cache entry is
    retrained.  Returns (module in eval mode, weights path, whether it came from the cache).
    """
    from safetensors.torch import load_file, save_file

    def seeded_build() -> nn.Module:
        with torch.random.fork_rng():               # seeded initialisation, caller's RNG state untouched
            torch.manual_seed(int(key.get("seed", 0)))
            return build()

    trained: list[nn.Module] = []

    def write(tmp: Path) -> None:
        module = train(seeded_build())
        trained.append(module)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp))

    def load(path: Path) -> nn.Module:
        if trained:                                 # trained in this process: the module itself
            return trained[0]
        module = seeded_build()
        try:
            module.load_state_dict(load_file(str(path)))
        except Exception as e:                      # not safetensors / wrong tensors: cached_file rebuilds
            raise ValueError(f"{path}: unreadable cache entry ({e})") from None
        return module

    module, cached = cached_file(cache_path(key), write, load)
    return module.eval(), cache_path(key), cached
