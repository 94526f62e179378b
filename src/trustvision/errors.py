"""Errors a user can act on.

Every problem caused by the user's input (a missing file, a corrupt image, a
wrong shape, NaN logits, an unsafe pickle...) is raised as a
:class:`TrustVisionError` whose message is one line naming the culprit.  The
CLI prints that line and exits with status 2 instead of a traceback (a failed ``--fail-under`` gate is
not an error: the CLI exits with status 1).
"""
from __future__ import annotations


class TrustVisionError(ValueError):
    """A user-facing error: one line, names the file/argument at fault."""


class ModelModifiedError(TrustVisionError):
    """The wrapped model's weights changed during the audit."""
