"""Segmentation metrics: per-class IoU, mIoU, Dice, pixel accuracy and boundary F1, ignore index honoured.

Everything comes from confusion matrices built with one ``torch.bincount`` per batch (rows = ground truth,
columns = prediction), per image ``(N, K, K)`` and summed for the dataset:

* IoU_c = TP / (TP + FP + FN) (Jaccard); mIoU = mean over the classes present in the ground truth or the
  prediction (a class absent from both has no IoU: NaN, left out of the mean);
* Dice_c = 2 TP / (2 TP + FP + FN); pixel accuracy = trace / total;
* boundary F1 (Csurka, Larlus & Perronnin, BMVC 2013, "What is a good evaluation measure for semantic
  segmentation?"): boundary pixels are those whose label differs from a 4-neighbour's (both sides of an edge,
  like ``skimage.segmentation.find_boundaries(mode="thick")``); a predicted boundary pixel is matched if a
  ground-truth boundary pixel lies within ``tolerance`` pixels (Euclidean), and vice versa; precision and
  recall are pooled over the dataset, F1 = 2PR / (P + R).  Pixels whose ground truth is the ignore index
  are neither boundary pixels nor matches.

Shapes: predictions and targets (N, H, W) int64; per-image results (N,).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None,
                     per_image: bool = False) -> Tensor:
    """Confusion counts, rows = target, columns = prediction: (K, K), or (N, K, K) when ``per_image``.

    Pixels whose target is ``ignore_index`` (or outside 0..K-1) are left out.
    """
    k = num_classes
    valid = (target >= 0) & (target < k)
    if ignore_index is not None:
        valid &= target != ignore_index
    n = pred.shape[0]
    img = torch.arange(n, device=pred.device).view(-1, *([1] * (pred.ndim - 1))).expand_as(pred)
    code = (img * k * k + target.clamp(0, k - 1) * k + pred.clamp(0, k - 1))[valid]
    cm = torch.bincount(code, minlength=n * k * k).view(n, k, k)
    return cm if per_image else cm.sum(0)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, math.nan))


def iou_from_confusion(cm: Tensor) -> Tensor:
    """IoU per class (..., K) from confusion matrices (..., K, K); NaN where a class is in neither map."""
    cm = cm.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    return _ratio(tp, cm.sum(-1) + cm.sum(-2) - tp)


def dice_from_confusion(cm: Tensor) -> Tensor:
    """Dice per class (..., K) from confusion matrices (..., K, K); NaN where a class is in neither map."""
    cm = cm.double()
    tp = cm.diagonal(dim1=-2, dim2=-1)
    return _ratio(2 * tp, cm.sum(-1) + cm.sum(-2))


def pixel_accuracy(cm: Tensor) -> Tensor:
    """Fraction of correctly labelled (non-ignored) pixels (...,) from (..., K, K)."""
    cm = cm.double()
    return cm.diagonal(dim1=-2, dim2=-1).sum(-1) / cm.sum((-2, -1)).clamp_min(1)


def mean_iou(cm: Tensor) -> Tensor:
    """mIoU (...,): the mean IoU over the classes present (NaN-skipping)."""
    return iou_from_confusion(cm).nanmean(-1)


def boundaries(labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """(N, H, W) bool: pixels whose label differs from one of their 4-neighbours (within ``valid`` pixels)."""
    b = torch.zeros_like(labels, dtype=torch.bool)
    dv = labels[:, 1:, :] != labels[:, :-1, :]
    dh = labels[:, :, 1:] != labels[:, :, :-1]
    if valid is not None:                              # an edge to an ignored pixel is no boundary
        dv &= valid[:, 1:, :] & valid[:, :-1, :]
        dh &= valid[:, :, 1:] & valid[:, :, :-1]
    b[:, 1:, :] |= dv
    b[:, :-1, :] |= dv
    b[:, :, 1:] |= dh
    b[:, :, :-1] |= dh
    return b if valid is None else b & valid


def _dilate(mask: Tensor, tolerance: float) -> Tensor:
    """(N, H, W) bool dilated by a Euclidean disk of radius ``tolerance``."""
    r = int(math.floor(tolerance))
    if r < 1:
        return mask
    t = torch.arange(-r, r + 1, device=mask.device, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= tolerance ** 2 + 1e-9).float()[None, None]
    return F.conv2d(mask[:, None].float(), disk, padding=r)[:, 0] > 0.5


def boundary_counts(pred: Tensor, target: Tensor, tolerance: float = 2.0, ignore_index: int | None = None) -> Tensor:
    """Per-image counts (N, 4): matched predicted boundary, predicted boundary, matched true boundary, true boundary."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    bp = boundaries(pred, valid)
    bt = boundaries(target, valid)
    matched_p = bp & _dilate(bt, tolerance)
    matched_t = bt & _dilate(bp, tolerance)
    return torch.stack([matched_p.sum((1, 2)), bp.sum((1, 2)), matched_t.sum((1, 2)), bt.sum((1, 2))], 1)


