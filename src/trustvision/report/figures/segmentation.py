"""Figures of the ``segment`` section: mask overlays per feedback round (Shibuya & Hotta, "Feedback U-Net
for Cell Image Segmentation", CVPR Workshops 2020), per-class IoU bars, robust mIoU against the L∞ budget
(Arnab, Miksik & Torr, CVPR 2018) and an adversarial example with its predicted mask (Xie et al., ICCV 2017).

Conventions: :mod:`.common` (pyplot-free matplotlib, Agg canvas, DPI 100).  Every helper takes plain
Python / NumPy / torch inputs (any device) and a destination path, writes one PNG and returns ``None``.
Images are (N, C, H, W) in [0, 1] with C = 1 or 3; masks are (N, H, W) integer class maps, where a value
outside 0..K-1 (the ignore index) is drawn black.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.patches import Patch

from .common import as_numpy, figure_helper, plain, save, short_label, subplots, to_image

__all__ = ["palette", "colour_mask", "overlay_grid", "per_class_iou_bars", "robust_miou_curves",
           "adversarial_example"]


def palette(num_classes: int) -> np.ndarray:
    """(K, 3) RGB colours in [0, 1]: class 0 (background) dark grey, the others from tab10 / tab20."""
    cmap = colormaps["tab10" if num_classes <= 11 else "tab20"]
    cols = np.array([cmap(i % cmap.N)[:3] for i in range(max(num_classes - 1, 1))])
    return np.vstack([[0.15, 0.15, 0.15], cols])[:num_classes]


def colour_mask(mask: Any, num_classes: int) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) RGB; values outside 0..K-1 (ignored pixels) black."""
    m = as_numpy(mask).astype(np.int64)
    rgb = np.zeros((*m.shape, 3))
    ok = (m >= 0) & (m < num_classes)
    rgb[ok] = palette(num_classes)[m[ok]]
    return rgb


def _blend(image: np.ndarray, mask: Any, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """(C, H, W) image in [0, 1] and (H, W) mask -> (H, W, 3) overlay (background pixels keep the image)."""
    img = to_image(image)
    img = np.repeat(img[..., None], 3, -1) if img.ndim == 2 else img
    m = as_numpy(mask).astype(np.int64)
    rgb = colour_mask(m, num_classes)
    a = np.where(((m > 0) & (m < num_classes))[..., None], alpha, 0.0)
    return np.clip(img * (1 - a) + rgb * a, 0, 1)


def _legend(fig, labels: Sequence[str], num_classes: int) -> None:
    cols = palette(num_classes)
    handles = [Patch(color=cols[k], label=short_label(labels, k, 12)) for k in range(num_classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(num_classes, 6), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, -0.02))


@figure_helper
def overlay_grid(x: Any, masks: Any, rounds: Sequence[Any], labels: Sequence[str], path: str | Path, *,
                 max_examples: int = 4, title: str = "") -> None:
    """Rows of (image | ground truth | round 1 | round 2 | ...) for up to ``max_examples`` images.

    Args:
        x: (N, C, H, W) images in [0, 1].
        masks: (N, H, W) ground-truth class maps.
        rounds: one (N, H, W) predicted class map per feedback round (a U-Net has one).
        labels: K class names (the legend).
        path: PNG destination.
    """
    x, gt = as_numpy(x).astype(np.float32), as_numpy(masks)
    preds = [as_numpy(r) for r in rounds]
    n, k = min(len(x), max_examples), len(labels)
    cols = 2 + len(preds)
    fig, axes = subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.5))
    heads = ["image", "ground truth"] + [f"round {r + 1}" if len(preds) > 1 else "prediction"
                                         for r in range(len(preds))]
    for i in range(n):
        panels = [to_image(x[i]), _blend(x[i], gt[i], k)] + [_blend(x[i], p[i], k) for p in preds]
        for j, img in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=9)
    _legend(fig, labels, k)
    if title:
        fig.suptitle(plain(title), fontsize=10)
    save(fig, path)


