"""Gates and budgets of an audit, checked before any compute and evaluated after it.

* :func:`summary_metrics`: the flat metrics of an audit (``clean_accuracy``, ``robust_accuracy_<norm>@<eps>``,
  ``certified_accuracy@<r>`` ...) that the terminal, the report and ``--fail-under`` gates read;
* :func:`expected_metrics`: the same keys predicted from the configuration alone, so that
  :func:`check_gates` refuses a gate with bad syntax or an unknown metric in well under a second, before
  the model is even loaded;
* :func:`check_budgets`: budgets outside their valid range are refused with the range named (L-inf in
  [0, 1]; L2 in [0, sqrt(C*H*W)] and L0 in [0, H*W] once the image shape is known);
* :func:`evaluate_gates`: PASS/FAIL of each ``METRIC=VALUE`` gate (metric >= value) on the summary.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import TrustVisionError
from .evaluation.sections.robustness import BUDGET_NORMS
from .parsing import parse_number
from .results import SectionResult

if TYPE_CHECKING:
    from .auditor import AuditConfig

__all__ = ["check_budgets", "check_gates", "evaluate_gates", "expected_metrics", "parse_gate", "summary_metrics"]

_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:@[\w./]+)?)\s*=\s*([-+0-9.eE/]+)\s*$")


def summary_metrics(sections: dict[str, SectionResult]) -> dict[str, float]:
    """Flat metrics for the terminal, the report header and ``--fail-under`` gates.

    Keys: ``clean_accuracy`` and ``robust_accuracy_<norm>@<eps>`` (worst case across attacks); with ``--eot``,
    ``robust_accuracy_eot_<norm>@<eps>`` (worst case under freshly drawn transformations).
    """
    out: dict[str, float] = {}
    if "clean" in sections:
        out["clean_accuracy"] = sections["clean"].metrics["clean_accuracy"]
    if "robustness" in sections:
        for norm, curve in sections["robustness"].metrics.get("worst_case_robust_accuracy", {}).items():
            for eps, acc in curve.items():
                if float(eps) > 0:
                    out[f"robust_accuracy_{norm}@{float(eps):.6g}"] = acc
        eot = sections["robustness"].metrics.get("eot", {}).get("robust_accuracy_eot", {})
        for norm, curve in eot.items():                 # --eot: worst case under fresh transformations
            for eps, acc in curve.items():
                if float(eps) > 0:
                    out[f"robust_accuracy_eot_{norm}@{float(eps):.6g}"] = acc
    if "corruptions" in sections:                       # mean over corruptions x severities; mCE with a baseline
        m = sections["corruptions"].metrics
        out.update({k: m[k] for k in ("mean_corruption_accuracy", "mce", "relative_mce") if k in m})
    if "certify" in sections:
        for r, acc in sections["certify"].metrics.get("certified_accuracy", {}).items():
            out[f"certified_accuracy@{float(r):.6g}"] = acc
    return out


def parse_gate(gate: str) -> tuple[str, float]:
    """``"robust_accuracy_linf@8/255=0.4"`` -> ``("robust_accuracy_linf@8/255", 0.4)``; bad syntax: a one-line error."""
    m = _GATE.match(gate) if isinstance(gate, str) else None
    if not m:
        raise TrustVisionError(f"--fail-under {gate!r}: expected METRIC=VALUE, e.g. robust_accuracy_linf@8/255=0.4")
    try:
        return m.group(1), parse_number(m.group(2))
    except (ValueError, ZeroDivisionError):
        raise TrustVisionError(f"--fail-under {gate!r}: {m.group(2)!r} is not a number") from None


def _gate_key(name: str, keys: list[str]) -> str | None:
    """The summary key among ``keys`` that gate metric ``name`` means (``@eps`` compared as numbers), or None."""
    if "@" not in name:
        return name if name in keys else None
    base, eps = name.split("@", 1)
    try:
        want = parse_number(eps)
    except (ValueError, ZeroDivisionError):
        return None
    return next((k for k in keys if k.startswith(base + "@") and _close(k.split("@", 1)[1], want)), None)


def _close(text: str, want: float) -> bool:
    try:
        return abs(float(text) - want) < 1e-6
    except ValueError:
        return False


def expected_metrics(cfg: "AuditConfig") -> list[str]:
    """The summary keys an audit with ``cfg`` will produce (see :func:`summary_metrics`), known before any compute:
    what ``--fail-under`` gates may name."""
    keys = ["clean_accuracy"] if "clean" in cfg.sections else []
    key = lambda stem, e: f"{stem}@{float(e):.6g}"                      # noqa: E731  (as summary_metrics)
    if "robustness" in cfg.sections:
        rob = cfg.robustness
        attacks = [rob.build(a) for a in rob.attacks]
        norms = [n for n in BUDGET_NORMS if any(a.norm == n for a in attacks)]
        keys += [key(f"robust_accuracy_{n}", e) for n in norms for e in rob.budgets(n) if e > 0]
        if rob.eot:
            eot = [n for n in BUDGET_NORMS if any(a.norm == n and a.uses_gradients and not a.minimal for a in attacks)]
            keys += [key(f"robust_accuracy_eot_{n}", e) for n in eot for e in rob.budgets(n) if e > 0]
    if "corruptions" in cfg.sections:
        keys.append("mean_corruption_accuracy")
        keys += ["mce", "relative_mce"] if cfg.corruptions.baseline else []
    if "certify" in cfg.sections:
        keys += [key("certified_accuracy", r) for r in cfg.certify.radius_grid()]
    return keys


def check_gates(gates: list[str], available: list[str]) -> None:
    """Refuse, before any compute, a gate with bad syntax or naming a metric the audit will not produce."""
    for g in gates:
        name, _ = parse_gate(g)
        if _gate_key(name, available) is None:
            raise TrustVisionError(f"--fail-under {g!r}: unknown metric {name!r}; this audit produces: "
                                   f"{', '.join(available) or 'no gateable metric'}")


def check_budgets(cfg: "AuditConfig", shape: tuple[int, ...] | None = None) -> None:
    """Refuse budgets outside their valid range, naming it: L-inf in [0, 1] (pixels lie in [0, 1]); with the
    image ``shape`` (C, H, W), L2 in [0, sqrt(C*H*W)] (the largest possible distance) and L0 in [0, H*W] pixels."""
    limits = {"linf": (1.0, "1 (pixels lie in [0, 1])")}
    if shape is not None:
        c, h, w = shape[-3:]
        limits["l2"] = ((c * h * w) ** 0.5, f"sqrt(C*H*W) = sqrt({c}*{h}*{w}) = {(c * h * w) ** 0.5:.4g}")
        limits["l0"] = (float(h * w), f"H*W = {h}*{w} = {h * w} pixels")
    for norm, (top, words) in limits.items():
        bad = [e for e in cfg.robustness.budgets(norm) if not 0 <= e <= top]
        if bad and "robustness" in cfg.sections:
            raise TrustVisionError(f"--eps-{norm} {bad[0]:g}: {norm} budgets must lie in [0, {words}]")


def evaluate_gates(gates: list[str], summary: dict[str, float]) -> list[dict]:
    """Check ``METRIC=VALUE`` gates (metric must be >= value).  ``@eps`` may be a fraction like ``8/255``."""
    results = []
    for g in gates:
        name, threshold = parse_gate(g)
        key = _gate_key(name, list(summary))
        if key is None:
            raise TrustVisionError(f"--fail-under {g!r}: unknown metric {name!r}; available: {', '.join(summary)}")
        value = summary[key]
        results.append({"gate": g, "metric": key, "op": ">=", "threshold": threshold, "value": value,
                        "passed": value is not None and value >= threshold})
    return results
