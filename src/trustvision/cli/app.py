"""The ``trustvision`` command line (Typer): :data:`app`, :func:`main` and the registration of every command.

Each command is a plain function in its own module of :mod:`.commands`; shared options are declared once
in :mod:`.options` and terminal output lives in :mod:`.console`.  Registering a command wraps it twice:
:func:`~.options.option_groups` expands its :class:`~.options.ModelArgs` parameter into the model-loading
options, and :func:`user_errors` turns a :class:`~trustvision.errors.TrustVisionError` into one line.

Errors caused by the user's input print one line (``error: ...``) and exit 2; a failed ``--fail-under``
gate exits 1; success exits 0.
"""
from __future__ import annotations

import sys
from functools import wraps
from typing import Any, Callable

import typer

from ..errors import TrustVisionError
from .commands import attack, audit, certify, demo, explain, train, uap, zeroshot
from .console import console, err
from .options import option_groups

__all__ = ["app", "console", "err", "main", "user_errors"]

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="How far can an image-recognition model be trusted? Attacks, robustness curves with "
                       "soundness checks, and a self-contained HTML report.")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn TrustVisionError into one line on stderr and exit status 2."""
    @wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except TrustVisionError as e:
            err.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            err.print("interrupted: finished sections are kept; re-run the same command to resume")
            raise typer.Exit(130)
    return wrapper


for _command in (demo.demo, audit.audit, attack.attack, explain.explain, certify.certify, uap.uap, train.train,
                 zeroshot.zeroshot):
    app.command(_command.__name__)(user_errors(option_groups(_command)))


def main() -> None:  # pragma: no cover
    sys.exit(app())
