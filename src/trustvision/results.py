"""SectionResult and Flag: what every audit section hands to results.json and the report.

A section computes; it never renders HTML.  Figures are PNG files written
beside ``results.json`` (paths stored relative to the output folder); the
report embeds them.  Everything here is JSON-serialisable.  The schema is
documented in ``docs/results-schema.md`` and versioned by :data:`SCHEMA_VERSION`.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
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


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(clean_json(data), f, indent=2, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
