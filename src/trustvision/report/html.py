"""Render ``results.json`` into ONE self-contained ``report.html``.

The report is a pure function of the results dictionary and the figure files
beside it: it never runs a model and never recomputes a metric.  The output
needs no server and no network: CSS is inlined (from ``templates/report.css``)
and every figure is embedded as a base64 ``data:`` URI.  The page contains no
JavaScript.

Safety: every string that comes from results.json (model and data names, class
labels, metric names, flag messages, table cells, figure titles and paths) is
HTML-escaped, and nothing else is done to it: this path uses no Rich console, so
markup (``[bold]``) and emoji codes (``:boom:``) are shown as typed, never
interpreted.  Figure paths must stay inside the output folder: a path that
escapes it, a missing file or a non-image file is shown as a visible notice
instead of being embedded.  Any key of the results may be missing.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from ..persist import digest, write_text_atomic

__all__ = ["render_report"]

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
_IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def _e(value: Any) -> str:
    """HTML-escape anything (quotes included) after ``str()``."""
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value: Any) -> str:
    """Format one value for display (not yet escaped): floats to 4 significant digits, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        items = [_fmt(v) for v in value[:12]]
        return "[" + ", ".join(items) + (", …" if len(value) > 12 else "") + "]"
    if isinstance(value, dict):
        return json.dumps(value, default=str)[:300]
    return str(value)


