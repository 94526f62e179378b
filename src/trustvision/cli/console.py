"""The CLI's terminal output: the consoles, progress bars, and running an audit with a summary table.

Commands import from here (never from :mod:`.app`, which imports the commands to register them).
User strings (paths, names, labels, messages) are never interpreted: the consoles are created with
``emoji=False`` (``:boom:`` stays text), every user string printed with markup is passed through
:func:`rich.markup.escape` (``[/x]`` stays text), and progress descriptions are plain text.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

if TYPE_CHECKING:
    from ..auditor import AuditConfig
    from ..progress import RichProgress
    from ..data import Dataset
    from ..models import Classifier

console = Console(stderr=False, emoji=False)
err = Console(stderr=True, emoji=False)


@contextmanager
def progress_bars() -> Iterator["RichProgress"]:
    """Rich progress bars on :data:`console` whose task descriptions are plain text (no markup, no emoji)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from ..progress import RichProgress
    with Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as p:
        yield RichProgress(p)


def print_summary(results: dict, out: Path) -> int:
    """Print the summary, flags and gates of a ``results.json`` document; return the exit code (1: a gate failed)."""
    t = RichTable(title="trustvision summary", show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in results["summary"].items():
        t.add_row(escape(k), escape(f"{v:.1%}" if isinstance(v, float) else str(v)))
    console.print(t)
    flags = [(s, f) for s, sec in results["sections"].items() for f in sec.get("flags", [])]
    colour = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for s, f in flags:
        console.print(f"[{colour.get(f['severity'], 'yellow')}]{escape(f['severity'])}[/] {escape(f'[{s}]')} "
                      f"{escape(f['code'])}: {escape(f['message'])}", highlight=False)
    if not flags:
        console.print("[green]no soundness flags raised[/green]")
    code = 0
    for g in results["gates"]:
        ok = g["passed"]
        console.print(f"gate {escape(g['metric'])} >= {g['threshold']:g}: {g['value']:.4g} "
                      f"{'[green]passed[/green]' if ok else '[bold red]FAILED[/bold red]'}")
        code = code or (0 if ok else 1)
    console.print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}", markup=False, highlight=False)
    return code


def run_audit(classifier: "Classifier", data: "Dataset", cfg: "AuditConfig", out: Path, data_spec: str, *,
              trust_code: bool = False) -> int:
    """:func:`trustvision.audit` with progress bars, then the summary; returns the exit code.

    ``trust_code`` (``--trust-code`` only) lets ``module.py:factory`` UAP transfer models run their file."""
    from .. import audit
    with progress_bars() as progress:
        results = audit(classifier, data, cfg, out, data_spec=data_spec, progress=progress, console=console,
                        trust_code=trust_code)
    return print_summary(results, out)