@figure_helper
def per_class_iou_bars(per_class: dict[str, Sequence[float | None]], labels: Sequence[str], path: str | Path, *,
                       title: str = "") -> None:
    """Grouped bars of IoU per class, one group per class and one bar per model (or per round).

    Args:
        per_class: series name -> K IoU values in [0, 1] (None / NaN: class absent, drawn as no bar).
        labels: K class names.
    """
    k = len(labels)
    names = list(per_class)
    width = 0.8 / max(len(names), 1)
    fig, ax = subplots(figsize=(max(5.0, 0.55 * k * max(1, len(names)) ** 0.5 + 2), 3.4))
    xs = np.arange(k)
    for j, name in enumerate(names):
        v = np.array([np.nan if a is None else float(a) for a in per_class[name]], dtype=float)[:k]
        ax.bar(xs + (j - (len(names) - 1) / 2) * width, np.nan_to_num(v, nan=0.0), width, label=plain(name))
    ax.set_xticks(xs, [short_label(labels, i, 10) for i in range(k)], rotation=45 if k > 8 else 0, fontsize=8)
    ax.set_ylabel("IoU")
    ax.set_ylim(0, 1.02)
    ax.grid(axis="y", alpha=0.3)
    if len(names) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(plain(title), fontsize=11)
    save(fig, path)


@figure_helper
def robust_miou_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
                       title: str = "", norm: str = "linf") -> None:
    """Robust mIoU against the budget ε: one line per model / attack.

    Args:
        curves: series name -> (eps values ascending, mIoU values in [0, 1]); a name containing ``fgsm``
            is drawn dashed (the single-step reference).
    """
    fig, ax = subplots(figsize=(6.0, 3.8))
    markers = "osD^v<>ph*"
    for i, (name, (eps, miou)) in enumerate(curves.items()):
        e = as_numpy(eps).astype(float) * (255 if norm == "linf" else 1)
        m = np.array([np.nan if v is None else v for v in miou], dtype=float)
        ax.plot(e, m, marker=markers[i % len(markers)], ms=4, lw=1.5, ls="--" if "fgsm" in name.lower() else "-",
                label=plain(name))
    ax.set_xlabel("budget ε (L∞, in /255)" if norm == "linf" else f"budget ε ({plain(norm)})")
    ax.set_ylabel("robust mIoU")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(plain(title), fontsize=11)
    save(fig, path)


@figure_helper
def adversarial_example(x: Any, x_adv: Any, mask: Any, pred_clean: Any, pred_adv: Any, labels: Sequence[str],
                        path: str | Path, *, eps: float, max_examples: int = 3, title: str = "") -> None:
    """Rows of (image | ground truth | clean prediction | adversarial image | its prediction | perturbation).

    Args:
        x, x_adv: (N, C, H, W) clean and adversarial images in [0, 1].
        mask, pred_clean, pred_adv: (N, H, W) class maps.
        eps: the L∞ budget (in the caption of the perturbation column, stretched to the full range).
    """
    x, xa = as_numpy(x).astype(np.float32), as_numpy(x_adv).astype(np.float32)
    gt, pc, pa = as_numpy(mask), as_numpy(pred_clean), as_numpy(pred_adv)
    n, k = min(len(x), max_examples), len(labels)
    heads = ["image", "ground truth", "clean prediction", f"adversarial (ε={eps * 255:.3g}/255)",
             "adversarial prediction", "perturbation (stretched)"]
    fig, axes = subplots(n, 6, figsize=(11.4, 1.9 * n + 0.5))
    for i in range(n):
        d = xa[i] - x[i]
        s = max(float(np.abs(d).max()), 1e-12)
        panels = [to_image(x[i]), _blend(x[i], gt[i], k), _blend(x[i], pc[i], k), to_image(xa[i]),
                  _blend(xa[i], pa[i], k), to_image(0.5 + 0.5 * d / s)]
        for j, img in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(plain(heads[j]), fontsize=8)
    _legend(fig, labels, k)
    if title:
        fig.suptitle(plain(title), fontsize=10)
    save(fig, path)
