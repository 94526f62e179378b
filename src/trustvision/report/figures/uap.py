"""PNG figures of the ``uap`` section: the perturbation, before/after examples, convergence, ζ sweep, transfer.

Same conventions as :mod:`.common` (object-oriented matplotlib on an Agg canvas,
no pyplot, DPI 100).  ``v`` is (1, C, H, W); images (N, C, H, W) in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..labels import norm_name, pct, relabel
from .common import (as_numpy, figure_helper, legend_outside, percent_axis, plain, save, short_label, subplots,
                     to_image)

__all__ = ["amplified", "uap_image", "before_after", "convergence", "zeta_sweep_plot", "transfer_heatmap"]


def amplified(v: Any) -> np.ndarray:
    """``v`` (1, C, H, W) mapped to [0, 1] for display: 0.5 + v / (2 max|v|) (grey = 0), as (C, H, W)."""
    a = as_numpy(v).astype(np.float32)[0]
    return np.clip(0.5 + a / (2 * max(float(np.abs(a).max()), 1e-12)), 0, 1)


@figure_helper
def uap_image(v: Any, path: str | Path, *, title: str = "") -> None:
    """The UAP amplified to the full display range (grey = 0)."""
    a = amplified(v)
    fig, ax = subplots(figsize=(3.2, 3.4))
    ax.imshow(to_image(a), cmap="gray" if a.shape[0] == 1 else None, vmin=0, vmax=1)
    ax.set_title(plain(relabel(title)), fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    save(fig, path)


@figure_helper
def before_after(x: Any, x_adv: Any, pred: Any, pred_adv: Any, labels: Sequence[str], path: str | Path, *,
                 second: str = "+ UAP", target: int | None = None) -> None:
    """Two rows: clean images with their predictions, the same images perturbed (``second``: "+ UAP",
    "+ patch") with theirs (red = changed; bold = reached ``target``).

    Drawn in the order given: the section picks fooled images of several classes first
    (:func:`.common.pick_examples`).  x, x_adv: (N, C, H, W) in [0, 1]; pred, pred_adv: (N,).
    """
    xs, xa = as_numpy(x).astype(np.float32), as_numpy(x_adv).astype(np.float32)
    p, pa = as_numpy(pred).astype(int), as_numpy(pred_adv).astype(int)
    n = max(len(xs), 1)
    fig, axes = subplots(2, n, figsize=(1.3 * n + 0.4, 3.0))
    for i in range(n):
        for row, (img, k) in enumerate(((xs, p), (xa, pa))):
            ax = axes[row][i]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(xs):
                continue
            ax.imshow(to_image(img[i]), cmap="gray" if img.shape[1] == 1 else None, vmin=0, vmax=1)
            color = "tab:red" if row == 1 and pa[i] != p[i] else "black"
            bold = row == 1 and target is not None and pa[i] == target
            ax.set_title(short_label(labels, k[i], 10), fontsize=7, color=color,
                         fontweight="bold" if bold else "normal")
    axes[0][0].set_ylabel("clean", fontsize=8)
    axes[1][0].set_ylabel(second, fontsize=8)
    fig.tight_layout()
    save(fig, path)


@figure_helper
def convergence(curve: Sequence[float], path: str | Path, *, ylabel: str, stop_rate: float | None = None) -> None:
    """Build-set fooling rate (or targeted success) after each pass (pass 0 = before the first)."""
    fig, ax = subplots(figsize=(5.0, 3.2))
    ax.plot(range(len(curve)), list(curve), marker="o", ms=4)
    if stop_rate is not None:
        ax.axhline(stop_rate, color="grey", ls="--", lw=1, label=f"stop at {pct(stop_rate, 0)}")
        legend_outside(ax)
    ax.set_xlabel("pass")
    ax.set_ylabel(plain(ylabel))
    ax.set_ylim(0, 1)
    percent_axis(ax)
    ax.grid(alpha=0.3)
    save(fig, path)


@figure_helper
def zeta_sweep_plot(sweep: dict, path: str | Path, *, ylabel: str, norm: str) -> None:
    """Rate against ζ for the UAP and its two random controls (``sweep`` from ``fooling.zeta_sweep``)."""
    fig, ax = subplots(figsize=(5.0, 3.2))
    z = sweep["zeta"]
    for name, style in (("uap", "-o"), ("permuted", "--s"), ("random", ":^")):
        ax.plot(z, sweep[name], style, ms=4, label={"uap": "UAP", "permuted": "pixel-permuted UAP",
                                                     "random": "uniform random"}[name])
    ax.set_xlabel(f"ζ = ||v|| / mean ||x|| ({norm_name(norm)})")
    ax.set_ylabel(plain(ylabel))
    ax.set_ylim(0, 1)
    percent_axis(ax)
    legend_outside(ax)
    ax.grid(alpha=0.3)
    save(fig, path)


@figure_helper
def transfer_heatmap(tm: dict, path: str | Path) -> None:
    """Heat map: rows = model the UAP was built on, columns = model evaluated, cells = rate."""
    m = np.asarray(tm["matrix"], dtype=float)
    fig, ax = subplots(figsize=(1.2 * m.shape[1] + 2.4, 0.8 * m.shape[0] + 1.6))
    ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, pct(m[i, j], 0), ha="center", va="center", color="white" if m[i, j] < 0.6 else "black")
    ax.set_xticks(range(m.shape[1]), [plain(t) for t in tm["targets"]], rotation=30, fontsize=8)
    ax.set_yticks(range(m.shape[0]), [plain(t) for t in tm["sources"]], fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("UAP built on")
    ax.set_title(plain(tm.get("metric", "")), fontsize=9)
    save(fig, path)
