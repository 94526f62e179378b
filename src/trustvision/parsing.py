"""Numbers as people type them: ``0.3``, ``8/255``, ``0,2/255,4/255``.

One parser for budgets and thresholds, used by the CLI (``--eps 8/255``, ``--mean``, ``--radii``) and by
the audit's ``--fail-under`` gates (``robust_accuracy_linf@8/255=0.4``).
"""
from __future__ import annotations

from .errors import TrustVisionError


def parse_number(text: str) -> float:
    """``"0.3"`` -> 0.3, ``"8/255"`` -> 8/255.  Raises ``ValueError`` or ``ZeroDivisionError`` if malformed."""
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    return float(text)


def parse_numbers(text: str | None, what: str) -> list[float] | None:
    """Comma-separated numbers (fractions allowed); ``None`` stays ``None``.

    ``what`` names the option in the one-line :class:`TrustVisionError` raised for malformed input.
    """
    if text is None:
        return None
    try:
        return [parse_number(t) for t in text.split(",") if t.strip()]
    except (ValueError, ZeroDivisionError):
        raise TrustVisionError(f"{what}: expected comma-separated numbers (fractions like 8/255 allowed), "
                               f"got {text!r}") from None
