"""Figures of the ``robustness`` section (and ``trustvision attack``): robust accuracy against budget ε,
per-class clean vs robust bars, adversarial-example grids, plain bar charts.

Conventions: :mod:`.common` (pyplot-free matplotlib, Agg canvas, DPI 100).  Every helper takes plain
Python / NumPy / torch inputs (any device) and a destination path, writes one PNG and returns ``None``.
Images are (N, C, H, W) in [0, 1] with C = 1 or 3.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import as_numpy, figure_helper, plain, save, short_label, subplots, to_image, wrap_title

WORST_CASE = "worst-case"

__all__ = ["robustness_curves", "example_grid", "per_class_bars", "bars", "WORST_CASE"]


@figure_helper
def robustness_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *, norm: str,
                      clean_acc: float, chance: float, title: str = "") -> None:
    """Robust accuracy against budget ε: one line per attack, a bold worst-case line, a dashed chance line.

    Args:
        curves: attack name -> (eps values, robust accuracies in [0, 1]), same length each.
            The key ``"worst-case"`` (if present) is drawn bold and black, last.
        path: PNG destination.
        norm: norm name for the x-axis label (``"linf"``, ``"l2"``, ...).
        clean_acc: clean accuracy, drawn as a dotted reference line.
        chance: chance level (1 / number of classes), drawn dashed.
        title: figure title.
    """
    fig, ax = subplots(figsize=(6.4, 4.0))
    markers = "osD^v<>ph*"
    for i, (name, (eps, acc)) in enumerate(curves.items()):
        if name == WORST_CASE:
            continue
        e, a = as_numpy(eps).astype(float), as_numpy(acc).astype(float)
        ax.plot(e, a, marker=markers[i % len(markers)], ms=4, lw=1.4, alpha=0.85, label=plain(name))
    if WORST_CASE in curves:
        e, a = (as_numpy(v).astype(float) for v in curves[WORST_CASE])
        ax.plot(e, a, color="black", lw=2.8, marker="o", ms=5, label="worst case", zorder=5)
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.3g})")
    ax.axhline(clean_acc, color="tab:green", ls=":", lw=1, label=f"clean ({clean_acc:.3g})")
    pretty = {"linf": "L∞", "l2": "L2", "l0": "L0", "l1": "L1"}.get(norm.lower(), norm)
    ax.set_xlabel(f"budget ε ({plain(pretty)})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(plain(title), fontsize=11)
    save(fig, path)


@figure_helper
def example_grid(x: Any, x_adv: Any, y: Any, pred_clean: Any, pred_adv: Any, conf_clean: Any, conf_adv: Any,
                 labels: Sequence[str], path: str | Path, *, max_examples: int = 8,
                 amplify: float | None = None) -> None:
    """Rows of (original | adversarial | amplified perturbation) for up to ``max_examples`` images.

    Args:
        x, x_adv: (N, C, H, W) images in [0, 1], C = 1 or 3 (torch or NumPy, any device).
        y, pred_clean, pred_adv: (N,) integer labels / predictions.
        conf_clean, conf_adv: (N,) softmax confidence of the respective prediction.
        labels: class names (index -> name); indices outside it are shown as numbers.
        path: PNG destination.
        max_examples: number of rows drawn at most.
        amplify: factor for the perturbation column; by default each row is stretched so that its
            largest absolute change fills the full range.  Grey (0.5) means no change.
    """
    x, xa = as_numpy(x).astype(np.float32), as_numpy(x_adv).astype(np.float32)
    if x.ndim == 3:                                # (N, H, W) -> (N, 1, H, W)
        x, xa = x[:, None], xa[:, None]
    y, pc, pa = (as_numpy(v).astype(int).reshape(-1) for v in (y, pred_clean, pred_adv))
    cc, ca = (as_numpy(v).astype(float).reshape(-1) for v in (conf_clean, conf_adv))
    n = min(len(x), max_examples)
    fig, axes = subplots(max(n, 1), 3, figsize=(6.6, 2.3 * max(n, 1)))
    if n == 0:
        for ax in axes[0]:
            ax.axis("off")
        axes[0, 1].text(0.5, 0.5, "no examples", ha="center", va="center")
    gray = x.shape[1] == 1
    cmap = "gray" if gray else None
    for i in range(n):
        delta = xa[i] - x[i]
        linf = float(np.abs(delta).max()) if delta.size else 0.0
        k = amplify if amplify is not None else (0.5 / linf if linf > 0 else 1.0)
        pert = np.clip(0.5 + k * delta, 0.0, 1.0)
        row = axes[i]
        ok = pc[i] == y[i]
        row[0].imshow(to_image(x[i]), cmap=cmap, vmin=0, vmax=1)
        title = f"true {short_label(labels, y[i])} → pred {short_label(labels, pc[i])} ({cc[i]:.2f})"
        row[0].set_title(wrap_title(title), fontsize=8, color="black" if ok else "tab:red")
        row[1].imshow(to_image(xa[i]), cmap=cmap, vmin=0, vmax=1)
        fooled = pa[i] != y[i]
        row[1].set_title(f"pred {short_label(labels, pa[i])} ({ca[i]:.2f})", fontsize=8,
                         color="tab:red" if fooled else "tab:green")
        row[2].imshow(to_image(pert), cmap=cmap, vmin=0, vmax=1)
        row[2].set_title(f"×{k:.3g}, L∞={linf:.3g}", fontsize=8)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if n:
        for ax, head in zip(axes[0], ("original", "adversarial", "perturbation")):
            ax.set_title(f"{head}\n{ax.get_title()}", fontsize=8, color=ax.title.get_color())
    fig.tight_layout()
    save(fig, path)


@figure_helper
def per_class_bars(labels: Sequence[str], clean_acc_per_class: Sequence[float],
                   robust_acc_per_class: Sequence[float], path: str | Path, *, title: str) -> None:
    """Grouped bars: clean vs robust accuracy for each class.

    Args:
        labels: K class names (shorter lists are padded with indices).
        clean_acc_per_class, robust_acc_per_class: K accuracies in [0, 1] (``None``/NaN = no images).
        path: PNG destination.  title: figure title.
    """
    c = np.array([np.nan if v is None else v for v in as_numpy(clean_acc_per_class).tolist()], dtype=float)
    r = np.array([np.nan if v is None else v for v in as_numpy(robust_acc_per_class).tolist()], dtype=float)
    k = max(len(c), len(r))
    c, r = np.pad(c, (0, k - len(c)), constant_values=np.nan), np.pad(r, (0, k - len(r)), constant_values=np.nan)
    names = [short_label(labels, i) for i in range(k)]
    idx = np.arange(k)
    w = 0.4
    fig, ax = subplots(figsize=(max(5.0, min(0.45 * k + 2, 14.0)), 3.8))
    ax.bar(idx - w / 2, np.nan_to_num(c), w, label="clean", color="tab:blue")
    ax.bar(idx + w / 2, np.nan_to_num(r), w, label="robust (worst case)", color="tab:red")
    ax.set_xticks(idx)
    rotate = k > 10 or max(map(len, names), default=0) > 4
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(plain(title), fontsize=11)
    save(fig, path)


@figure_helper
def bars(names: Sequence[str], values: Sequence[float], path: str | Path, *, title: str, ylabel: str) -> None:
    """A plain bar chart: one bar per name, value written above it.

    Args:
        names: N bar labels.  values: N numbers (``None``/NaN drawn as empty).
        path: PNG destination.  title, ylabel: annotations.
    """
    v = np.array([np.nan if a is None else a for a in as_numpy(values).tolist()], dtype=float)
    names = [plain(n) for n in names]
    fig, ax = subplots(figsize=(max(4.5, min(0.6 * len(names) + 2, 14.0)), 3.6))
    idx = np.arange(len(v))
    ax.bar(idx, np.nan_to_num(v), color="tab:blue")
    for i, a in enumerate(v):
        if np.isfinite(a):
            ax.text(i, a, f"{a:.3g}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(idx)
    rotate = len(names) > 6 or max(map(len, names), default=0) > 8
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylabel(plain(ylabel))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(plain(title), fontsize=11)
    save(fig, path)
