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
from .labels import column_label, is_share, metric_label, pct, pct_of, relabel
from .verdict import headline_block

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


def _cell(value: Any, share: bool = False) -> str:
    """A ``<td>``: numbers right-aligned, shares (``share``: accuracy, rates in [0, 1]) as percentages."""
    num = isinstance(value, (int, float)) and not isinstance(value, bool)
    text = pct(value) if share and num and not isinstance(value, int) and -1e-9 <= value <= 1 + 1e-9 else _fmt(value)
    return f'<td class="num">{_e(text)}</td>' if num else f"<td>{_e(text)}</td>"


ALL_IMAGES = ("clean_accuracy", "fooling_rate", "targeted_success", "majority_class_rate")   # shares of all images


def _metric_cell(key: str, value: Any, n: Any = None) -> str:
    """A metric's ``<td>``: a share as a percentage (with "k of N images" when it is a share of all N images)."""
    if n is not None and str(key).split(" / ")[-1] in ALL_IMAGES and is_share(key, value):
        return f'<td class="num">{_e(pct_of(value, n))}</td>'
    return _cell(value, is_share(str(key).split(" / ")[-1], value) or is_share(key, value))


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


def _kv_table(pairs: Iterable[tuple[str, Any]], head: tuple[str, str] = ("metric", "value"), n: Any = None) -> str:
    rows = "".join(f"<tr><th scope=\"row\">{_e(metric_label(k))}</th>{_metric_cell(k, v, n)}</tr>" for k, v in pairs)
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
        ("skipped files", _skipped(data.get("skipped"))),
        ("created", results.get("created")),
        ("trustvision", f"{results.get('trustvision_version', '?')} (results schema "
                        f"{results.get('schema_version', '?')})"),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_fmt(v))}</dd>" for k, v in items if v not in (None, ""))
    return (f'<header class="top"><h1><span class="brand">trustvision</span> report: {_e(name)}</h1>'
            f'<dl class="meta">{dl}</dl></header>')


def _skipped(skipped: Any) -> str | None:
    """``data.skipped`` (files left out by ``--skip-bad-images``) as a count and the first names."""
    if isinstance(skipped, int):
        return f"{skipped} unreadable file(s) left out" if skipped else None
    items = [str(x.get("path", x)) if isinstance(x, dict) else str(x) for x in _list(skipped)]
    if not items:
        return None
    return f"{len(items)} unreadable file(s) left out: " + ", ".join(items[:5]) + (", …" if len(items) > 5 else "")


def _summary(results: dict) -> str:
    """Every summary metric (the gates and the verdict are in the headline block above)."""
    summary = _dict(results.get("summary"))
    n = _dict(results.get("data")).get("n")
    body = _kv_table(_flatten(summary), n=n) if summary else '<p class="muted">No summary metrics.</p>'
    return (f'<section id="summary"><h2>Summary metrics</h2><p class="muted">The keys <code>--fail-under</code> '
            f"takes (shown in words; results.json keeps the machine keys). Percentages are of all "
            f"{_e(n if n is not None else '?')} evaluated images.</p>{body}</section>")


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
    head = f'<h4 class="figtitle">{_e(relabel(title))}</h4>' if title else ""
    cap = f"<figcaption>{_e(relabel(caption))}</figcaption>" if caption else ""
    if uri is None:
        return (f'<figure>{head}<div class="missing" role="img" aria-label="missing figure">Figure not available: '
                f"<code>{_e(rel)}</code> ({_e(why)}).</div>{cap}</figure>")
    return f'<figure>{head}<img src="{uri}" alt="{_e(title or rel)}" loading="eager">{cap}</figure>'


_NOT_SHARE_COL = re.compile(r"(auc|p[-_ ]?value|cramer|silhouette|seconds|norm|zeta|iou|queries|images|count|"
                            r"radius|class|cluster|group|attack|step)", re.I)
_SHARE_TITLE = re.compile(r"(accura|fooling|success|(^|\W)rate)", re.I)


def _share_columns(title: str, cols: list) -> list[bool]:
    """Which columns hold shares (shown as percentages): by their header, or in a share-titled table."""
    by_title = bool(_SHARE_TITLE.search(title))
    return [is_share(str(c), 0.5) or (by_title and not _NOT_SHARE_COL.search(str(c))) for c in cols]


