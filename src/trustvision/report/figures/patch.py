"""PNG figures of the ``patch`` section: the patch, the printable file, patched examples, success curves, training.

Same conventions as :mod:`.common` (object-oriented matplotlib on an Agg canvas, no pyplot, DPI 100).
The patch is (C, p, p) in [0, 1] with its mask (1, p, p); images (N, C, H, W) in [0, 1].  Nothing here runs a
model: the section hands over tensors and numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import as_numpy, figure_helper, plain, save, subplots, to_image
from .uap import before_after

__all__ = ["patch_image", "printable_png", "patched_examples", "success_curve", "training_curve"]

_STYLE = {"patch": ("-o", "adversarial patch"), "noise": ("--s", "random-noise patch"),
          "natural": (":^", "natural-photo patch")}


@figure_helper
def printable_png(patch: Any, mask: Any, path: str | Path, pixels: int, dpi: float) -> None:
    """Write the patch as a PNG of ``pixels`` × ``pixels`` (bilinear, as the model saw it) tagged with ``dpi``,
    so that it prints at the chosen physical size; a non-square mask becomes the alpha channel."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    p = torch.as_tensor(as_numpy(patch), dtype=torch.float32)[None]
    m = torch.as_tensor(as_numpy(mask), dtype=torch.float32)[None]
    big = F.interpolate(torch.cat([p, m], 1), size=(pixels, pixels), mode="bilinear", align_corners=False)[0]
    rgb = big[:-1].clamp(0, 1)
    rgb = rgb.repeat(3, 1, 1) if rgb.shape[0] == 1 else rgb[:3]
    alpha = big[-1:].clamp(0, 1)
    square = bool((m == 1).all())
    arr = torch.cat([rgb] + ([] if square else [alpha])).permute(1, 2, 0).mul(255).round().byte().numpy()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="RGB" if square else "RGBA").save(path, dpi=(dpi, dpi))


@figure_helper
def patch_image(patch: Any, mask: Any, path: str | Path, *, title: str = "") -> None:
    """The patch itself at its own resolution (pixels outside the mask shown white)."""
    a = as_numpy(patch).astype(np.float32)
    m = as_numpy(mask).astype(np.float32)
    shown = a * m + (1 - m)
    fig, ax = subplots(figsize=(3.2, 3.4))
    ax.imshow(to_image(shown), cmap="gray" if a.shape[0] == 1 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(plain(title), fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    save(fig, path)


@figure_helper
def patched_examples(x: Any, x_patched: Any, pred: Any, pred_patched: Any, labels: Sequence[str], path: str | Path,
                     *, target: int | None = None) -> None:
    """Two rows: clean images with predictions, then with the patch (red: prediction changed; the target bold)."""
    before_after(x, x_patched, pred, pred_patched, labels, path, second="+ patch", target=target)


@figure_helper
def success_curve(rows: dict, baseline: float, path: str | Path, *, xlabel: str, ylabel: str,
                  trained_at: float | None = None) -> None:
    """Success against a swept value (area or strength) for the patch and its controls (``rows``: value ->
    ``{"patch", "noise", "natural"}``), with the clean baseline as a dashed line."""
    xs = list(rows)
    fig, ax = subplots(figsize=(5.0, 3.2))
    for name, (style, label) in _STYLE.items():
        ax.plot(xs, [rows[v][name] for v in xs], style, ms=4, label=label)
    ax.axhline(baseline, color="grey", ls="--", lw=1, label="clean (no patch)")
    if trained_at is not None:
        ax.axvline(trained_at, color="grey", ls=":", lw=1, label="trained at")
    ax.set_xlabel(plain(xlabel))
    ax.set_ylabel(plain(ylabel))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, path)


@figure_helper
def training_curve(losses: Sequence[float], path: str | Path) -> None:
    """Mean EOT loss per Adam step (with a moving average over 5% of the steps)."""
    y = np.asarray(losses, dtype=float)
    fig, ax = subplots(figsize=(5.0, 3.0))
    ax.plot(np.arange(1, len(y) + 1), y, lw=0.7, alpha=0.5, label="per step")
    w = max(1, len(y) // 20)
    if len(y) >= 2 * w > 1:
        ax.plot(np.arange(w, len(y) + 1), np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.5, label="moving mean")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, path)
