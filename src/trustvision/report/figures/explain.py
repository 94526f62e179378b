"""PNG figures of the ``explain`` section: CAM overlays, cluster centres, deletion/insertion curves.

Same conventions as :mod:`.common` (object-oriented matplotlib on an Agg
canvas, no pyplot, DPI 100): every helper takes tensors/arrays and a destination path,
writes one PNG and returns ``None``.  Images are (N, C, H, W) in [0, 1]; maps (N, H, W) in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import as_numpy, figure_helper, plain, save, short_label, subplots, to_image

__all__ = ["cam_grid", "cluster_centers", "faithfulness_curves"]
CMAP = "jet"


def _show(ax, img: np.ndarray, cam: np.ndarray | None = None, title: str = "", color: str = "black") -> None:
    """Draw an image (C, H, W) on ``ax``, optionally with a translucent CAM (H, W) on top."""
    gray = img.shape[0] == 1
    ax.imshow(to_image(img), cmap="gray" if gray else None, vmin=0, vmax=1)
    if cam is not None:
        ax.imshow(np.clip(cam, 0, 1), cmap=CMAP, vmin=0, vmax=1, alpha=0.5)
    ax.set_title(title, fontsize=8, color=color)
    ax.set_xticks([])
    ax.set_yticks([])


@figure_helper
def cam_grid(x: Any, cam: Any, x_adv: Any, cam_adv: Any, pred: Any, pred_adv: Any, iou: Any,
             labels: Sequence[str], path: str | Path, *, max_examples: int = 8, per_row: int | None = None) -> None:
    """(original | its CAM | adversarial | its CAM) quadruplets with predictions and the top-region IoU.

    Drawn in the order given (the section picks fooled images of several classes first); two
    quadruplets share a row when there are more than four, so eight examples take four rows.

    Args:
        x, x_adv: (N, C, H, W) images.  cam, cam_adv: (N, H, W) maps.
        pred, pred_adv: (N,) predicted classes.  iou: (N,) IoU of the top regions of both maps.
        labels: class names.  path: PNG destination.  max_examples: quadruplets drawn at most.
        per_row: quadruplets per row (default: 1 for up to 4 examples, else 2).
    """
    x, xa, c, ca = (as_numpy(v).astype(np.float32) for v in (x, x_adv, cam, cam_adv))
    p, pa, io = as_numpy(pred).astype(int), as_numpy(pred_adv).astype(int), as_numpy(iou).astype(float)
    n = min(len(x), max_examples)
    per = per_row or (1 if n <= 4 else 2)
    rows = max(-(-n // per), 1)
    fig, axes = subplots(rows, 4 * per, figsize=(7.6 * per, 2.0 * rows + 0.2))
    for ax in axes.reshape(-1):
        ax.axis("off")
    if n == 0:
        axes[0, 1].text(0.5, 0.5, "no examples", ha="center", va="center")
    for i in range(n):
        row = axes[i // per, 4 * (i % per): 4 * (i % per) + 4]
        fooled = pa[i] != p[i]
        _show(row[0], x[i], None, f"original: {short_label(labels, p[i])}")
        _show(row[1], x[i], c[i], "CAM")
        _show(row[2], xa[i], None, f"adversarial: {short_label(labels, pa[i])}", "tab:red" if fooled else "tab:green")
        _show(row[3], xa[i], ca[i], f"CAM (IoU {io[i]:.2f})")
        for ax in row:
            ax.axis("on")
    fig.tight_layout()
    save(fig, path)


@figure_helper
def cluster_centers(centers: Any, sizes: Sequence[int], members: Sequence[Sequence[int]], x: Any, maps: Any,
                    path: str | Path, *, thumbs: int = 5) -> None:
    """One row per cluster: its mean map, then up to ``thumbs`` member images (closest to the centre first)
    with their CAMs.

    Args:
        centers: (k, H, W) mean maps.  sizes: (k,) members per cluster.  members: per cluster, indices.
        x: (N, C, H, W) images.  maps: (N, H, W) CAMs.  path: PNG destination.
    """
    ce, xs, ms = as_numpy(centers).astype(np.float32), as_numpy(x).astype(np.float32), as_numpy(maps).astype(np.float32)
    k = max(len(ce), 1)
    fig, axes = subplots(k, thumbs + 1, figsize=(1.5 * (thumbs + 1), 1.6 * k + 0.3))
    for r in range(k):
        row = axes[r]
        for ax in row:
            ax.axis("off")
        if r >= len(ce):
            continue
        row[0].imshow(ce[r], cmap=CMAP, vmin=0, vmax=max(float(ce[r].max()), 1e-6))
        row[0].set_title(f"cluster {r} (n={int(sizes[r])})", fontsize=8)
        for j, idx in enumerate(list(members[r])[:thumbs]):
            _show(row[j + 1], xs[idx], ms[idx], f"#{idx}")
            row[j + 1].axis("on")
    fig.tight_layout()
    save(fig, path)


@figure_helper
def faithfulness_curves(fractions: Any, curves: dict[str, tuple[Any, Any]], path: str | Path, *,
                        title: str = "") -> None:
    """Mean deletion (left) and insertion (right) curves, one line per map kind (e.g. CAM vs random).

    Args:
        fractions: (S+1,) pixel fractions.  curves: name -> (deletion (N, S+1), insertion (N, S+1)).
        path: PNG destination.  title: figure title.
    """
    f = as_numpy(fractions).astype(float)
    fig, axes = subplots(1, 2, figsize=(8.6, 3.4))
    for name, (dele, ins) in curves.items():
        for ax, cur in zip(axes[0], (dele, ins)):
            c = as_numpy(cur).astype(float)
            m = c.mean(0) if len(c) else np.zeros_like(f)
            auc = float(((m[1:] + m[:-1]) / 2 * np.diff(f)).sum()) if len(f) > 1 else float("nan")
            ax.plot(f, m, lw=1.8, label=f"{plain(name)} (AUC {auc:.3f})")
    for ax, head in zip(axes[0], ("deletion (lower is better)", "insertion (higher is better)")):
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("probability of explained class")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        ax.set_title(head, fontsize=10)
    if title:
        fig.suptitle(plain(title), fontsize=11)
    fig.tight_layout()
    save(fig, path)
