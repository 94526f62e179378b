"""Inspection metrics: image/pixel AUROC, AUPRO (Bergmann et al., IJCV 2021), image-level F1-max.

* **AUROC**: area under the ROC curve with ties handled like ``sklearn.metrics.roc_auc_score`` (one
  curve point per distinct score, trapezoidal area); image level on ``scores`` (N,), pixel level on all
  pixels of ``maps`` (N, H, W) against ``masks`` (N, H, W).
* **AUPRO**: the per-region overlap curve of the MVTec AD evaluation.  Ground-truth regions are the
  8-connected components of each mask; at a threshold t, PRO(t) is the mean over all regions of the
  fraction of the region's pixels with map >= t, and FPR(t) the fraction of normal pixels (mask 0, in all
  images) with map >= t.  AUPRO is the area under PRO(FPR) for FPR in [0, ``fpr_limit``] (0.3),
  divided by ``fpr_limit``: 1 for a perfect map, about 0.15 for a random one.  Computed in one sort of
  all pixels with cumulative sums (no per-threshold loop).
* **F1-max**: the best F1 over all image-score thresholds.
* **Regions**: with a two-stage detector's ``extras`` (candidate and kept region label maps), the
  false-positive candidate regions (no overlap with a defect) before/after re-judgment, and the ground
  -truth defects hit before/after (``true_defects_lost``).

:func:`evaluate` bundles everything, per defect type too (each type's images against the normal ones).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import TrustVisionError
from .base import AnomalyResult

FPR_LIMIT = 0.3
EIGHT = np.ones((3, 3), dtype=int)          # 8-connectivity, as in the MVTec AD evaluation code


def _np(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def roc_curve(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score (descending), starting at (0, 0).

    ``scores`` and ``labels`` of any matching shape (flattened); labels 0/1 (or bool).
    """
    s, y = _np(scores).ravel().astype(np.float64), _np(labels).ravel().astype(bool)
    if y.all() or not y.any():
        raise TrustVisionError("AUROC needs both normal and defective samples")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]      # last index of each group of equal scores
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return (np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]], np.r_[np.inf, s[last]])


