"""The headline block at the top of ``report.html``: the verdict a reader sees before any section.

It shows, in percentages with their denominators: PASS/FAIL of each ``--fail-under`` gate, the
worst-case robust accuracy at the budgets asked, the number of error / warning soundness flags, and
each other section's headline number (UAP fooling rate vs its random control, deletion / insertion
AUC vs a random map, certified accuracy, anomaly AUROC, mIoU...).  Its content is
``results["headline"]`` (written by :func:`trustvision.headline.headline`); for a results.json
written before that key existed, the same rows are read off the gates, summary and sections.
Pure HTML from the results dictionary: nothing is run or recomputed from images.
"""
from __future__ import annotations

import html
from typing import Any

from .labels import budget, is_share, metric_label, norm_name, pct, pct_of

__all__ = ["headline_block", "derive_headline"]


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _d(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _section_lines(sections: dict) -> list[tuple[str, str]]:
    """(section, sentence) headline numbers of the sections other than clean/robustness."""
    out = []
    clean = _d(_d(sections.get("clean")).get("metrics"))
    if _num(clean.get("clean_accuracy")) is not None:
        base = (f"; a model answering the majority class alone scores {pct(clean['majority_class_rate'])}"
                if _num(clean.get("majority_class_rate")) is not None else "")
        out.append(("clean", f"clean accuracy {pct_of(clean['clean_accuracy'], clean.get('n_images'))}{base}"))
    uap = _d(_d(sections.get("uap")).get("metrics"))
    if uap:
        key = "fooling_rate" if "fooling_rate" in uap else "targeted_success"
        ctrl = uap.get("best_control", max((v for v in _d(uap.get("controls")).values()
                                            if _num(v) is not None), default=None))
        out.append(("uap", f"UAP {key.replace('_', ' ')} {pct_of(uap.get(key), uap.get('n_eval'))} vs "
                           f"{pct(ctrl)} for a random perturbation of the same norm"))
    ex = _d(_d(sections.get("explain")).get("metrics"))
    if "deletion_auc" in ex:
        out.append(("explain", f"deletion AUC {_f(ex.get('deletion_auc'))} vs {_f(ex.get('random_deletion_auc'))} "
                               f"for a random map (lower is better), insertion AUC {_f(ex.get('insertion_auc'))} vs "
                               f"{_f(ex.get('random_insertion_auc'))} (higher is better), on "
                               f"{ex.get('faithfulness_images', '?')} images"))
    cert = _d(_d(sections.get("certify")).get("metrics"))
    if _d(cert.get("certified_accuracy")):
        radii = ", ".join(f"{pct(a)} at r = {budget(r)}" for r, a in _d(cert["certified_accuracy"]).items())
        out.append(("certify", f"certified accuracy (L2) {radii}, of {cert.get('n_images', '?')} images"))
    return out


def _f(x: Any) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.3f}"


def derive_headline(results: dict, counts: dict[str, int]) -> dict:
    """The headline rows read off a results dictionary (for files without ``results["headline"]``).

    Returns ``{"passed", "sentence", "gates": [{metric, value, threshold, passed}], "robust": [{norm, eps,
    accuracy, n}], "flags": {"error": n, "warning": n}, "sections": [(name, sentence)]}``.
    """
    sections = _d(results.get("sections"))
    gates = [g for g in results.get("gates", []) or [] if isinstance(g, dict)]
    rob = _d(_d(sections.get("robustness")).get("metrics"))
    n = rob.get("n_images") or _d(results.get("data")).get("n")
    robust = [{"norm": norm, "eps": eps, "accuracy": acc, "n": n}
              for norm, curve in _d(rob.get("worst_case_robust_accuracy")).items()
              for eps, acc in _d(curve).items() if (_num(_safe_float(eps)) or 0) > 0]
    failed = [g for g in gates if not g.get("passed")]
    passed = None if not gates and not counts.get("error") else not failed and not counts.get("error")
    return {"passed": passed, "sentence": None, "gates": gates, "robust": robust,
            "flags": {k: counts.get(k, 0) for k in ("error", "warning")}, "sections": _section_lines(sections)}


