"""PNG figures of the ``certify`` section (randomized smoothing, Cohen et al. 2019).

Same conventions as :mod:`.common` (object-oriented matplotlib on an Agg
canvas, no pyplot, DPI 100): each helper takes per-image tensors/arrays of shape (N,) and a
destination path, writes one PNG and returns ``None``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import as_numpy, figure_helper, plain, save, subplots

__all__ = ["certified_accuracy_curve", "radius_histogram"]


@figure_helper
def certified_accuracy_curve(radius: Any, correct: Any, path: str | Path, *, sigma: float, marks: Sequence[float],
                             max_radius: float, title: str = "") -> None:
    """Certified accuracy against L2 radius r: the share of images certified correct with radius ≥ r.

    Args:
        radius: (N,) certified radii (0 for abstentions).  correct: (N,) bool, certified class = label.
        path: PNG destination.  sigma: noise level (legend).  marks: radii to mark with their values.
        max_radius: the largest radius the sample count can certify (drawn dashed).
    """
    r, ok = as_numpy(radius).astype(float), as_numpy(correct).astype(bool)
    n = max(len(r), 1)
    good = np.sort(r[ok])
    top = max(float(max(marks, default=0.0)), float(good.max()) if len(good) else 0.0, max_radius) * 1.05 or 1.0
    grid = np.linspace(0.0, top, 400)
    acc = (len(good) - np.searchsorted(good, grid, side="left")) / n
    fig, ax = subplots(figsize=(6.4, 4.0))
    ax.plot(grid, acc, lw=2, color="tab:blue", label=f"σ = {sigma:g}")
    for m in marks:
        a = float((good >= m).sum()) / n
        ax.plot([m], [a], "o", color="black", ms=4)
        ax.annotate(f"{a:.2f}", (m, a), textcoords="offset points", xytext=(3, 5), fontsize=8)
    ax.axvline(max_radius, color="grey", ls="--", lw=1, label=f"largest certifiable radius ({max_radius:.3g})")
    ax.set_xlabel("L2 radius r (pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(plain(title or "Certified accuracy vs radius"), fontsize=10)
    fig.tight_layout()
    save(fig, path)


@figure_helper
def radius_histogram(radius: Any, correct: Any, abstained: Any, path: str | Path, *, bins: int = 20,
                     title: str = "") -> None:
    """Histogram of certified radii, split into certified-correct and certified-wrong images.

    Args:
        radius: (N,) radii.  correct: (N,) bool certified class = label.  abstained: (N,) bool.
        path: PNG destination.  bins: histogram bins.
    """
    r, ok, ab = as_numpy(radius).astype(float), as_numpy(correct).astype(bool), as_numpy(abstained).astype(bool)
    fig, ax = subplots(figsize=(6.4, 3.6))
    top = float(r.max()) if len(r) and r.max() > 0 else 1.0
    edges = np.linspace(0.0, top, bins + 1)
    ax.hist([r[ok], r[~ok & ~ab]], bins=edges, stacked=True, color=["tab:green", "tab:red"],
            label=[f"correct ({int(ok.sum())})", f"wrong class ({int((~ok & ~ab).sum())})"])
    ax.set_xlabel("certified L2 radius")
    ax.set_ylabel("images")
    ax.legend(fontsize=8, title=f"abstained: {int(ab.sum())} of {len(r)}", title_fontsize=8)
    ax.set_title(plain(title or "Per-image certified radius"), fontsize=10)
    fig.tight_layout()
    save(fig, path)
