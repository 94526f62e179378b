"""One way to write numbers in the report: budgets, norms, percentages and metric keys.

Tables, metric keys and figures of ``report.html`` all format through these helpers, so that the
budget 8/255 reads ``0.0314 (8/255)`` in a table header, in a summary key
(``robust_accuracy_linf@0.0313725``) and on a figure alike, and every share is a percentage
(``96.0 %``), with its denominator where it is known (``96.0 % (96 of 100 images)``).
Pure string functions: no matplotlib, no torch.
"""
from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["NORM_NAMES", "norm_name", "budget", "budget_short", "pct", "pct_of", "metric_label", "column_label",
           "is_share", "relabel", "PIXEL_LEVELS"]

PIXEL_LEVELS = 255
NORM_NAMES = {"linf": "L∞", "l2": "L2", "l1": "L1", "l0": "L0"}
_SHARE = re.compile(r"(accura|chance|majority|control|(^|[_ ])rate($|[_ ])|fooling|success|(^|[_ ])share)", re.I)
_NOT_SHARE = re.compile(r"(auc|p_value|p-value|cramer|silhouette|seconds|norm|zeta|eps|iou|queries|images|count)",
                        re.I)
_KEY = re.compile(r"^(?P<stem>[A-Za-z_][\w.]*?)(?:_(?P<norm>linf|l2|l1|l0))?@(?P<eps>[-+0-9.eE/]+)$")


def norm_name(norm: Any) -> str:
    """``"linf"`` -> ``"L∞"``, ``"l2"`` -> ``"L2"``; other names unchanged."""
    return NORM_NAMES.get(str(norm).lower(), str(norm))


def _pixel_fraction(x: float) -> int | None:
    """k when ``x`` is k/255 (k = 1..254), also when rounded to 4 significant digits (``0.03137``), but not a
    one- or two-digit decimal (0.2 = 51/255 stays 0.2); else None."""
    if not (0 < x < 1) or float(f"{x:.2g}") == x:
        return None
    k = round(x * PIXEL_LEVELS)
    return k if 0 < k < PIXEL_LEVELS and abs(x * PIXEL_LEVELS - k) <= 1e-3 + 5e-4 * k else None


def budget(x: Any) -> str:
    """A budget ε: ``0.0313725`` -> ``"0.0314 (8/255)"``, ``0.5`` -> ``"0.5"``, ``3.0`` -> ``"3"``."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return str(v)
    k = _pixel_fraction(v)
    return f"{v:.3g} ({k}/{PIXEL_LEVELS})" if k is not None else f"{v:.4g}"


def budget_short(x: Any) -> str:
    """A budget for a crowded place (axis ticks): ``"8/255"`` for k/255, else ``"0.05"``."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    k = _pixel_fraction(v) if math.isfinite(v) else None
    return f"{k}/{PIXEL_LEVELS}" if k is not None else f"{v:.3g}"


def pct(x: Any, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage: ``0.9653`` -> ``"96.5 %"``; None/NaN -> ``"—"``."""
    if x is None or isinstance(x, bool):
        return "—"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "—" if not math.isfinite(v) else f"{100 * v:.{digits}f} %"


def pct_of(x: Any, n: Any, what: str = "images") -> str:
    """A share with its denominator: ``pct_of(0.96, 100)`` -> ``"96.0 % (96 of 100 images)"``."""
    p = pct(x)
    try:
        n_int = int(n)
        v = float(x)
    except (TypeError, ValueError):
        return p
    if n_int <= 0 or not math.isfinite(v):
        return p
    return f"{p} ({round(v * n_int)} of {n_int} {what})"


def is_share(key: Any, value: Any) -> bool:
    """Whether metric ``key`` with ``value`` is a share shown as a percentage (accuracy, rate, success...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, int):
        return False
    k = str(key)
    return bool(_SHARE.search(k)) and not _NOT_SHARE.search(k.split("@")[0]) and -1e-9 <= value <= 1 + 1e-9


def metric_label(key: Any) -> str:
    """A summary/gate key for people: ``robust_accuracy_linf@0.0313725`` -> ``"robust accuracy, L∞ ε = 0.0314 (8/255)"``.

    Keys without a budget lose their underscores only (``clean_accuracy`` -> ``"clean accuracy"``); the
    machine key stays in results.json and in ``--fail-under``.
    """
    k = str(key)
    m = _KEY.match(k)
    if not m:
        return k.replace("_", " ")
    stem = m.group("stem").replace("_", " ")
    eps = budget(m.group("eps"))
    if m.group("norm"):
        return f"{stem}, {norm_name(m.group('norm'))} ε = {eps}"
    return f"{stem} @ {eps}"


def column_label(header: Any) -> str:
    """A table header ``eps=0.03137`` -> ``"ε = 0.0314 (8/255)"``; other headers unchanged."""
    h = str(header)
    m = re.fullmatch(r"(eps|ε|radius|r)\s*=\s*([-+0-9.eE]+)", h)
    if not m:
        return h.replace("_", " ") if re.fullmatch(r"[a-z][a-z0-9_]*", h) else h
    name = "ε" if m.group(1) in ("eps", "ε") else m.group(1)
    return f"{name} = {budget(m.group(2))}"


_EPS_IN_TEXT = re.compile(r"\b(?:eps|ε)\s*=\s*([0-9][0-9.eE+-]*)")
_NORM_IN_TEXT = re.compile(r"(?<![\w-])(linf|l2|l0)(?![\w-])")


def relabel(text: Any) -> str:
    """Budgets and norm names in a title written as everywhere else: ``"pgd (linf, eps=0.03137)"`` ->
    ``"pgd (L∞, ε = 0.0314 (8/255))"``.  Attack names such as ``pgd-l2`` are left as typed."""
    t = _EPS_IN_TEXT.sub(lambda m: f"ε = {budget(m.group(1))}", str(text))
    return _NORM_IN_TEXT.sub(lambda m: norm_name(m.group(1)), t)
