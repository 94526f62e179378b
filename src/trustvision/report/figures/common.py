"""Shared helpers of the report's figure modules: pyplot-free matplotlib, tensor -> NumPy, labels.

Figures are built with the object-oriented ``matplotlib.figure.Figure`` API on an Agg canvas, not
``pyplot``: nothing touches the global backend or pyplot's figure registry, so the helpers work
headless, leak no open figures and leave a caller's notebook backend alone.  DPI is kept modest
(:data:`DPI` = 100) so a self-contained ``report.html`` that embeds the files stays small.

User strings are never interpreted: every string that comes from the user (class labels, model,
data and attack names, titles) passes through :func:`plain`, which escapes ``$`` so matplotlib's
mathtext never parses it (``$\\frac{$`` is drawn as typed instead of crashing the figure), and every
public figure helper is wrapped by :func:`figure_helper`, which draws with ``text.usetex`` off whatever
the caller's rcParams say (no LaTeX is run on a label).  Rich markup and emoji codes (``[bold]``,
``:boom:``) mean nothing to matplotlib and are drawn as typed.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.text import Text

DPI = 100
SAFE_RC = {"text.usetex": False}
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["DPI", "as_numpy", "figure_helper", "plain", "save", "subplots", "to_image", "short_label",
           "wrap_title", "pick_examples", "legend_outside", "percent_axis"]


def plain(text: Any) -> str:
    """``str(text)`` made literal for matplotlib: every ``$`` escaped, so no mathtext is parsed."""
    return str(text).replace("$", r"\$")


def figure_helper(fn: F) -> F:
    """Decorate a public figure helper: it runs with ``text.usetex`` off (restored afterwards)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(SAFE_RC):
            return fn(*args, **kwargs)
    wrapper.safe_text = True                      # type: ignore[attr-defined]  (checked by the tests)
    return wrapper                                # type: ignore[return-value]


def as_numpy(a: Any) -> np.ndarray:
    """Any tensor / array / list -> NumPy array on the CPU (float tensors stay float)."""
    if hasattr(a, "detach"):                      # torch.Tensor (possibly on a GPU or bf16)
        a = a.detach().cpu()
        if a.is_floating_point():
            a = a.float()
        return a.numpy()
    return np.asarray(a)


def save(fig: MplFigure, path: str | Path) -> None:
    """Write ``fig`` to ``path`` as PNG (parent folders created); the figure is then garbage."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for text in fig.findobj(Text):                # belt and braces: no text is ever sent to LaTeX
        text.set_usetex(False)
    with matplotlib.rc_context(SAFE_RC):
        fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight")


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float]) -> tuple[MplFigure, Any]:
    """A pyplot-free ``plt.subplots``: a Figure on an Agg canvas and its axes.

    One axes object for (1, 1); otherwise a (nrows, ncols) array of axes (never squeezed).
    """
    fig = MplFigure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False) if (nrows, ncols) != (1, 1) else fig.subplots()


def to_image(t: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) or (H, W, 3) for ``imshow``."""
    t = np.clip(t, 0.0, 1.0)
    if t.shape[0] == 1:
        return t[0]
    return np.transpose(t[:3], (1, 2, 0))


def short_label(labels: Sequence[str], k: int, width: int = 18) -> str:
    """Class name for index ``k`` (the index itself when unnamed), cut to ``width`` characters, :func:`plain`."""
    name = str(labels[k]) if 0 <= k < len(labels) else str(k)
    return plain(name if len(name) <= width else name[: width - 1] + "…")


def wrap_title(text: str, width: int = 30) -> str:
    """Break a "true A → pred B (p)" title before the arrow when it would overflow its panel."""
    return text.replace(" → ", "\n→ ") if len(text) > width else text


def pick_examples(y: Any, fooled: Any, k: int) -> np.ndarray:
    """Indices of at most ``k`` examples to show: fooled ones first, spread over the classes.

    Round-robin over the classes: one fooled image of each class (in class order), then a second fooled
    image of each class, ..., then the images that were not fooled, in the same way.  Ties keep the data
    order, so the choice is deterministic.

    Args:
        y: (N,) integer class of each candidate (true label or clean prediction).
        fooled: (N,) bool, the attack changed the prediction.
        k: number of examples wanted.
    Returns:
        (min(k, N),) int64 indices into the candidates.
    """
    y = as_numpy(y).astype(np.int64).reshape(-1)
    f = as_numpy(fooled).astype(bool).reshape(-1)
    n = len(y)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    group = np.where(f, 0, 1)
    order = np.lexsort((np.arange(n), y, group))              # by group, class, position
    key = group[order] * (int(y.max()) - int(y.min()) + 1) + (y[order] - int(y.min()))
    starts = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))   # position within (group, class)
    final = order[np.lexsort((y[order], rank, group[order]))]  # by group, round, class
    return final[:k].astype(np.int64)


def legend_outside(ax: Any, **kwargs: Any) -> Any:
    """A legend to the right of ``ax``, outside the plotting area, so that it never hides data."""
    kwargs.setdefault("fontsize", 8)
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def percent_axis(ax: Any, axis: str = "y") -> None:
    """Show a [0, 1] share on ``axis`` as percentages (0.5 -> 50 %), as everywhere in the report."""
    from matplotlib.ticker import PercentFormatter
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(PercentFormatter(1.0, decimals=0, symbol=" %"))