def boundary_f1_from_counts(counts: Tensor) -> Tensor:
    """Boundary F1 from counts (..., 4) (see :func:`boundary_counts`); 1 when neither map has a boundary."""
    c = counts.double()
    p = torch.where(c[..., 1] > 0, c[..., 0] / c[..., 1].clamp_min(1), (c[..., 3] == 0).double())
    r = torch.where(c[..., 3] > 0, c[..., 2] / c[..., 3].clamp_min(1), (c[..., 1] == 0).double())
    return torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-12), torch.zeros_like(p))


def boundary_f1(pred: Tensor, target: Tensor, tolerance: float = 2.0, ignore_index: int | None = None) -> float:
    """Dataset boundary F1 of label maps (N, H, W): precision and recall pooled over all images."""
    return float(boundary_f1_from_counts(boundary_counts(pred, target, tolerance, ignore_index).sum(0)))


def evaluate_segmentation(segmenter, data, batch_size: int = 32, tolerance: float = 2.0) -> dict:
    """Score ``segmenter`` (:class:`~.base.Segmenter`) on ``data`` (:class:`~.base.SegDataset`), every round.

    Returns a JSON-able dict: ``miou``, ``per_class_iou`` ({label: IoU or None}), ``dice``, ``mean_dice``,
    ``pixel_accuracy``, ``boundary_f1`` (tolerance ``tolerance`` px), ``miou_per_round`` (list),
    ``per_image_miou`` (final round, one per image, for paired comparisons), ``per_image_miou_per_round``,
    ``n_images``.  The final round gives the headline numbers.
    """
    k, ign, dev = data.num_classes, data.ignore_index, segmenter.device
    cms: list[list[Tensor]] = []
    bcounts = []
    for i in range(0, len(data), batch_size):
        target = data.masks[i:i + batch_size].to(dev)
        preds = segmenter.predict_rounds(data.x[i:i + batch_size], batch_size=batch_size)
        cms.append([confusion_matrix(p, target, k, ign, per_image=True) for p in preds])
        bcounts.append(boundary_counts(preds[-1], target, tolerance, ign))
    rounds = len(cms[0])
    per_round = [torch.cat([c[r] for c in cms]) for r in range(rounds)]          # (N, K, K) each
    total = per_round[-1].sum(0)
    iou, dice = iou_from_confusion(total), dice_from_confusion(total)
    clean = lambda v: None if math.isnan(v) else v                               # noqa: E731
    per_image = [mean_iou(cm).tolist() for cm in per_round]
    return {
        "miou": float(iou.nanmean()),
        "per_class_iou": {lab: clean(v) for lab, v in zip(data.labels, iou.tolist())},
        "dice": {lab: clean(v) for lab, v in zip(data.labels, dice.tolist())},
        "mean_dice": float(dice.nanmean()),
        "pixel_accuracy": float(pixel_accuracy(total)),
        "boundary_f1": float(boundary_f1_from_counts(torch.cat(bcounts).sum(0))),
        "boundary_tolerance": tolerance,
        "miou_per_round": [float(mean_iou(cm.sum(0))) for cm in per_round],
        "per_image_miou": [clean(v) for v in per_image[-1]],
        "per_image_miou_per_round": [[clean(v) for v in r] for r in per_image],
        "n_images": len(data),
    }
