"""SectionResult and Flag: what every audit section hands to results.json and the report.

A section computes; it never renders HTML.  Figures are PNG files written
beside ``results.json`` (paths stored relative to the output folder); the
report embeds them.  Everything here is JSON-serialisable.  The schema is
documented in ``docs/results-schema.md`` and versioned by :data:`SCHEMA_VERSION`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1.0"
SEVERITIES = ("info", "warning", "error")


@dataclass
class Flag:
    """A soundness warning: ``code`` (stable id), ``severity`` and a sentence a person can act on."""

    code: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}")


@dataclass
class Table:
    """A small table: ``columns`` names and ``rows`` (lists of JSON scalars)."""

    title: str
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    """A figure file (relative to the output folder) with a caption."""

    title: str
    path: str
    caption: str = ""


@dataclass
class SectionResult:
    """The result of one audit section."""

    name: str
    title: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return clean_json(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SectionResult":
        d = dict(d)
        d["tables"] = [Table(**t) for t in d.get("tables", [])]
        d["figures"] = [Figure(**f) for f in d.get("figures", [])]
        d["flags"] = [Flag(**f) for f in d.get("flags", [])]
        return cls(**d)


def clean_json(obj: Any) -> Any:
    """Make ``obj`` strict-JSON: tensors/arrays to lists, NaN/Inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if hasattr(obj, "tolist"):                     # torch / numpy scalars and arrays
        return clean_json(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def envelope(*, model: dict[str, Any], data: dict[str, Any], config: dict[str, Any], summary: dict[str, Any],
             sections: dict[str, "SectionResult"], **extra: Any) -> dict[str, Any]:
    """The ``results.json`` document shared by every command (schema in ``docs/results-schema.md``).

    ``model``/``data``/``config`` describe the inputs, ``summary`` holds the flat headline metrics,
    ``sections`` the section results; ``extra`` adds command-specific top-level keys (e.g. ``gates``).
    ``headline`` (the verdict: :func:`trustvision.headline.headline`) is computed from the rest, stored after
    ``created``.
    """
    import datetime as _dt

    from . import __version__
    from .headline import headline
    doc = {"schema_version": SCHEMA_VERSION, "trustvision_version": __version__,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "model": model, "data": data, "config": config, "summary": summary, **extra,
           "sections": {k: v.to_dict() for k, v in sections.items()}}
    top = ("schema_version", "trustvision_version", "created")
    return {**{k: doc[k] for k in top}, "headline": headline(clean_json(doc)),
            **{k: v for k, v in doc.items() if k not in top}}
