"""Fooling rates of a universal perturbation against random controls of identical norm, and transfer.

Metrics (Moosavi-Dezfooli et al., CVPR 2017; Hirano & Takemoto, Algorithms 2020):

* untargeted **fooling rate**: share of evaluation images whose prediction on ``clip(x + v, 0, 1)``
  differs from the clean prediction (labels are not needed);
* **targeted success rate**: share of evaluation images predicted as the target (also reported
  over the images whose clean prediction is not the target);
* per-class breakdown (by true label when given, else by clean prediction);
* the same for two **random controls of identical norm**: ``v`` with its pixel positions permuted
  (all channels of a location move together, so the L2 and L∞ norms are exactly those of ``v``), and a
  uniform random direction in ``[-1, 1]^D`` rescaled to ``||v||`` in the UAP's norm;
* a **transfer matrix**: the UAP built on model A evaluated on model B.

Shapes: images ``x`` (N, C, H, W) in [0, 1] (any device; moved in batches), ``v`` (1, C, H, W).
Everything runs batched in ``torch.inference_mode``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..attacks.base import perturbation_norms
from ..attacks.universal import project_v
from ..errors import TrustVisionError
from ..models.classifier import Classifier

CONTROLS = ("permuted", "random")


def _predict(clf: Classifier, x: Tensor, v: Tensor | None, batch_size: int) -> Tensor:
    """(N,) predictions on ``clip(x + v, 0, 1)`` (or ``x`` when ``v`` is None), on the CPU."""
    out = []
    with torch.inference_mode():
        vd = None if v is None else v.to(clf.device)
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(clf.device)
            out.append(clf(xb if vd is None else (xb + vd).clamp(0, 1)).argmax(1))
    return torch.cat(out).cpu() if out else torch.zeros(0, dtype=torch.long)


def random_controls(v: Tensor, norm: str, seed: int = 0) -> dict[str, Tensor]:
    """Two controls (1, C, H, W) with ``||control|| == ||v||`` in ``norm``: pixel-permuted and uniform random."""
    g = torch.Generator().manual_seed(seed)
    vc = v.detach().float().cpu()
    _, c, h, w = vc.shape
    perm = torch.randperm(h * w, generator=g)
    permuted = vc.flatten(2)[:, :, perm].view_as(vc)
    u = torch.rand(vc.shape, generator=g) * 2 - 1
    target = perturbation_norms(vc, norm)[0]
    rand = u * (target / perturbation_norms(u, norm)[0].clamp_min(1e-12))
    return {"permuted": permuted, "random": project_v(rand, float(target), norm)}


def _rates(pred_clean: Tensor, pred: Tensor, groups: Tensor, k: int, target: int | None) -> dict:
    changed = pred != pred_clean
    per_class = {}
    for c in range(k):
        m = groups == c
        if bool(m.any()):
            per_class[str(c)] = float(changed[m].float().mean())
    d = {"fooling_rate": float(changed.float().mean()), "per_class_fooling_rate": per_class}
    if target is not None:
        hit = pred == target
        keep = pred_clean != target
        d["targeted_success"] = float(hit.float().mean())
        d["targeted_success_excluding_target_class"] = float(hit[keep].float().mean()) if bool(keep.any()) else None
        d["per_class_targeted_success"] = {str(c): float(hit[groups == c].float().mean())
                                           for c in range(k) if bool((groups == c).any())}
    return d


def fooling_rates(clf: Classifier, x: Tensor, v: Tensor, *, norm: str, y: Tensor | None = None,
                  target: int | None = None, seed: int = 0, batch_size: int = 256,
                  pred_clean: Tensor | None = None) -> dict:
    """Fooling rate / targeted success of ``v`` and of its two random controls on images ``x``.

    Args:
        x: (N, C, H, W) evaluation images.  v: (1, C, H, W).  norm: the UAP's norm (for the controls).
        y: (N,) true labels for the per-class breakdown (None: by clean prediction).
        target: target class of a targeted UAP.  pred_clean: (N,) clean predictions if already known.
    Returns: ``{"uap": {...}, "permuted": {...}, "random": {...}, "n": N, "v_norm": ||v||}`` where each entry has
    ``fooling_rate``, ``per_class_fooling_rate`` (+ ``targeted_success``... when targeted).
    """
    if v.ndim != 4 or v.shape[0] != 1 or tuple(v.shape[1:]) != tuple(x.shape[1:]):
        raise TrustVisionError(f"uap shape {tuple(v.shape)} does not fit images of shape {tuple(x.shape[1:])}")
    pc = pred_clean.cpu() if pred_clean is not None else _predict(clf, x, None, batch_size)
    groups = y.cpu() if y is not None else pc
    out = {"n": len(x), "norm": norm, "v_norm": float(perturbation_norms(v.detach().cpu(), norm)[0])}
    out["uap"] = _rates(pc, _predict(clf, x, v, batch_size), groups, clf.num_classes, target)
    for name, ctrl in random_controls(v, norm, seed).items():
        out[name] = _rates(pc, _predict(clf, x, ctrl, batch_size), groups, clf.num_classes, target)
    return out


def rescale(v: Tensor, eps: float, norm: str) -> Tensor:
    """``v`` (1, C, H, W) rescaled so that ``||v|| == eps`` in ``norm`` (within fp32 rounding, never above)."""
    n = float(perturbation_norms(v.detach().cpu(), norm)[0])
    return project_v(v * (eps / max(n, 1e-12)), eps, norm)


def zeta_sweep(clf: Classifier, x: Tensor, v: Tensor, *, norm: str, zetas: list[float], reference_norm: float,
               target: int | None = None, seed: int = 0, batch_size: int = 256) -> dict:
    """Fooling rate (targeted: success) against ζ for ``v`` rescaled to each ζ and for its controls.

    Returns ``{"zeta": [...], "uap": [...], "permuted": [...], "random": [...]}`` (rates in [0, 1]).
    """
    key = "fooling_rate" if target is None else "targeted_success"
    pc = _predict(clf, x, None, batch_size)
    res: dict[str, list] = {"zeta": list(zetas), "uap": [], "permuted": [], "random": []}
    for z in zetas:
        r = fooling_rates(clf, x, rescale(v, z * reference_norm, norm), norm=norm, target=target, seed=seed,
                          batch_size=batch_size, pred_clean=pc)
        for name in ("uap", *CONTROLS):
            res[name].append(r[name][key])
    return res


def transfer_matrix(uaps: dict[str, Tensor], models: dict[str, Classifier], x: Tensor, *,
                    target: int | None = None, batch_size: int = 256) -> dict:
    """Fooling rate (targeted: success) of the UAP made on each source model, on each evaluated model.

    Args:
        uaps: source model name -> v (1, C, H, W).  models: evaluated model name -> Classifier.
        x: (N, C, H, W) evaluation images.
    Returns ``{"sources": [...], "targets": [...], "matrix": [[rate of uaps[s] on models[t]] ...]}``.
    """
    key = "fooling_rate" if target is None else "targeted_success"
    matrix = []
    for s, v in uaps.items():
        row = []
        for clf in models.values():
            pc = _predict(clf, x, None, batch_size)
            row.append(_rates(pc, _predict(clf, x, v, batch_size), pc, clf.num_classes, target)[key])
        matrix.append(row)
    return {"sources": list(uaps), "targets": list(models), "metric": key, "matrix": matrix}
