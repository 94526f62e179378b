"""The attack half of Raw Zero-Shot: success of each configured attack on an architecture's full model.

Kotyan, Matsuki & Vargas, PLOS ONE 2022 (e0266060) correlate the held-out cluster metrics with the
success of the few-pixel and threshold attacks on the full classifier.  Each attack is built from the
registry (:func:`trustvision.attacks.make_attack`) with the run's seed where it takes one, runs on
images (n, C, H, W) in [0, 1] in batches, and its per-image success (n,) is summarised overall and
per class.  Results are cached in ``OUT/attacks/ARCH-NAME.json`` under a fingerprint
(:func:`~trustvision.persist.digest` of the model key, the options, the images) written atomically,
so a rerun, or another torchrun rank, reuses them.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...data.dataset import Dataset
from ...models.classifier import Classifier
from ...persist import digest, write_json_atomic


def attack_options(name: str, opts: dict[str, Any], seed: int) -> dict[str, Any]:
    """``opts`` plus ``seed`` when the registered attack ``name`` takes one (``opts`` wins)."""
    from ...attacks import ATTACKS
    cls = ATTACKS.get(str(name).lower())
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None and dataclasses.is_dataclass(cls) else set()
    return {**({"seed": seed} if "seed" in fields else {}), **opts}


def make_attacks(attacks: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    """Build every configured attack once (so a bad name or option fails before any training)."""
    from ...attacks import make_attack
    return {name: make_attack(name, **attack_options(name, opts, seed)) for name, opts in attacks.items()}


def attack_success(name: str, opts: dict[str, Any], clf: Classifier, test: Dataset, idx: Tensor, *, seed: int,
                   batch_size: int, resume: bool, out: Path, arch: str, model_key: str) -> dict[str, Any]:
    """Success of attack ``name`` on ``clf`` over the images ``test.x[idx]``: overall and per class (cached).

    Returns ``{"success_rate", "per_class": [rate of class c or None], "n", "options"}``.
    """
    from ...attacks import make_attack
    full_opts = attack_options(name, opts, seed)
    fp = digest(model_key, name, full_opts, idx.tolist(), digest(test.x, test.y))
    path = out / "attacks" / f"{arch}-{name}.json"
    if resume and path.is_file():
        try:
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") == fp:
                return saved["result"]
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            pass
    attack = make_attack(name, **full_opts)
    step = max(batch_size, 1) * 2
    parts = [attack(clf, test.x[j].to(clf.device), test.y[j].to(clf.device)).success
             for j in (idx[i:i + step] for i in range(0, len(idx), step))]
    success = torch.cat(parts).cpu() if parts else torch.zeros(0, dtype=torch.bool)
    y = test.y[idx]
    per_class = [float(success[y == c].float().mean()) if bool((y == c).any()) else None
                 for c in range(test.num_classes)]
    result = {"success_rate": float(success.float().mean()) if len(idx) else None, "per_class": per_class,
              "n": len(idx), "options": full_opts}
    write_json_atomic(path, {"fingerprint": fp, "result": result})
    return result