def _safe_float(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _sentence(h: dict) -> str:
    """One sentence: passed or not, and the worst case at the largest budget asked per norm."""
    if isinstance(h.get("sentence"), str) and h["sentence"]:
        return h["sentence"]
    gates = h.get("gates") or []
    failed = sum(1 for g in gates if not g.get("passed"))
    errors = h.get("flags", {}).get("error", 0)
    head = ("The model FAILED: " if h.get("passed") is False else "The model passed: " if h.get("passed")
            else "No gate was set: ")
    parts = [f"{failed} of {len(gates)} gate(s) failed" if gates else "no --fail-under gate"]
    parts.append(f"{errors} error-level soundness flag(s)")
    last: dict[str, dict] = {}
    for r in h.get("robust") or []:
        if (_safe_float(r.get("eps")) or 0) >= (_safe_float(last.get(r.get("norm"), {}).get("eps")) or 0):
            last[r.get("norm")] = r
    worst = "; ".join(f"worst-case robust accuracy {pct_of(r.get('accuracy'), r.get('n'))} at "
                      f"{norm_name(r.get('norm'))} ε = {budget(r.get('eps'))}" for r in last.values())
    return head + ", ".join(parts) + (f"; {worst}." if worst else ".")


def _merge(rows: dict, given: dict) -> dict:
    """The rows read off the results, with the verdict of ``results["headline"]`` where it gives one.

    Only plain, well-typed entries of ``given`` are taken (a sentence, a pass/fail bool, section lines as
    strings): a headline written by another version never breaks the page.
    """
    sentence = given.get("sentence") or given.get("verdict")
    if isinstance(sentence, str) and sentence:
        rows["sentence"] = sentence
    if isinstance(given.get("passed"), bool):
        rows["passed"] = given["passed"]
    robust = given.get("robust")
    if isinstance(robust, list) and all(isinstance(r, dict) and "norm" in r and "eps" in r for r in robust):
        rows["robust"] = robust                       # includes the rows under transformation (EOT)
    if all(isinstance(_d(given.get("flags")).get(k), int) for k in ("error", "warning")):
        rows["flags"] = given["flags"]
    lines = dict(rows["sections"])
    given_lines = given.get("sections")
    pairs = given_lines.items() if isinstance(given_lines, dict) else \
        [tuple(x) for x in given_lines if isinstance(x, (list, tuple)) and len(x) == 2] \
        if isinstance(given_lines, list) else []
    for name, v in pairs:
        text = v if isinstance(v, str) else _d(v).get("sentence") or _d(v).get("text")
        if isinstance(text, str) and text and name not in ("clean", "robustness"):
            lines[str(name)] = text
    rows["sections"] = list(lines.items())
    return rows


def headline_block(results: dict, counts: dict[str, int]) -> str:
    """The ``<section id="headline">`` HTML: verdict sentence, gates, worst case, flags, other sections."""
    h = _merge(derive_headline(results, counts), _d(results.get("headline")))
    state = "fail" if h.get("passed") is False else "pass" if h.get("passed") else "none"
    badge = {"fail": "FAIL", "pass": "PASS", "none": "NO GATES"}[state]
    rows = []
    n_all = _d(results.get("data")).get("n")
    for g in h.get("gates") or []:
        ok = bool(g.get("passed"))
        rows.append(f'<tr><td><span class="badge {"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span></td>'
                    f"<td>{_e(metric_label(g.get('metric', g.get('gate', '?'))))}</td>"
                    f"<td class=\"num\">{_e(_val(g.get('metric'), g.get('value'), n_all))}</td>"
                    f"<td>{_e(g.get('op', '>='))} {_e(_val(g.get('metric'), g.get('threshold')))}</td></tr>")
    by_norm: dict[tuple, list[dict]] = {}
    for r in h.get("robust") or []:
        by_norm.setdefault((str(r.get("norm")), r.get("under")), []).append(r)
    for (norm, under), rs in by_norm.items():
        n = rs[0].get("n")
        cells = " · ".join(f"ε = {budget(r.get('eps'))}: {pct(r.get('accuracy'))}" for r in rs)
        rows.append(f'<tr><td><span class="badge info">robust</span></td><td>worst-case robust accuracy '
                    f"({_e(norm_name(norm))}{', under ' + _e(under) if under else ''}), of "
                    f"{_e(n if n is not None else '?')} images: every attack failed"
                    f'</td><td colspan="2">{_e(cells)}</td></tr>')
    fl = _d(h.get("flags"))
    flag_text = ", ".join(f'<span class="badge {s}">{int(fl.get(s, 0) or 0)} {s}</span>' for s in ("error", "warning"))
    for name, text in h.get("sections") or []:
        rows.append(f'<tr><td><span class="badge info">{_e(name)}</span></td><td colspan="3">{_e(text)}</td></tr>')
    table = (f'<div class="scroll"><table class="headline"><tbody>{"".join(rows)}</tbody></table></div>'
             if rows else "")
    return (f'<section id="headline" class="box headline {state}"><h2 style="margin-top:0">'
            f'<span class="badge big {"pass" if state == "pass" else "fail" if state == "fail" else "info"}">'
            f"{badge}</span> Headline</h2><p class=\"verdict\">{_e(_sentence(h))}</p>"
            f'<p>Soundness flags: {flag_text} (<a href="#flags">list</a>)</p>{table}</section>')


def _val(metric: Any, v: Any, n: Any = None) -> str:
    """A gate value: a percentage for shares (with "k of N images" for accuracies over all N images)."""
    x = _num(v)
    if x is None:
        return "—"
    if not is_share(metric or "", x):
        return f"{x:.4g}"
    over_all = str(metric).startswith(("clean_accuracy", "robust_accuracy"))
    return pct_of(x, n) if over_all and n is not None else pct(x)
