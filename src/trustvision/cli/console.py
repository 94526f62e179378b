"""The CLI's terminal output: the consoles, and running an audit with progress bars and a summary table.

Commands import from here (never from :mod:`.app`, which imports the commands to register them).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

if TYPE_CHECKING:
    from ..auditor import AuditConfig
    from ..data import Dataset
    from ..models import Classifier

console = Console(stderr=False)
err = Console(stderr=True)


def print_summary(results: dict, out: Path) -> int:
    """Print the summary, flags and gates of a ``results.json`` document; return the exit code (1: a gate failed)."""
    t = RichTable(title="trustvision summary", show_lines=False)
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in results["summary"].items():
        t.add_row(k, f"{v:.1%}" if isinstance(v, float) else str(v))
    console.print(t)
    flags = [(s, f) for s, sec in results["sections"].items() for f in sec.get("flags", [])]
    colour = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for s, f in flags:
        console.print(f"[{colour[f['severity']]}]{f['severity']}[/] {escape(f'[{s}]')} {f['code']}: "
                      f"{escape(f['message'])}", highlight=False)
    if not flags:
        console.print("[green]no soundness flags raised[/green]")
    code = 0
    for g in results["gates"]:
        ok = g["passed"]
        console.print(f"gate {g['metric']} >= {g['threshold']:g}: {g['value']:.4g} "
                      f"{'[green]passed[/green]' if ok else '[bold red]FAILED[/bold red]'}")
        code = code or (0 if ok else 1)
    console.print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return code


def run_audit(classifier: "Classifier", data: "Dataset", cfg: "AuditConfig", out: Path, data_spec: str) -> int:
    """:func:`trustvision.audit` with progress bars, then the summary; returns the exit code."""
    from .. import audit
    from ..progress import rich_progress
    with rich_progress(console) as progress:
        results = audit(classifier, data, cfg, out, data_spec=data_spec, progress=progress, console=console)
    return print_summary(results, out)
