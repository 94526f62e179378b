"""The ``trustvision`` command line: :data:`app` (Typer) and :func:`main`."""
from .app import app, main

__all__ = ["app", "main"]