def _cell(value: Any) -> str:
    """A ``<td>``: numbers right-aligned, everything escaped."""
    num = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{_e(_fmt(value))}</td>' if num else f"<td>{_e(_fmt(value))}</td>"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict -> [("a / b / c", leaf)], keeping insertion order."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix} / {k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def _kv_table(pairs: Iterable[tuple[str, Any]], head: tuple[str, str] = ("metric", "value")) -> str:
    rows = "".join(f"<tr><th scope=\"row\">{_e(k)}</th>{_cell(v)}</tr>" for k, v in pairs)
    if not rows:
        return '<p class="muted">none</p>'
    return (f'<div class="scroll"><table><thead><tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list:
    return x if isinstance(x, list) else []


def _slug(name: str, used: set[str]) -> str:
    """A unique, safe HTML id for a section name."""
    base = "sec-" + (re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-") or "section")
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _severity(flag: dict) -> str:
    sev = str(flag.get("severity", "info")).lower()
    return sev if sev in SEVERITY_ORDER else "info"


# ------------------------------------------------------------------ pieces
def _header(results: dict) -> str:
    model, data = _dict(results.get("model")), _dict(results.get("data"))
    name = model.get("name") or "unnamed model"
    items = [
        ("model", f"{name} — {model.get('num_classes', '?')} classes, {model.get('channels', '?')} channel(s)"
                  + (f", input {model['input_size']}" if model.get("input_size") else "")),
        ("weights sha256", model.get("weights_sha256")),
        ("runtime", ", ".join(f"{k}={model[k]}" for k in ("device", "precision", "channels_last") if k in model)),
        ("data", f"{data.get('spec') or data.get('name') or '?'} — {data.get('n', '?')} images, "
                 f"{data.get('num_classes', '?')} classes"),
        ("data pixels", f"stored as {data['source_dtype']}, scaled to [0, 1]" if data.get("source_dtype") else None),
        ("data sha256", data.get("sha256")),
        ("created", results.get("created")),
        ("trustvision", f"{results.get('trustvision_version', '?')} (results schema "
                        f"{results.get('schema_version', '?')})"),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in items if v not in (None, ""))
    return (f'<header class="top"><h1><span class="brand">trustvision</span> report: {_e(name)}</h1>'
            f'<dl class="meta">{dl}</dl></header>')


def _summary(results: dict, flags: list[tuple[str, str, dict]]) -> str:
    summary = _dict(results.get("summary"))
    gates = [g for g in _list(results.get("gates")) if isinstance(g, dict)]
    counts = {s: sum(1 for _, _, f in flags if _severity(f) == s) for s in SEVERITY_ORDER}
    parts = ['<section id="summary" class="box"><h2 style="margin-top:0">Summary</h2>']
    tally = ", ".join(f'<span class="badge {s}">{n} {s}</span>' for s, n in counts.items() if n)
    parts.append(f'<p class="verdict">Soundness flags: {tally or "<span class=none>none raised</span>"}</p>')
    parts.append(_kv_table(_flatten(summary)) if summary else '<p class="muted">No summary metrics.</p>')
    if gates:
        failed = sum(1 for g in gates if not g.get("passed"))
        verdict = (f'<span class="badge fail">fail</span> {failed} of {len(gates)} gate(s) failed' if failed
                   else f'<span class="badge pass">pass</span> all {len(gates)} gate(s) passed')
        rows = "".join(
            f"<tr><td>{_e(g.get('metric', g.get('gate', '?')))}</td>{_cell(g.get('value'))}"
            f"<td>{_e(g.get('op', '>='))} {_e(_fmt(g.get('threshold')))}</td>"
            f"<td><span class=\"badge {'pass' if g.get('passed') else 'fail'}\">"
            f"{'pass' if g.get('passed') else 'fail'}</span></td></tr>" for g in gates)
        parts.append(f'<h3>Gates</h3><p class="verdict">{verdict}</p><div class="scroll"><table><thead><tr>'
                     f"<th>metric</th><th>value</th><th>required</th><th>result</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table></div>")
    parts.append("</section>")
    return "".join(parts)


def _flag_items(flags: list[tuple[str, str, dict]], *, where: bool) -> str:
    if not flags:
        return '<p class="none">No soundness flags were raised.</p>'
    items = []
    for sec_name, slug, f in sorted(flags, key=lambda t: SEVERITY_ORDER[_severity(t[2])]):
        sev = _severity(f)
        loc = f' <span class="where">in <a href="#{slug}">{_e(sec_name)}</a></span>' if where else ""
        ev = _dict(f.get("evidence"))
        evidence = (f"<details><summary>evidence</summary><pre>{_e(json.dumps(ev, indent=2, default=str))}"
                    f"</pre></details>") if ev else ""
        items.append(f'<li class="{sev}"><span class="badge {sev}">{sev}</span> <code>{_e(f.get("code", ""))}'
                     f"</code>{loc}<br>{_e(f.get('message', ''))}{evidence}</li>")
    return f'<ul class="flags">{"".join(items)}</ul>'


def _embed(out_dir: Path, rel: Any) -> tuple[str | None, str]:
    """(data URI or None, reason) for a figure path relative to ``out_dir``."""
    if not rel:
        return None, "figure has no path"
    root = out_dir.resolve()
    try:
        path = (root / str(rel)).resolve()
    except (OSError, RuntimeError, ValueError):
        return None, "unreadable path"
    if root != path and root not in path.parents:
        return None, "path leaves the output folder; not embedded"
    if not path.is_file():
        return None, "file not found"
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"cannot read file ({exc.strerror or exc})"
    mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is None and path.suffix.lower() == ".svg":
        mime = "image/svg+xml"                      # scripts in an SVG never run inside <img>
    if mime is None:
        return None, "not a PNG/JPEG/GIF/WebP/SVG image"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", ""


def _figure(out_dir: Path, fig: dict) -> str:
    title, caption, rel = fig.get("title", ""), fig.get("caption", ""), fig.get("path", "")
    uri, why = _embed(out_dir, rel)
    cap = f"<figcaption><strong>{_e(title)}</strong>{'. ' if title and caption else ''}{_e(caption)}</figcaption>"
    if uri is None:
        return (f'<figure><div class="missing" role="img" aria-label="missing figure">Figure not available: '
                f"<code>{_e(rel)}</code> ({_e(why)}).</div>{cap}</figure>")
    return f'<figure><img src="{uri}" alt="{_e(title or rel)}" loading="eager">{cap}</figure>'


def _table(t: dict) -> str:
    cols = [c for c in _list(t.get("columns"))]
    rows = [r if isinstance(r, list) else [r] for r in _list(t.get("rows"))]
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in rows)
    title = f"<h3>{_e(t.get('title'))}</h3>" if t.get("title") else ""
    return f'{title}<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _section(name: str, slug: str, sec: dict, out_dir: Path, flags: list[tuple[str, str, dict]]) -> str:
    title = sec.get("title") or sec.get("name") or name
    secs = sec.get("seconds")
    timing = f' <span class="muted">({secs:.1f} s)</span>' if isinstance(secs, (int, float)) and secs else ""
    parts = [f'<section id="{slug}"><h2>{_e(title)}{timing}</h2>']
    metrics = _dict(sec.get("metrics"))
    flat = [(k, v) for k, v in metrics.items() if not isinstance(v, dict)]
    nested = [(k, v) for k, v in metrics.items() if isinstance(v, dict)]
    if flat:
        parts.append("<h3>Metrics</h3>" + _kv_table(flat))
    for k, v in nested:
        leaves = _flatten(v)
        parts.append(f"<details><summary>{_e(k)} ({len(leaves)} values)</summary>{_kv_table(leaves)}</details>")
    own = [f for f in flags if f[1] == slug]
    parts.append("<h3>Soundness flags</h3>" + _flag_items(own, where=False))
    parts.extend(_table(t) for t in _list(sec.get("tables")) if isinstance(t, dict))
    figs = [f for f in _list(sec.get("figures")) if isinstance(f, dict)]
    if figs:
        parts.append("<h3>Figures</h3>" + "".join(_figure(out_dir, f) for f in figs))
    examples = _list(sec.get("examples"))
    if examples:
        parts.append(f'<p class="muted">{len(examples)} example record(s) are stored in results.json.</p>')
    config = _dict(sec.get("config"))
    if config:
        parts.append(f"<details><summary>section configuration</summary>"
                     f"<pre>{_e(json.dumps(config, indent=2, default=str))}</pre></details>")
    parts.append("</section>")
    return "".join(parts)


def _css() -> str:
    try:
        return (resources.files("trustvision.report") / "templates" / "report.css").read_text(encoding="utf-8")
    except (OSError, ModuleNotFoundError):
        return "body{font-family:system-ui,sans-serif;max-width:1100px;margin:0 auto;padding:24px}"


# ------------------------------------------------------------------ entry point
def render_report(results: dict, out_dir: Path) -> Path:
    """Write ``out_dir / "report.html"`` from a results dictionary (the content of results.json).

    Args:
        results: the results dictionary; any key may be missing.  ``results["sections"]`` maps a
            section name to ``SectionResult.to_dict()``; figure paths are relative to ``out_dir``.
        out_dir: the output folder holding the figure files; created if needed.

    Returns:
        The path of the written report.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _dict(results)
    sections = {str(k): v for k, v in _dict(results.get("sections")).items() if isinstance(v, dict)}
    used: set[str] = {"summary", "flags"}
    slugs = {name: _slug(name, used) for name in sections}
    flags = [(name, slugs[name], f) for name, sec in sections.items()
             for f in _list(sec.get("flags")) if isinstance(f, dict)]
    toc = "".join(f'<li><a href="#{slugs[n]}">{_e(s.get("title") or n)}</a></li>' for n, s in sections.items())
    model_name = _dict(results.get("model")).get("name") or "model"
    body = [
        _header(results),
        f'<nav class="toc" aria-label="contents"><strong>Contents</strong><ol><li><a href="#summary">Summary</a></li>'
        f'<li><a href="#flags">Soundness flags ({len(flags)})</a></li>{toc}</ol></nav>',
        _summary(results, flags),
        f'<section id="flags"><h2>Soundness flags</h2><p class="muted">Checks that tell whether the numbers '
        f"below can be believed. Errors mean a robustness figure is likely wrong.</p>"
        f"{_flag_items(flags, where=True)}</section>",
        *(_section(n, slugs[n], s, out_dir, flags) for n, s in sections.items()),
    ]
    if not sections:
        body.append('<p class="muted">No sections were run.</p>')
    config = _dict(results.get("config"))
    if config:
        body.append(f"<details><summary>audit configuration</summary>"
                    f"<pre>{_e(json.dumps(config, indent=2, default=str))}</pre></details>")
    body.append(f"<footer>Generated by trustvision {_e(results.get('trustvision_version', ''))} from results.json. "
                f"Self-contained: figures are embedded; no scripts, no network.</footer>")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="trustvision-results-digest" content="{results_digest(results)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>trustvision report: {_e(model_name)}</title><style>{_css()}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")
    return write_text_atomic(out_dir / "report.html", page)


# ------------------------------------------------------------------ report <-> results.json in step
_DIGEST_META = re.compile(rb'<meta name="trustvision-results-digest" content="([0-9a-f]+)">')


def results_digest(results: dict) -> str:
    """Digest of a results dictionary's canonical JSON (as results.json holds it); recorded in the report."""
    from ..results import clean_json
    return digest(clean_json(results))


def rendered_digest(report: Path) -> str | None:
    """The results digest recorded in ``report`` (``report.html``); None when missing or unreadable."""
    try:
        with open(report, "rb") as f:
            m = _DIGEST_META.search(f.read(4096))
    except OSError:
        return None
    return m.group(1).decode() if m else None
