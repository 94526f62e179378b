"""Errors a user can act on.

Every problem caused by the user's input (a missing file, a corrupt image, a
wrong shape, NaN logits, an unsafe pickle...) is raised as a
:class:`TrustVisionError` whose message is one line naming the culprit.  The
CLI prints that line and exits with status 2 instead of a traceback.
"""
from __future__ import annotations


class TrustVisionError(ValueError):
    """A user-facing error: one line, names the file/argument at fault."""


class GateFailed(RuntimeError):
    """Raised (by the CLI) when a ``--fail-under`` gate is not met."""


class ModelModifiedError(TrustVisionError):
    """The wrapped model's weights changed during the audit."""
