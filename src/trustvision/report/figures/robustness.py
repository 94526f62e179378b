"""Figures of the ``robustness`` section (and ``trustvision attack``): robust accuracy against budget ε,
per-class clean vs robust bars, adversarial-example grids, plain bar charts.

Shares are drawn as percentages and budgets are written as in the report's tables
(:mod:`trustvision.report.labels`: ``8/255`` for k/255); legends sit outside the axes, never on data.

Conventions: :mod:`.common` (pyplot-free matplotlib, Agg canvas, DPI 100).  Every helper takes plain
Python / NumPy / torch inputs (any device) and a destination path, writes one PNG and returns ``None``.
Images are (N, C, H, W) in [0, 1] with C = 1 or 3.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.patches import Rectangle

from ..labels import budget_short, norm_name, pct, relabel
from .common import (as_numpy, figure_helper, legend_outside, percent_axis, pick_examples, plain, save,
                     short_label, subplots, to_image, wrap_title)

WORST_CASE = "worst-case"

__all__ = ["robustness_curves", "example_grid", "per_class_bars", "bars", "WORST_CASE"]


@figure_helper
def robustness_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *, norm: str,
                      clean_acc: float, chance: float, majority: float | None = None, title: str = "") -> None:
    """Robust accuracy (in %) against budget ε: one line per attack over a broad worst-case band.

    The worst case is drawn first, as a wide translucent band, so that an attack whose curve equals it
    (PGD, usually) stays visible on top of it; the legend sits outside the axes and never hides a line.
    Reference lines: clean accuracy (dotted), the majority-class rate (dashed: what a model that always
    answers the most frequent class scores) and 1/K (dash-dotted, named as such).

    Args:
        curves: attack name -> (eps values, robust accuracies in [0, 1]), same length each.
            The key ``"worst-case"`` (if present) is the band.
        path: PNG destination.
        norm: norm name for the axis label (``"linf"``, ``"l2"``, ``"l0"``).
        clean_acc: clean accuracy in [0, 1].
        chance: 1/K, the uniform-guess rate.
        majority: share of the most frequent class among the evaluated images (None: not drawn).
        title: figure title.
    """
    fig, ax = subplots(figsize=(7.4, 4.0))
    markers = "osD^v<>ph*"
    budgets: set[float] = set()
    if WORST_CASE in curves:
        e, a = (as_numpy(v).astype(float) for v in curves[WORST_CASE])
        budgets.update(e.tolist())
        ax.plot(e, a, color="black", lw=9, alpha=0.18, solid_capstyle="round", zorder=1,
                label="worst case (every attack failed)")
    for i, (name, (eps, acc)) in enumerate(curves.items()):
        if name == WORST_CASE:
            continue
        e, a = as_numpy(eps).astype(float), as_numpy(acc).astype(float)
        budgets.update(e.tolist())
        ax.plot(e, a, marker=markers[i % len(markers)], ms=4.5, lw=1.5, zorder=3, label=plain(name))
    if majority is not None:
        ax.axhline(majority, color="tab:purple", ls="--", lw=1, label=f"majority class ({pct(majority)})")
    ax.axhline(chance, color="grey", ls="-.", lw=1, label=f"1/K ({pct(chance)})")
    ax.axhline(clean_acc, color="tab:green", ls=":", lw=1.2, label=f"clean ({pct(clean_acc)})")
    _budget_ticks(ax, sorted(budgets))
    ax.set_xlabel(f"budget ε ({plain(norm_name(norm))})")
    ax.set_ylabel("robust accuracy (of all images)")
    ax.set_ylim(-0.02, 1.02)
    percent_axis(ax)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    if title:
        ax.set_title(plain(relabel(title)), fontsize=11)
    save(fig, path)


def _budget_ticks(ax, budgets: list[float]) -> None:
    """Ticks at the budgets asked, written as in the tables (``8/255`` for k/255), rotated when crowded."""
    if not budgets or len(budgets) > 12:
        return
    ax.set_xticks(budgets)
    ax.set_xticklabels([budget_short(b) for b in budgets], fontsize=8, rotation=35 if len(budgets) > 4 else 0,
                       ha="right" if len(budgets) > 4 else "center")


def _distance(delta: np.ndarray, norm: str | None) -> str:
    """The size of one perturbation (C, H, W) in the attack's norm (both L∞ and L2 when unknown)."""
    linf = float(np.abs(delta).max()) if delta.size else 0.0
    l2 = float(np.sqrt((delta.astype(np.float64) ** 2).sum()))
    key = (norm or "").lower()
    if key == "l2":
        return f"L2={l2:.3g}"
    if key == "l0":
        return f"L0={int((np.abs(delta) > 1e-6).any(0).sum())} px"
    if key == "l1":
        return f"L1={float(np.abs(delta).sum()):.3g}"
    if key == "linf":
        return f"L∞={linf:.3g}"
    return f"L∞={linf:.3g}, L2={l2:.3g}"


TILE_IN, GAP_IN, TRIPLET_GAP_IN, TITLE_IN = 1.7, 0.12, 0.45, 0.55
"""Inches: an image's longer side, the gap inside a triplet, between triplets, and the title room above a row."""


