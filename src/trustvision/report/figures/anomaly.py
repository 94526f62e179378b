"""Figures of the ``anomaly`` section (inspection): map overlays, regions kept vs removed, ROC curves,
score histograms (normal vs defective) and attack curves (miss / false-alarm rate vs budget).

Pure plotting from tensors/arrays the section hands over: nothing here runs a model.  Every function
writes one PNG and returns its path.  Shapes: images (K, C, H, W) in [0, 1]; maps / masks / label
maps (K, H, W); scores (N,); labels (N,) 0 normal / 1 defective.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import as_numpy, save, subplots, to_image

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _grid(nrows: int, ncols: int, figsize: tuple[float, float]):
    """:func:`.common.subplots` that always returns a (nrows, ncols) array of axes."""
    fig, ax = subplots(nrows, ncols, figsize=figsize)
    return fig, ax if isinstance(ax, np.ndarray) else np.array([[ax]], dtype=object)


def pick_examples(defect_types: Sequence[str], n: int) -> list[int]:
    """Up to ``n`` test indices: one per defect type first (in order of appearance), then one normal, then more."""
    first = {}
    for i, t in enumerate(defect_types):
        first.setdefault(t, i)
    kinds = [i for t, i in first.items() if t != "good"]
    good = [first["good"]] if "good" in first else []
    rest = [i for i in range(len(defect_types)) if i not in kinds and i not in good]
    return (kinds[: max(n - len(good), 0)] + good + rest)[:n]


def overlays(images: Any, maps: dict[str, Any], masks: Any | None, titles: Sequence[str], path: Path) -> Path:
    """One row per image: the image, its ground-truth mask (if any), then each method's map over the image."""
    x = as_numpy(images)
    cols = 1 + (masks is not None) + len(maps)
    fig, ax = _grid(len(x), cols, figsize=(1.9 * cols, 1.9 * len(x)))
    for i in range(len(x)):
        img = to_image(x[i])
        grey = img if img.ndim == 2 else img.mean(-1)
        ax[i, 0].imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax[i, 0].set_title(titles[i], fontsize=8)
        c = 1
        if masks is not None:
            ax[i, 1].imshow(as_numpy(masks[i]), cmap="gray", vmin=0, vmax=1)
            ax[i, 1].set_title("mask", fontsize=8)
            c = 2
        for j, (name, m) in enumerate(maps.items()):
            mm = as_numpy(m)
            ax[i, c + j].imshow(grey, cmap="gray")
            ax[i, c + j].imshow(mm[i], cmap="jet", alpha=0.45, vmin=float(mm.min()), vmax=float(mm.max()))
            ax[i, c + j].set_title(name, fontsize=8)
    for a in ax.ravel():
        a.axis("off")
    save(fig, path)
    return path


def regions(images: Any, candidates: Any, kept: Any, path: Path) -> Path:
    """Each image with its candidate regions outlined: green kept by the re-judgment, red removed."""
    x, c, k = as_numpy(images), as_numpy(candidates), as_numpy(kept)
    fig, ax = _grid(1, len(x), figsize=(2.0 * len(x), 2.2))
    for i in range(len(x)):
        a = ax[0, i]
        a.imshow(to_image(x[i]), cmap="gray" if x.shape[1] == 1 else None)
        removed = (c[i] > 0) & ~(k[i] > 0)
        for sel, colour in ((k[i] > 0, "lime"), (removed, "red")):
            if sel.any():
                a.contour(sel.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        n_c, n_k = len(np.unique(c[i][c[i] > 0])), len(np.unique(k[i][k[i] > 0]))
        a.set_title(f"{n_k} kept / {n_c - n_k} removed", fontsize=8)
        a.axis("off")
    save(fig, path)
    return path


def roc_curves(scores: dict[str, Any], labels: Any, path: Path) -> Path:
    """Image-level ROC curve of each method, AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve
    y = as_numpy(labels)
    fig, ax = subplots(figsize=(4.2, 3.8))
    for j, (name, s) in enumerate(scores.items()):
        s = as_numpy(s)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, color=COLOURS[j % len(COLOURS)], label=f"{name} (AUROC {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="image-level ROC")
    ax.legend(fontsize=8, loc="lower right")
    save(fig, path)
    return path


def histograms(scores: dict[str, Any], labels: Any, thresholds: dict[str, float], path: Path) -> Path:
    """Per method: histograms of image scores of normal vs defective test images, the threshold dashed."""
    y = as_numpy(labels).astype(bool)
    fig, ax = _grid(1, len(scores), figsize=(3.6 * len(scores), 3.0))
    for j, (name, s) in enumerate(scores.items()):
        s, a = as_numpy(s), ax[0, j]
        bins = np.linspace(float(s.min()), float(s.max()) + 1e-12, 25)
        a.hist(s[~y], bins=bins, alpha=0.6, color="tab:blue", label="normal")
        a.hist(s[y], bins=bins, alpha=0.6, color="tab:red", label="defective")
        if name in thresholds:
            a.axvline(thresholds[name], ls="--", color="black", lw=1)
        a.set(title=name, xlabel="image score")
        a.legend(fontsize=7)
    save(fig, path)
    return path


def attack_curves(curves: dict[str, dict[str, Any]], path: Path) -> Path:
    """Miss rate, false-alarm rate and attacked image AUROC against the budget, one line per method."""
    fig, ax = subplots(1, 3, figsize=(11.0, 3.2))
    panels = (("miss_rate", "miss rate (defects scored normal)"), ("false_alarm_rate", "false-alarm rate"),
              ("image_auroc", "image AUROC under attack"))
    for j, (name, c) in enumerate(curves.items()):
        eps = np.asarray(c["budgets"], dtype=float) * (255 if c.get("norm") == "linf" else 1)
        for k, (key, title) in enumerate(panels):
            vals = np.asarray([np.nan if v is None else v for v in c[key]], dtype=float)
            ax[0, k].plot(eps, vals, marker="o", color=COLOURS[j % len(COLOURS)], label=name)
            ax[0, k].set(title=title, xlabel="eps ×255" if c.get("norm") == "linf" else "eps (L2)", ylim=(-0.02, 1.02))
    ax[0, 0].legend(fontsize=8)
    save(fig, path)
    return path