def _denominator(title: str, n: Any) -> str:
    """The sentence saying what the percentages of a table are of (empty when not known)."""
    t = title.lower()
    if "per class" in t or "per-class" in t:
        return "Percentages are of each class's images."
    if isinstance(n, int) and n > 0 and (t.startswith("robust accuracy") or t.startswith("uap vs")):
        return f"Percentages are of all {n} evaluated images."
    return ""


def _table(t: dict, n: Any = None) -> str:
    cols = [c for c in _list(t.get("columns"))]
    rows = [r if isinstance(r, list) else [r] for r in _list(t.get("rows"))]
    title_text = str(t.get("title") or "")
    shares = _share_columns(title_text, cols)
    head = "".join(f"<th>{_e(column_label(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(_cell(v, shares[i] if i < len(shares) else False) for i, v in enumerate(r))
                   + "</tr>" for r in rows)
    title = f"<h3>{_e(relabel(title_text))}</h3>" if title_text else ""
    note = _denominator(title_text, n) if any(shares) else ""
    note = f'<p class="muted">{_e(note)}</p>' if note else ""
    return (f'{title}<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
            f"{note}")


def _is_grid(fig: dict) -> bool:
    """An example grid (shown one at a time: the others behind "show more")."""
    return "example" in str(fig.get("title", "")).lower()


def _figures(out_dir: Path, figs: list[dict]) -> str:
    """Figures in order; the example grids after the first one are folded into one "show more" list."""
    grids = [f for f in figs if _is_grid(f)]
    more = grids[1:]
    shown = "".join(_figure(out_dir, f) for f in figs if f not in more)
    if not more:
        return shown
    names = ", ".join(relabel(f.get("title", "")) for f in more)
    return (f'{shown}<details class="more"><summary>show {len(more)} more example grid(s): {_e(names)}</summary>'
            f'{"".join(_figure(out_dir, f) for f in more)}</details>')


def _section(name: str, slug: str, sec: dict, out_dir: Path, flags: list[tuple[str, str, dict]]) -> str:
    title = sec.get("title") or sec.get("name") or name
    secs = sec.get("seconds")
    timing = f' <span class="muted">({secs:.1f} s)</span>' if isinstance(secs, (int, float)) and secs else ""
    parts = [f'<section id="{slug}"><h2>{_e(title)}{timing}</h2>']
    metrics = _dict(sec.get("metrics"))
    n = metrics.get("n_images", metrics.get("n_eval"))
    flat = [(k, v) for k, v in metrics.items() if not isinstance(v, dict)]
    nested = [(k, v) for k, v in metrics.items() if isinstance(v, dict)]
    if flat:
        parts.append("<h3>Metrics</h3>" + _kv_table(flat, n=n))
    for k, v in nested:
        leaves = _flatten(v)
        parts.append(f"<details><summary>{_e(metric_label(k))} ({len(leaves)} values)</summary>"
                     f"{_kv_table(leaves)}</details>")
    own = [f for f in flags if f[1] == slug]
    parts.append("<h3>Soundness flags</h3>" + _flag_items(own, where=False))
    parts.extend(_table(t, n) for t in _list(sec.get("tables")) if isinstance(t, dict))
    figs = [f for f in _list(sec.get("figures")) if isinstance(f, dict)]
    if figs:
        parts.append("<h3>Figures</h3>" + _figures(out_dir, figs))
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
    used: set[str] = {"summary", "flags", "headline"}
    slugs = {name: _slug(name, used) for name in sections}
    flags = [(name, slugs[name], f) for name, sec in sections.items()
             for f in _list(sec.get("flags")) if isinstance(f, dict)]
    toc = "".join(f'<li><a href="#{slugs[n]}">{_e(s.get("title") or n)}</a></li>' for n, s in sections.items())
    model_name = _dict(results.get("model")).get("name") or "model"
    counts = {s: sum(1 for _, _, f in flags if _severity(f) == s) for s in SEVERITY_ORDER}
    body = [
        _header(results),
        headline_block(results, counts),
        f'<nav class="toc" aria-label="contents"><strong>Contents</strong><ol><li><a href="#headline">Headline</a>'
        f'</li><li><a href="#summary">Summary metrics</a></li>'
        f'<li><a href="#flags">Soundness flags ({len(flags)})</a></li>{toc}</ol></nav>',
        _summary(results),
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