def auroc(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> float:
    """Area under the ROC curve (equals ``sklearn.metrics.roc_auc_score``)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tpr, fpr) if hasattr(np, "trapezoid") else np.trapz(tpr, fpr))


def f1_max(scores: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> tuple[float, float]:
    """(best F1, its threshold) over all thresholds ``score >= t`` on image scores (N,) vs labels (N,)."""
    fpr, tpr, thr = roc_curve(scores, labels)
    y = _np(labels).ravel().astype(bool)
    tp, fp = tpr * y.sum(), fpr * (~y).sum()
    f1 = np.where(tp > 0, 2 * tp / np.maximum(tp + fp + y.sum(), 1), 0.0)   # 2TP / (2TP + FP + FN)
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])


def _regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected ground-truth regions: (N, H, W) int64 ids unique across images (0 = none), count."""
    from scipy.ndimage import label
    ids = np.zeros(masks.shape, dtype=np.int64)
    total = 0
    for i, m in enumerate(masks):                 # scipy labels one image at a time
        lab, n = label(m, structure=EIGHT)
        ids[i] = np.where(lab > 0, lab + total, 0)
        total += n
    return ids, total


def pro_curve(maps: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) at every distinct map value (descending thresholds), starting at (0, 0).

    ``maps`` (N, H, W) float, ``masks`` (N, H, W) bool with at least one defect and one normal pixel.
    """
    a, m = _np(maps).astype(np.float64).ravel(), _np(masks).astype(bool)
    ids, n_regions = _regions(m)
    ids = ids.ravel()
    if n_regions == 0 or m.all():
        raise TrustVisionError("AUPRO needs at least one defect region and one normal pixel")
    sizes = np.bincount(ids, minlength=n_regions + 1).astype(np.float64)
    w_fp = (ids == 0) / float((ids == 0).sum())                       # each normal pixel adds 1/#normal to FPR
    w_pro = np.where(ids > 0, 1.0 / (n_regions * sizes[ids].clip(min=1)), 0.0)  # each defect pixel to PRO
    order = np.argsort(-a, kind="stable")
    a = a[order]
    last = np.r_[np.flatnonzero(np.diff(a)), a.size - 1]
    fpr, pro = np.cumsum(w_fp[order])[last], np.cumsum(w_pro[order])[last]
    return np.r_[0.0, fpr], np.r_[0.0, pro]


def aupro(maps: Tensor | np.ndarray, masks: Tensor | np.ndarray, fpr_limit: float = FPR_LIMIT) -> float:
    """Area under PRO(FPR) for FPR in [0, ``fpr_limit``], divided by ``fpr_limit`` (Bergmann et al. 2021).

    ``maps`` (N, H, W), ``masks`` (N, H, W) bool.  The curve is linearly interpolated at ``fpr_limit``.
    """
    if not 0 < fpr_limit <= 1:
        raise TrustVisionError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(maps, masks)
    keep = fpr <= fpr_limit
    x, y = fpr[keep], pro[keep]
    if x[-1] < fpr_limit:
        j = int(np.searchsorted(fpr, fpr_limit))                     # first point beyond the limit
        y_end = pro[j - 1] + (pro[j] - pro[j - 1]) * (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        x, y = np.r_[x, fpr_limit], np.r_[y, y_end]
    area = np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x)
    return float(area / fpr_limit)


def region_counts(candidates: Tensor | np.ndarray, kept: Tensor | np.ndarray,
                  masks: Tensor | np.ndarray) -> dict[str, int]:
    """Candidate regions before/after re-judgment, split into false positives and defects hit.

    ``candidates`` and ``kept``: (N, H, W) int label maps (0 = no region; ids per image), ``kept`` a
    subset of ``candidates``; ``masks`` (N, H, W) bool.  A candidate is a false positive when it does not
    touch a defect pixel; a ground-truth region (8-connected) is *found* when a candidate touches it.
    """
    c, k, m = _np(candidates).astype(np.int64), _np(kept).astype(np.int64), _np(masks).astype(bool)
    n, hw = c.shape[0], c.shape[1] * c.shape[2]
    offs = np.arange(n, dtype=np.int64)[:, None, None] * (hw + 1)      # make ids unique across images
    out: dict[str, int] = {}
    for tag, lab in (("before", c), ("after", k)):
        uid = np.where(lab > 0, lab + offs, 0).ravel()
        regions = np.unique(uid[uid > 0])
        hit = np.unique(uid[(uid > 0) & m.ravel()])
        out[f"regions_{tag}"] = int(regions.size)
        out[f"false_positive_regions_{tag}"] = int(regions.size - hit.size)
    gt, n_gt = _regions(m)
    for tag, lab in (("before", c), ("after", k)):
        found = np.unique(gt[(lab > 0) & (gt > 0)])
        out[f"defects_found_{tag}"] = int(found.size)
    out["defect_regions"] = int(n_gt)
    out["false_positive_regions_removed"] = out["false_positive_regions_before"] - out["false_positive_regions_after"]
    out["true_defects_lost"] = out["defects_found_before"] - out["defects_found_after"]
    return out


def _block(scores: np.ndarray, labels: np.ndarray, maps: Tensor, masks: Tensor | None) -> dict[str, Any]:
    row: dict[str, Any] = {"n": int(labels.size), "n_defective": int(labels.sum())}
    both = 0 < labels.sum() < labels.size
    row["image_auroc"] = auroc(scores, labels) if both else None
    row["f1_max"] = f1_max(scores, labels)[0] if both else None
    has_defect = masks is not None and bool(masks.any()) and not bool(masks.all())
    row["pixel_auroc"] = auroc(maps, masks) if has_defect else None
    row["aupro"] = aupro(maps, masks) if has_defect else None
    return row


def evaluate(result: AnomalyResult, dataset: Any = None, *, labels: Tensor | None = None,
             masks: Tensor | None = None, defect_types: list[str] | None = None) -> dict[str, Any]:
    """All metrics of ``result`` on a labelled test set.

    Args:
        result: maps (M, H, W) and scores (M,) of the test images.
        dataset: an :class:`~trustvision.anomaly.data.AnomalyDataset` (its labels, masks, defect types);
            or give ``labels`` (M,), ``masks`` (M, H, W) bool or None, ``defect_types`` (M,) directly.

    Returns:
        ``image_auroc``, ``f1_max``, ``f1_threshold``, ``pixel_auroc`` and ``aupro`` (None without
        masks), ``per_defect``: one row per defect type (its images with the normal ones), ``regions``
        (counts of :func:`region_counts`, when ``result.extras`` has ``candidate_labels`` and
        ``kept_labels`` and masks exist), ``regions_before``/``regions_after`` totals when given.
    """
    if dataset is not None:
        labels, masks, defect_types = dataset.labels, dataset.masks, dataset.defect_types
    if labels is None:
        raise TrustVisionError("evaluate: give a dataset or labels=")
    y = _np(labels).astype(np.int64)
    s = _np(result.scores).astype(np.float64)
    if y.shape != s.shape:
        raise TrustVisionError(f"evaluate: {s.size} scores for {y.size} labels")
    if masks is not None and tuple(masks.shape) != tuple(result.maps.shape):
        raise TrustVisionError(f"evaluate: maps {tuple(result.maps.shape)} and masks {tuple(masks.shape)} differ")
    maps = result.maps.detach().float().cpu()
    masks_c = masks.cpu().bool() if masks is not None else None
    out = _block(s, y, maps, masks_c)
    out["f1_threshold"] = f1_max(s, y)[1] if out["f1_max"] is not None else None
    types = list(defect_types) if defect_types is not None else ["defective" if v else "good" for v in y]
    good = np.array([t == "good" for t in types])
    rows = []
    for kind in dict.fromkeys(t for t in types if t != "good"):
        sel = good | np.array([t == kind for t in types])
        idx = torch.from_numpy(np.flatnonzero(sel))
        rows.append({"defect": kind, **_block(s[sel], y[sel], maps[idx], masks_c[idx] if masks_c is not None else None)})
    out["per_defect"] = rows
    ex = result.extras
    for key in ("regions_before", "regions_after"):
        if key in ex:
            out[key] = int(torch.as_tensor(ex[key]).sum())
    if masks_c is not None and "candidate_labels" in ex and "kept_labels" in ex:
        out["regions"] = region_counts(ex["candidate_labels"], ex["kept_labels"], masks_c)
    return out
