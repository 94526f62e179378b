"""The headline of a ``results.json`` document: the verdict a reader sees before any number.

:func:`headline` reads a results dictionary (written by :func:`trustvision.audit` or any command that
builds it with :func:`trustvision.results.envelope`) and returns, as plain JSON:

* ``gates``: PASS/FAIL of each ``--fail-under`` gate (``metric``, ``value``, ``threshold``, ``passed``);
* ``robust``: the worst-case robust accuracy (every attack failed on the image) at each budget asked,
  per norm, as ``{"norm", "eps", "accuracy", "n"}`` (``n``: all evaluated images, the denominator);
* ``flags``: the number of ``error`` / ``warning`` / ``info`` soundness flags, and ``failing``: the flags
  at or above the ``--fail-on`` level (``error`` by default, ``warning``, or ``none``);
* ``sections``: ``[name, sentence]`` for every other section present (UAP fooling rate vs its random
  control, deletion/insertion AUC vs a random map, certified accuracy at the radii asked, anomaly image
  AUROC, segmentation mIoU ...), and ``numbers``: the same values as ``{section: {key: value}}``;
* ``passed`` (every gate passed and no flag at or above ``fail_on``), ``exit_code`` (0 or 1) and one
  ``sentence`` saying whether the model passed and what its worst case is at the largest budget asked.

Shares are written as percentages with their denominators ("61.5 % (123 of 200 images)"); results.json
keeps fractions.  Pure function of the dictionary: nothing is run.  :func:`headline_markdown` writes the
same content as a short Markdown summary (``--summary-md``, for CI comments).
"""
from __future__ import annotations

import math
from typing import Any

from .report.labels import budget, norm_name, pct, pct_of

__all__ = ["FAIL_ON", "headline", "headline_markdown", "check_fail_on"]

FAIL_ON = ("error", "warning", "none")
_RANK = {"info": 0, "warning": 1, "error": 2}


def check_fail_on(level: Any) -> str:
    """``level`` if it is one of :data:`FAIL_ON`, else a one-line :class:`~trustvision.errors.TrustVisionError`."""
    from .errors import TrustVisionError
    if level not in FAIL_ON:
        raise TrustVisionError(f"--fail-on must be one of {', '.join(FAIL_ON)}, got {level!r}")
    return level


