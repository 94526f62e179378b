"""The CLI's terminal output: the consoles, progress, and running an audit with its headline and summary.

Commands import from here (never from :mod:`.app`, which imports the commands to register them).
User strings (paths, names, labels, messages) are never interpreted: the consoles are created with
``emoji=False`` (``:boom:`` stays text), every user string printed with markup is passed through
:func:`rich.markup.escape` (``[/x]`` stays text), and progress descriptions are plain text.

What goes where (:class:`~.options.OutputArgs`): progress is Rich bars in a terminal and one line per step
(started / done, with the elapsed time) when stdout is not a terminal; ``--quiet`` drops progress and
notes and prints only the headline; ``--json`` prints one JSON document on stdout and sends progress and
notes to stderr; ``--summary-md FILE`` also writes a Markdown summary.  The headline (the verdict, gates,
worst case, flag counts, other sections' numbers) is printed first, in percentages with denominators.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

if TYPE_CHECKING:
    from ..auditor import AuditConfig
    from ..data import Dataset
    from ..models import Classifier
    from ..progress import Progress
    from .options import OutputArgs

console = Console(stderr=False, emoji=False)
err = Console(stderr=True, emoji=False)
_PLAIN = {"markup": False, "emoji": False, "highlight": False, "soft_wrap": True}


def chatter(output: "OutputArgs | None" = None) -> Console | None:
    """Where notes and progress go: stderr with ``--json``, nowhere with ``--quiet``, else stdout."""
    if output is not None and output.quiet:
        return None
    return err if output is not None and output.json_out else console


def note(output: "OutputArgs | None", text: str) -> None:
    """Print a plain-text note (never markup) where :func:`chatter` says."""
    target = chatter(output)
    if target is not None:
        target.print(text, **_PLAIN)


@contextmanager
def progress_bars(output: "OutputArgs | None" = None) -> Iterator["Progress"]:
    """Progress on :func:`chatter`'s console: Rich bars on a terminal, one line per step otherwise (a log file,
    CI), nothing with ``--quiet``.  Task descriptions are plain text (no markup, no emoji)."""
    from ..progress import LineProgress, Quiet, RichProgress
    target = chatter(output)
    if target is None:
        yield Quiet()
        return
    if not target.is_terminal:
        lines = LineProgress(lambda line: target.print(line, **_PLAIN))
        try:
            yield lines
        finally:
            lines.close()
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    with Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=target, transient=False) as p:
        yield RichProgress(p)


def _share(key: str, v: object) -> bool:
    words = ("accuracy", "rate", "success", "control")
    return isinstance(v, float) and any(w in key for w in words) and -1e-9 <= v <= 1 + 1e-9 and "auc" not in key


def print_headline(h: dict, target: Console) -> None:
    """The headline block: verdict sentence, clean accuracy vs baselines, worst case, gates, flags, sections."""
    from ..report.labels import budget, norm_name, pct, pct_of
    ok = h.get("passed")
    head, _, rest = h.get("sentence", "").partition(": ")
    target.print(f"[bold {'green' if ok else 'red'}]{escape(head)}:[/] {escape(rest)}", highlight=False,
                 soft_wrap=True)
    if h.get("clean_accuracy") is not None:
        base = f" (majority-class rate {pct(h['majority_class_rate'])})" if h.get("majority_class_rate") else ""
        target.print(f"  clean accuracy {pct_of(h['clean_accuracy'], h.get('n_images'))}{base}", **_PLAIN)
    by_norm: dict[tuple, list[dict]] = {}
    for r in h.get("robust", []):
        by_norm.setdefault((r.get("norm"), r.get("under")), []).append(r)
    for (norm, under), rs in by_norm.items():
        cells = " · ".join(f"ε = {budget(r.get('eps'))}: {pct(r.get('accuracy'))}" for r in rs)
        what = f" under {under}" if under else ""
        target.print(f"  worst-case robust accuracy ({norm_name(norm)}{what}, of {rs[0].get('n')} images): {cells}",
                     **_PLAIN)
    for g in h.get("gates", []):
        good = g.get("passed")
        shown = pct if _share(str(g.get("metric")), g.get("threshold")) else (lambda x: f"{x:.4g}")
        value = "—" if g.get("value") is None else shown(g["value"])
        target.print(f"  gate {escape(str(g.get('metric')))} >= {escape(shown(g.get('threshold')))}: "
                     f"{escape(value)} {'[green]passed[/green]' if good else '[bold red]FAILED[/bold red]'}",
                     highlight=False, soft_wrap=True)
    fl = h.get("flags", {})
    target.print(f"  soundness flags: {fl.get('error', 0)} error, {fl.get('warning', 0)} warning, "
                 f"{fl.get('info', 0)} info (--fail-on {h.get('fail_on', 'error')})", **_PLAIN)
    for name, text in h.get("sections", []):
        target.print(f"  {name}: {text}", **_PLAIN)


def print_summary(results: dict, out: Path, output: "OutputArgs | None" = None) -> int:
    """Print the headline first, then the summary, flags and gates of a ``results.json`` document (``--json``:
    one JSON document instead; ``--quiet``: the headline only); write ``--summary-md``.  Returns the exit
    code: 1 when a gate failed or a flag at or above ``--fail-on`` was raised, else 0."""
    from ..headline import headline_markdown
    from ..persist import write_text_atomic
    h = verdict(results, output)
    if output is not None and output.summary_md is not None:
        write_text_atomic(output.summary_md, headline_markdown(results, h))
    flags = [(s, f) for s, sec in results.get("sections", {}).items() for f in sec.get("flags", [])]
    if output is not None and output.json_out:
        doc = {"passed": h["passed"], "exit_code": h["exit_code"], "headline": h, "summary": results.get("summary"),
               "gates": results.get("gates", []), "flags": [{"section": s, **f} for s, f in flags],
               "results": str(out / "results.json"), "report": str(out / "report.html")}
        console.print(json.dumps(doc, indent=2, allow_nan=False, default=str), **_PLAIN)
        return h["exit_code"]
    print_headline(h, console)
    if output is None or not output.quiet:
        _details(results, flags)
    console.print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}", markup=False, highlight=False)
    return h["exit_code"]


def verdict(results: dict, output: "OutputArgs | None" = None) -> dict:
    """The headline of ``results`` under ``--fail-on`` (``h["exit_code"]``: 0 passed, 1 failed)."""
    from ..headline import headline
    h = results.get("headline") or headline(results)
    if output is not None and output.fail_on is not None and output.fail_on != h.get("fail_on"):
        h = headline(results, fail_on=output.fail_on)
    return h


def _details(results: dict, flags: list[tuple[str, dict]]) -> None:
    """The summary table (percentages, denominator named in the title) and every flag."""
    from ..report.labels import pct
    n = results.get("data", {}).get("n")
    t = RichTable(title=f"trustvision summary{f' (percentages of the {n} evaluated images)' if n else ''}",
                  show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in results.get("summary", {}).items():
        t.add_row(escape(k), escape(pct(v) if _share(k, v) else f"{v:.4g}" if isinstance(v, float) else str(v)))
    console.print(t)
    colour = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for s, f in flags:
        console.print(f"[{colour.get(f['severity'], 'yellow')}]{escape(f['severity'])}[/] {escape(f'[{s}]')} "
                      f"{escape(f['code'])}: {escape(f['message'])}", highlight=False)
    if not flags:
        console.print("[green]no soundness flags raised[/green]")


def run_audit(classifier: "Classifier", data: "Dataset", cfg: "AuditConfig", out: Path, data_spec: str, *,
              trust_code: bool = False, output: "OutputArgs | None" = None) -> int:
    """:func:`trustvision.audit` with progress, then the headline and summary; returns the exit code.

    ``trust_code`` (``--trust-code`` only) lets ``module.py:factory`` UAP transfer models run their file;
    ``output``: ``--quiet`` / ``--json`` / ``--summary-md`` / ``--fail-on`` (applied to ``cfg``).  Under torchrun
    only rank 0 shows progress and the summary; every rank returns the same exit code (identical results)."""
    from dataclasses import replace

    from .. import audit
    from ..progress import Quiet
    from ..scale import current
    if output is not None and output.fail_on is not None:
        cfg = replace(cfg, fail_on=output.fail_on)
    if not current().main:                 # torchrun: ranks > 0 compute silently; rank 0 prints and writes
        results = audit(classifier, data, cfg, out, data_spec=data_spec, progress=Quiet(), trust_code=trust_code)
        return verdict(results, output)["exit_code"]
    with progress_bars(output) as progress:
        results = audit(classifier, data, cfg, out, data_spec=data_spec, progress=progress, console=chatter(output),
                        trust_code=trust_code)
    return print_summary(results, out, output)
