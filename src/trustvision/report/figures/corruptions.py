"""PNG figures of the ``corruptions`` section (Hendrycks & Dietterich 2019): accuracy heat-map and a corruption grid.

Same conventions as :mod:`.common` (object-oriented matplotlib on an Agg canvas, no pyplot, DPI 100).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import as_numpy, figure_helper, plain, save, subplots, to_image

__all__ = ["accuracy_heatmap", "corruption_grid"]


@figure_helper
def accuracy_heatmap(acc: Any, corruptions: Sequence[str], severities: Sequence[int], path: str | Path, *,
                     clean_acc: float | None = None, title: str = "Accuracy under common corruptions") -> None:
    """Heat-map of ``acc`` (corruptions × severities, in [0, 1]) with each cell's value written in it."""
    a = as_numpy(acc).astype(np.float64)
    fig, ax = subplots(figsize=(1.2 + 0.75 * len(severities), 0.9 + 0.36 * len(corruptions)))
    im = ax.imshow(a, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities], fontsize=8)
    ax.set_yticks(range(len(corruptions)), [plain(c).replace("_", " ") for c in corruptions], fontsize=8)
    ax.set_xlabel("severity", fontsize=8)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(j, i, f"{a[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="black" if 0.25 < a[i, j] < 0.85 else "white")
    sub = f" (clean {clean_acc:.1%})" if clean_acc is not None else ""
    ax.set_title(plain(title) + sub, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.03)
    save(fig, path)


@figure_helper
def corruption_grid(images: Any, corruptions: Sequence[str], severities: Sequence[int], path: str | Path, *,
                    clean: Any = None) -> None:
    """One image at every corruption (rows) and severity (columns); ``images`` (R, S, C, H, W) in [0, 1].

    ``clean`` (C, H, W): drawn as a first column.
    """
    imgs = as_numpy(images).astype(np.float32)
    rows, cols = imgs.shape[:2]
    extra = clean is not None
    fig, axes = subplots(rows, cols + extra, figsize=(1.0 * (cols + extra) + 1.2, 1.0 * rows + 0.4))
    axes = np.asarray(axes).reshape(rows, cols + extra)
    gray = imgs.shape[2] == 1
    for i in range(rows):
        panels = ([as_numpy(clean).astype(np.float32)] if extra else []) + list(imgs[i])
        for j, img in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(to_image(img), cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("clean" if extra and j == 0 else f"severity {severities[j - extra]}", fontsize=7)
            if j == 0:
                ax.set_ylabel(plain(corruptions[i]).replace("_", "\n"), fontsize=7)
    save(fig, path)
