"""The ``trustvision`` command line (Typer): :data:`app`, :func:`main` and the registration of every command.

Each command is a plain function in its own module of :mod:`.commands`; shared options are declared once
in :mod:`.options` and terminal output lives in :mod:`.console`.  Registering a command wraps it three times:
:func:`~.options.option_groups` expands its :class:`~.options.ModelArgs` parameter into the model-loading
options, :func:`~.options.checked` validates ``--out`` and the counts before any work, and :func:`user_errors`
turns a :class:`~trustvision.errors.TrustVisionError` into one line.

Errors caused by the user's input print one line (``error: ...``) and exit 2; a failed ``--fail-under``
gate or a soundness flag at or above ``--fail-on`` (default: error) exits 1; success exits 0; Ctrl-C exits 130
and SIGTERM 143 (128 + 15), both saying that finished
sections are kept.
"""
from __future__ import annotations

import signal
import sys
import threading
from functools import wraps
from typing import Any, Callable

import typer
from rich.markup import escape

from ..errors import TrustVisionError
from .commands import (anomaly, attack, audit, certify, corruptions, demo, explain, listing, patch, segment, train, uap,
                       zeroshot)
from .console import console, err
from .options import checked, option_groups

__all__ = ["Terminated", "app", "console", "err", "main", "user_errors"]

INTERRUPTED = "interrupted: finished sections are kept; re-run the same command to resume"

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="How far can an image-recognition model be trusted? Attacks, robustness curves with "
                       "soundness checks, and a self-contained HTML report.")


class Terminated(KeyboardInterrupt):
    """SIGTERM received: raised in the main thread by the handler :func:`_on_sigterm` installs (exit 143)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


@app.callback()
def _on_sigterm(ctx: typer.Context) -> None:
    """Handle SIGTERM like Ctrl-C while a command runs (installed per invocation, restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        return                                          # signal handlers can only be set from the main thread
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn TrustVisionError into one literal line on stderr and exit status 2; Ctrl-C / SIGTERM into a
    one-line note and exit status 130 / 143."""
    @wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except TrustVisionError as e:
            err.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        except KeyboardInterrupt as e:
            err.print(INTERRUPTED, markup=False, highlight=False)
            raise typer.Exit(143 if isinstance(e, Terminated) else 130)
    return wrapper


for _command in (demo.demo, audit.audit, attack.attack, explain.explain, certify.certify, uap.uap, train.train,
                 zeroshot.zeroshot, anomaly.anomaly, patch.patch, corruptions.corruptions, listing.list_entries):
    app.command(getattr(_command, "command_name", _command.__name__))(user_errors(checked(option_groups(_command))))
app.add_typer(segment.sub_app(lambda f: user_errors(checked(option_groups(f)))), name="segment")


def main() -> None:  # pragma: no cover
    sys.exit(app())