@figure_helper
def example_grid(x: Any, x_adv: Any, y: Any, pred_clean: Any, pred_adv: Any, conf_clean: Any, conf_adv: Any,
                 labels: Sequence[str], path: str | Path, *, max_examples: int = 8, norm: str | None = None,
                 amplify: float | None = None, per_row: int | None = None) -> None:
    """(original | adversarial | amplified perturbation) triplets for up to ``max_examples`` images.

    Images are chosen fooled first and spread over the classes (:func:`.common.pick_examples`); two
    triplets share a row when there are more than four, so eight examples take four rows.  The tiles are
    composed into one RGB mosaic drawn on a single axes (titles as text above each tile), which renders
    several times faster than one axes per tile.

    Args:
        x, x_adv: (N, C, H, W) images in [0, 1], C = 1 or 3 (torch or NumPy, any device).
        y, pred_clean, pred_adv: (N,) integer labels / predictions.
        conf_clean, conf_adv: (N,) softmax confidence of the respective prediction.
        labels: class names (index -> name); indices outside it are shown as numbers.
        path: PNG destination.
        max_examples: number of triplets drawn at most.
        norm: the attack's norm (``linf``, ``l2``, ``l0``): the perturbation is measured in it
            (None: both L∞ and L2 are given).
        amplify: factor for the perturbation column; by default each one is stretched so that its
            largest absolute change fills the full range.  Grey (0.5) means no change.
        per_row: triplets per row (default: 1 for up to 4 examples, else 2).
    """
    x, xa = as_numpy(x).astype(np.float32), as_numpy(x_adv).astype(np.float32)
    if x.ndim == 3:                                # (N, H, W) -> (N, 1, H, W)
        x, xa = x[:, None], xa[:, None]
    y, pc, pa = (as_numpy(v).astype(int).reshape(-1) for v in (y, pred_clean, pred_adv))
    cc, ca = (as_numpy(v).astype(float).reshape(-1) for v in (conf_clean, conf_adv))
    pick = pick_examples(y, pa != y, max_examples)
    n = len(pick)
    per = per_row or (1 if n <= 4 else 2)
    rows = max(-(-n // per), 1)
    h, w = x.shape[-2:]
    inch = TILE_IN / max(h, w)                     # inches per image pixel
    gap, gap3, top = (max(1, round(v / inch)) for v in (GAP_IN, TRIPLET_GAP_IN, TITLE_IN))
    left = [(j // 3) * (3 * w + 2 * gap + gap3) + (j % 3) * (w + gap) for j in range(3 * per)]
    width, height = per * (3 * w + 2 * gap) + (per - 1) * gap3, rows * (h + top)
    canvas = np.ones((height, width, 3), np.float32)
    fig, ax = subplots(figsize=(width * inch, height * inch))
    fig.subplots_adjust(0, 0, 1, 1)
    ax.axis("off")
    if n == 0:
        ax.text(width / 2, height / 2, "no examples", ha="center", va="center")
    for slot, i in enumerate(pick):
        tiles, titles = _triplet(x[i], xa[i], int(y[i]), int(pc[i]), int(pa[i]), float(cc[i]), float(ca[i]), labels,
                                 norm, amplify, head=slot < per)
        y0 = (slot // per) * (h + top) + top
        for x0, tile, (text, color) in zip(left[3 * (slot % per):], tiles, titles):
            canvas[y0:y0 + h, x0:x0 + w] = tile
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, lw=0.8, ec="black"))
            ax.text(x0 + w / 2, y0 - 0.06 / inch, text, ha="center", va="bottom", fontsize=8, color=color)
    ax.imshow(canvas, interpolation="nearest", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.set_xlim(-1.5, width + 0.5)                 # a pixel of margin: the frames are not clipped
    ax.set_ylim(height + 0.5, -1.5)
    save(fig, path)


def _triplet(x, xa, y: int, pc: int, pa: int, cc: float, ca: float, labels, norm, amplify, *,
             head: bool) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """One (original | adversarial | perturbation) triplet: three (H, W, 3) RGB tiles and their (title, colour)."""
    delta = xa - x
    peak = float(np.abs(delta).max()) if delta.size else 0.0
    k = amplify if amplify is not None else (0.5 / peak if peak > 0 else 1.0)
    pert = np.clip(0.5 + k * delta, 0.0, 1.0)
    titles = [(wrap_title(f"true {short_label(labels, y)} → pred {short_label(labels, pc)} ({cc:.2f})"),
               "black" if pc == y else "tab:red"),
              (f"pred {short_label(labels, pa)} ({ca:.2f})", "tab:red" if pa != y else "tab:green"),
              (f"×{k:.3g}, {_distance(delta, norm)}", "black")]
    heads = ("original", "adversarial", "perturbation")
    tiles = [to_image(img) for img in (x, xa, pert)]
    tiles = [np.repeat(t[..., None], 3, axis=2) if t.ndim == 2 else t for t in tiles]   # grey -> RGB
    return tiles, [(f"{hd}\n{text}" if head else text, color) for hd, (text, color) in zip(heads, titles)]


@figure_helper
def per_class_bars(labels: Sequence[str], clean_acc_per_class: Sequence[float],
                   robust_acc_per_class: Sequence[float], path: str | Path, *, title: str) -> None:
    """Grouped bars: clean vs robust accuracy (in % of the class's images) for each class; legend outside.

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
    fig, ax = subplots(figsize=(max(6.0, min(0.45 * k + 3.2, 15.0)), 3.8))
    ax.bar(idx - w / 2, np.nan_to_num(c), w, label="clean", color="tab:blue")
    ax.bar(idx + w / 2, np.nan_to_num(r), w, label="robust (worst case)", color="tab:red")
    ax.set_xticks(idx)
    rotate = k > 10 or max(map(len, names), default=0) > 4
    ax.set_xticklabels(names, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylim(0, 1.05)
    percent_axis(ax)
    ax.set_ylabel("accuracy (of the class's images)")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax)
    ax.set_title(plain(relabel(title)), fontsize=11)
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
    ax.set_title(plain(relabel(title)), fontsize=11)
    save(fig, path)