def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _eps(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _flags(sections: dict) -> list[dict]:
    """Every flag as ``{section, code, severity, message}``."""
    return [{"section": name, "code": f.get("code"), "severity": f.get("severity"), "message": f.get("message")}
            for name, sec in sections.items() for f in _d(sec).get("flags", []) or [] if isinstance(f, dict)]


def _robust(results: dict) -> list[dict]:
    """Worst-case robust accuracy at every non-zero budget asked, per norm (denominator: all images)."""
    rob = _d(_d(_d(results.get("sections")).get("robustness")).get("metrics"))
    n = rob.get("n_images") or _d(results.get("data")).get("n")
    out = []
    for norm, curve in _d(rob.get("worst_case_robust_accuracy")).items():
        for eps, acc in sorted(_d(curve).items(), key=lambda kv: _eps(kv[0]) or 0.0):
            if (_eps(eps) or 0.0) > 0:
                out.append({"norm": norm, "eps": _eps(eps), "accuracy": _num(acc), "n": n})
    for norm, curve in _d(_d(rob.get("eot")).get("robust_accuracy_eot")).items():
        for eps, acc in sorted(_d(curve).items(), key=lambda kv: _eps(kv[0]) or 0.0):
            if (_eps(eps) or 0.0) > 0:
                out.append({"norm": norm, "eps": _eps(eps), "accuracy": _num(acc), "n": n,
                            "under": "transformation (EOT)"})
    return out


def _f3(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.3f}"


def _uap(m: dict) -> tuple[str, dict]:
    key = "fooling_rate" if "fooling_rate" in m else "targeted_success"
    ctrl = m.get("best_control")
    words = "fooling rate" if key == "fooling_rate" else "targeted success"
    return (f"UAP {words} {pct_of(m.get(key), m.get('n_eval'))} vs {pct(ctrl)} for the strongest random "
            "control of the same norm", {key: m.get(key), "best_control": ctrl, "n": m.get("n_eval")})


def _explain(m: dict) -> tuple[str, dict]:
    keys = ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc")
    return (f"deletion AUC {_f3(m.get('deletion_auc'))} vs {_f3(m.get('random_deletion_auc'))} for a random map "
            f"(lower is better), insertion AUC {_f3(m.get('insertion_auc'))} vs "
            f"{_f3(m.get('random_insertion_auc'))} (higher is better), on {m.get('faithfulness_images', '?')} images",
            {**{k: m.get(k) for k in keys}, "n": m.get("faithfulness_images")})


def _certify(m: dict) -> tuple[str, dict]:
    curve = sorted(((_eps(r), a) for r, a in _d(m.get("certified_accuracy")).items() if _eps(r) is not None))
    radii = ", ".join(f"{pct(a)} at r = {budget(r)}" for r, a in curve)
    return (f"certified accuracy (L2, randomized smoothing) {radii}, of {m.get('n_images', '?')} images",
            {"certified_accuracy": {str(r): a for r, a in curve}, "n": m.get("n_images")})


def _anomaly(m: dict) -> tuple[str, dict]:
    per = {k: v.get("image_auroc") for k, v in m.items() if isinstance(v, dict) and "image_auroc" in v}
    text = ", ".join(f"{_f3(a)} ({k})" for k, a in per.items())
    return f"image AUROC {text} (1 = every defective image ranked above every good one, 0.5 = chance)", \
        {"image_auroc": per}


def _segmentation(m: dict) -> tuple[str, dict]:
    return (f"mIoU {_f3(m.get('miou'))} on {m.get('n_images', '?')} images (boundary F1 {_f3(m.get('boundary_f1'))})",
            {"miou": m.get("miou"), "boundary_f1": m.get("boundary_f1"), "n": m.get("n_images")})


def _corruptions(m: dict) -> tuple[str, dict]:
    text = f"mean accuracy under corruptions {pct_of(m.get('mean_corruption_accuracy'), m.get('n_images'))}"
    if _num(m.get("mce")) is not None:
        text += f", mCE {_f3(m.get('mce'))} vs the baseline"
    return text, {k: m.get(k) for k in ("mean_corruption_accuracy", "mce", "relative_mce", "n_images") if k in m}


def _patch(m: dict) -> tuple[str, dict]:
    ctrl = max((v for v in _d(m.get("controls")).values() if _num(v) is not None), default=None)
    return (f"patch {m.get('kind', 'success')} {pct_of(m.get('success'), m.get('n_heldout'))} on held-out images "
            f"vs {pct(ctrl)} for the strongest control", {"success": m.get("success"), "best_control": ctrl,
                                                          "n": m.get("n_heldout")})


def _section_line(name: str, m: dict) -> tuple[str, dict] | None:
    """The headline sentence and numbers of a section other than clean/robustness (None: none known)."""
    if name == "uap" and ("fooling_rate" in m or "targeted_success" in m):
        return _uap(m)
    if name == "explain" and "deletion_auc" in m:
        return _explain(m)
    if name == "certify" and "certified_accuracy" in m:
        return _certify(m)
    if name == "anomaly":
        return _anomaly(m)
    if name == "corruptions" and "mean_corruption_accuracy" in m:
        return _corruptions(m)
    if name == "patch" and "success" in m:
        return _patch(m)
    if "miou" in m:
        return _segmentation(m)
    return None


def headline(results: dict, *, fail_on: str | None = None) -> dict:
    """The verdict of ``results`` (a results.json dictionary); see the module docstring for the keys.

    ``fail_on``: the lowest flag severity that fails the run (``"error"``, ``"warning"`` or ``"none"``);
    by default ``results["config"]["fail_on"]``, else ``"error"``.
    """
    fail_on = check_fail_on(fail_on or _d(results.get("config")).get("fail_on") or "error")
    sections = _d(results.get("sections"))
    gates = [{k: g.get(k) for k in ("gate", "metric", "op", "threshold", "value", "passed")}
             for g in results.get("gates", []) or [] if isinstance(g, dict)]
    flags = _flags(sections)
    counts = {s: sum(1 for f in flags if f["severity"] == s) for s in ("error", "warning", "info")}
    failing = [] if fail_on == "none" else [
        f for f in flags if _RANK.get(f["severity"], 0) >= _RANK[fail_on]]
    lines, numbers = [], {}
    for name, sec in sections.items():
        if name in ("clean", "robustness"):
            continue
        got = _section_line(name, _d(_d(sec).get("metrics")))
        if got is not None:
            lines.append([name, got[0]])
            numbers[name] = got[1]
    clean = _d(_d(sections.get("clean")).get("metrics"))
    n = clean.get("n_images") or _d(results.get("data")).get("n")
    passed = all(bool(g.get("passed")) for g in gates) and not failing
    out = {"passed": passed, "exit_code": 0 if passed else 1, "fail_on": fail_on, "n_images": n,
           "clean_accuracy": _num(clean.get("clean_accuracy")),
           "majority_class_rate": _num(clean.get("majority_class_rate")),
           "gates": gates, "robust": _robust(results), "flags": counts,
           "failing": [{k: f[k] for k in ("section", "code", "severity")} for f in failing],
           "sections": lines, "numbers": numbers}
    out["sentence"] = _sentence(out)
    return out


def _largest(robust: list[dict]) -> list[dict]:
    """The worst case at the largest budget asked, per norm (digital, then under transformation)."""
    last: dict[tuple, dict] = {}
    for r in robust:
        key = (r["norm"], r.get("under"))
        if key not in last or (r["eps"] or 0) >= (last[key]["eps"] or 0):
            last[key] = r
    return list(last.values())


def robust_phrase(r: dict) -> str:
    """``"0.0 % (0 of 200 images) at L∞ ε = 0.3"`` for one entry of ``headline(...)["robust"]``."""
    under = f" under {r['under']}" if r.get("under") else ""
    return f"{pct_of(r.get('accuracy'), r.get('n'))} at {norm_name(r.get('norm'))} ε = {budget(r.get('eps'))}{under}"


def _sentence(h: dict) -> str:
    """One sentence: passed or not and why, then the worst case at the largest budget asked per norm."""
    failed = [g for g in h["gates"] if not g.get("passed")]
    why = []
    if failed:
        why.append(f"{len(failed)} of {len(h['gates'])} gate(s) failed ("
                   + ", ".join(f"{g.get('metric')} = {_gate_value(g.get('metric'), g.get('value'))} < "
                               f"{_gate_value(g.get('metric'), g.get('threshold'))}" for g in failed) + ")")
    elif h["gates"]:
        why.append(f"all {len(h['gates'])} gate(s) passed")
    else:
        why.append("no --fail-under gate set")
    if h["failing"]:
        codes = sorted({f["code"] for f in h["failing"]})
        why.append(f"{len(h['failing'])} soundness flag(s) at or above --fail-on {h['fail_on']} "
                   f"({', '.join(codes)})")
    else:
        counted = ", ".join(f"{h['flags'][s]} {s}" for s in ("error", "warning"))
        policy = "flags do not fail the run (--fail-on none)" if h["fail_on"] == "none" else \
            f"no flag at or above --fail-on {h['fail_on']}"
        why.append(f"{policy} ({counted})")
    head = "PASSED" if h["passed"] else "FAILED"
    worst = "; ".join(robust_phrase(r) for r in _largest(h["robust"]))
    tail = f". Worst-case robust accuracy (every attack failed): {worst}." if worst else "."
    return f"{head}: {'; '.join(why)}{tail}"


def _gate_value(metric: Any, v: Any) -> str:
    x = _num(v)
    if x is None:
        return "—"
    shares = ("accuracy", "rate", "success")
    return pct(x) if any(s in str(metric) for s in shares) and -1e-9 <= x <= 1 + 1e-9 else f"{x:.4g}"


def headline_markdown(results: dict, h: dict | None = None) -> str:
    """A short Markdown summary of ``results`` for a CI comment: verdict, gates, worst case, flags, sections."""
    h = h or _d(results.get("headline")) or headline(results)
    model = _d(results.get("model")).get("name", "model")
    lines = [f"### trustvision: {'✅ PASSED' if h['passed'] else '❌ FAILED'} — {model}", "", h["sentence"], ""]
    if h.get("clean_accuracy") is not None:
        lines.append(f"- clean accuracy: {pct_of(h['clean_accuracy'], h.get('n_images'))}")
    for r in h.get("robust", []):
        lines.append(f"- worst-case robust accuracy: {robust_phrase(r)}")
    for name, text in h.get("sections", []):
        lines.append(f"- {name}: {text}")
    if h.get("gates"):
        lines += ["", "| gate | value | threshold | result |", "|---|---|---|---|"]
        for g in h["gates"]:
            m = g.get("metric")
            lines.append(f"| `{m}` | {_gate_value(m, g.get('value'))} | >= {_gate_value(m, g.get('threshold'))} | "
                         f"{'PASS' if g.get('passed') else 'FAIL'} |")
    flags = _flags(_d(results.get("sections")))
    fl = h.get("flags", {})
    lines += ["", f"Soundness flags: {fl.get('error', 0)} error, {fl.get('warning', 0)} warning, "
                  f"{fl.get('info', 0)} info (fail on: {h.get('fail_on')})"]
    for f in flags:
        if f["severity"] in ("error", "warning"):
            lines.append(f"- **{f['severity']}** `{f['code']}` ({f['section']}): {f['message']}")
    return "\n".join(lines) + "\n"
