"""PNG figures of the ``zeroshot`` section (Raw Zero-Shot, Kotyan, Matsuki & Vargas, PLOS ONE 2022).

Same conventions as :mod:`.common` (object-oriented matplotlib on an Agg canvas, no
pyplot, DPI 100): each helper takes arrays and a destination path, writes one PNG and returns ``None``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .common import as_numpy, figure_helper, plain, save, subplots

__all__ = ["correlation_scatter", "metric_bars", "soft_label_pca"]


@figure_helper
def metric_bars(archs: Sequence[str], means: dict[str, Sequence[float]], spreads: dict[str, Sequence[float]],
                path: str | Path, *, title: str = "") -> None:
    """One panel per metric: a bar per architecture (mean over held-out classes) with a ±std error bar.

    Args:
        archs: (A,) architecture names.  means, spreads: metric name -> (A,) values (None drawn as 0).
        path: PNG destination.
    """
    names = list(means)
    fig, axes = subplots(1, len(names), figsize=(3.6 * len(names) + 0.6, 3.6))
    axes = np.atleast_1d(axes).ravel()
    pos = np.arange(len(archs))
    for ax, name in zip(axes, names):
        m = np.array([np.nan if v is None else v for v in means[name]], dtype=float)
        s = np.array([0.0 if v is None else v for v in spreads.get(name, [0.0] * len(archs))], dtype=float)
        best = int(np.nanargmin(m)) if np.isfinite(m).any() else -1
        colors = ["tab:green" if i == best else "tab:blue" for i in range(len(archs))]
        ax.bar(pos, np.nan_to_num(m), yerr=s, capsize=3, color=colors, alpha=0.85)
        ax.set_xticks(pos, [plain(a) for a in archs], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(f"{plain(name)} (lower = better)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(plain(name), fontsize=10)
    fig.suptitle(plain(title or "Raw Zero-Shot metrics: mean ± std over held-out classes"), fontsize=10)
    fig.tight_layout()
    save(fig, path)


def _pca2(x: np.ndarray) -> np.ndarray:
    """(n, D) -> (n, 2) projection on the two leading principal axes (zeros where undefined)."""
    out = np.zeros((len(x), 2))
    if len(x) < 2:
        return out
    c = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    k = min(2, vt.shape[0])
    out[:, :k] = c @ vt[:k].T
    return out


@figure_helper
def soft_label_pca(soft: Sequence[Any], class_names: Sequence[str], dbm: Sequence[float | None], path: str | Path,
                   *, title: str = "") -> None:
    """One small panel per held-out class: its soft labels (n_k, N-1) projected on their 2-D PCA plane.

    All panels share one axis scale (the largest extent), so denser clusters look smaller.

    Args:
        soft: per held-out class, (n_k, N-1) soft labels.  class_names: (N,) names.
        dbm: (N,) DBM of each class (panel titles).  path: PNG destination.
    """
    proj = [_pca2(as_numpy(s).astype(float)) for s in soft]
    lim = max([float(np.abs(p).max()) for p in proj if p.size] + [1e-3]) * 1.1
    n = len(proj)
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(2.1 * cols, 2.1 * rows + 0.4))
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        if i >= n:
            ax.axis("off")
            continue
        p = proj[i]
        ax.scatter(p[:, 0], p[:, 1], s=5, alpha=0.6, color=f"C{i % 10}")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xticks([])
        ax.set_yticks([])
        d = dbm[i] if i < len(dbm) else None
        ax.set_title(f"held out {plain(class_names[i])}" + (f"\nDBM {d:.3f}" if d is not None else ""), fontsize=8)
    fig.suptitle(plain(title or "Held-out soft labels (PCA, shared scale)"), fontsize=9)
    fig.tight_layout()
    save(fig, path)


@figure_helper
def correlation_scatter(points: dict[str, dict[str, Any]], path: str | Path, *, attack: str,
                        stats: dict[str, dict[str, Any]]) -> None:
    """Metric (x) against attack success (y): one panel per metric.

    Args:
        points: metric name -> ``{"x": (M,), "y": (M,), "group": (M,) architecture names,
            "arch_x": (A,), "arch_y": (A,), "archs": (A,)}`` (per (architecture, class) points and the
            per-architecture means, drawn large).
        path: PNG destination.  attack: the attack's name (axis label).
        stats: metric name -> ``{"per_class": correlate(...), "per_architecture": correlate(...)}``.
    """
    names = list(points)
    fig, axes = subplots(1, len(names), figsize=(4.2 * len(names), 3.8))
    axes = np.atleast_1d(axes).ravel()
    for ax, name in zip(axes, names):
        p = points[name]
        archs = list(p["archs"])
        for i, a in enumerate(archs):
            sel = [j for j, g in enumerate(p["group"]) if g == a]
            xs = [p["x"][j] for j in sel]
            ys = [p["y"][j] for j in sel]
            ax.scatter(xs, ys, s=12, alpha=0.45, color=f"C{i % 10}")
            ax.scatter([p["arch_x"][i]], [p["arch_y"][i]], s=70, color=f"C{i % 10}", edgecolor="black",
                       label=plain(a), zorder=3)
        lines = []
        for level, label in (("per_class", "(arch, class)"), ("per_architecture", "arch means")):
            s = stats.get(name, {}).get(level, {})
            if s.get("pearson_r") is not None:
                lines.append(f"{label}: r={s['pearson_r']:.2f} (p={s['pearson_p']:.2g}), "
                             f"ρ={s['spearman_rho']:.2f} (p={s['spearman_p']:.2g}), n={s['n']}")
            else:
                lines.append(f"{label}: n={s.get('n', 0)}, {s.get('note', 'undefined')}")
        ax.set_title("\n".join(lines), fontsize=7)
        ax.set_xlabel(plain(name))
        ax.set_ylabel(f"{plain(attack)} success rate (full model)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    save(fig, path)
