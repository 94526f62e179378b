"""``trustvision attack NAME``: one attack on a sample, saved as ``.npz`` + PNG grid + JSON summary."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..attacks import ATTACKS, make_attack
from ..data.dataset import Dataset
from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..results import clean_json


def run_single_attack(name: str, options: dict, clf: Classifier, data: Dataset, out: Path, *,
                      target: int | None = None, batch_size: int = 128, console=None) -> dict:
    """Attack every image of ``data`` (N, C, H, W) and write ``OUT/NAME.npz``, ``OUT/NAME.png``, ``OUT/NAME.json``.

    The ``.npz`` holds ``x``, ``x_adv``, ``y``, ``pred_clean``, ``pred_adv``, ``success`` and ``norms``.
    Returns the summary dictionary (success rate, clean/robust accuracy, mean norm, queries).
    """
    from ..evaluation.sections.robustness import run_batched
    from ..report import figures
    if name not in ATTACKS:
        raise TrustVisionError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    accepted = getattr(ATTACKS[name], "__dataclass_fields__", {})
    opts = {k: v for k, v in options.items() if k in accepted or k != "seed"}
    attack = make_attack(name, **opts)
    if target is not None and not 0 <= target < clf.num_classes:
        raise TrustVisionError(f"--target {target}: must lie in [0, {clf.num_classes - 1}]")
    out.mkdir(parents=True, exist_ok=True)
    y_attack = data.y if target is None else torch.full_like(data.y, target)
    if target is None:
        res = run_batched(attack, clf, data.x, data.y, batch_size)
    else:   # targeted: run batch by batch with the target argument
        parts = [attack(clf, data.x[i:i + batch_size].to(clf.device), data.y[i:i + batch_size].to(clf.device),
                        target=y_attack[i:i + batch_size].to(clf.device)) for i in range(0, len(data), batch_size)]
        res = type(parts[0])(*(torch.cat([getattr(p, k).detach().cpu() for p in parts])
                               for k in ("x_adv", "success", "norms", "queries", "gradients")))
    with torch.inference_mode():
        p_clean = clf.predict(data.x).softmax(1).cpu()
        p_adv = clf.predict(res.x_adv).softmax(1).cpu()
    pred_clean, pred_adv = p_clean.argmax(1), p_adv.argmax(1)
    np.savez_compressed(out / f"{name}.npz", x=data.x.numpy(), x_adv=res.x_adv.numpy(), y=data.y.numpy(),
                        pred_clean=pred_clean.numpy(), pred_adv=pred_adv.numpy(), success=res.success.numpy(),
                        norms=res.norms.numpy())
    figures.example_grid(data.x, res.x_adv, data.y, pred_clean, pred_adv, p_clean.amax(1), p_adv.amax(1),
                         clf.labels, out / f"{name}.png")
    correct = pred_clean == data.y
    summary = {"attack": attack.config(), "target": target, "n": len(data),
               "clean_accuracy": float(correct.float().mean()),
               "robust_accuracy": float((correct & (pred_adv == data.y)).float().mean()),
               "success_rate": float(res.success.float().mean()),
               "mean_norm_successful": float(res.norms[res.success].mean()) if bool(res.success.any()) else None,
               "queries_per_image": float(res.queries.float().mean()),
               "files": [f"{name}.npz", f"{name}.png", f"{name}.json"]}
    (out / f"{name}.json").write_text(json.dumps(clean_json(summary), indent=2))
    return summary
