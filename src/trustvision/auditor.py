"""The audit: spec -> Classifier + Dataset -> sections -> results.json -> report.html.

(The module is ``auditor`` so that ``trustvision.audit`` stays the function.)

Each section persists its :class:`~trustvision.results.SectionResult` to
``OUT/sections/NAME.json`` as soon as it finishes, stamped with a fingerprint
of the model weights, the evaluated data and the section's configuration.
Re-running the same audit resumes: sections whose fingerprint matches are
loaded, not recomputed.  The model's weights are hashed before and after; a
change is an error (the audit must never modify the user's model).
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch

from .data.dataset import Dataset
from .errors import ModelModifiedError, TrustVisionError
from .evaluation.sections import SECTIONS, SectionInputs, clean_section
from .evaluation.sections.certify import CertifyConfig
from .evaluation.sections.explain import ExplainConfig
from .evaluation.sections.robustness import RobustnessConfig
from .evaluation.sections.uap import UAPConfig
from .models.classifier import Classifier
from .parsing import parse_number
from .persist import digest, write_json_atomic
from .progress import Progress, Quiet
from .results import SectionResult, envelope

DEFAULT_SECTIONS = tuple(name for name, s in SECTIONS.items() if s.default)   # explain, certify, uap: opt-in


@dataclass
class AuditConfig:
    """Everything an audit run depends on (besides the model and the data)."""

    sections: list[str] = field(default_factory=lambda: list(DEFAULT_SECTIONS))
    n_images: int | None = 500
    batch_size: int = 128
    seed: int = 0
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    uap: UAPConfig = field(default_factory=UAPConfig)
    gates: list[str] = field(default_factory=list)
    resume: bool = True

    def __post_init__(self) -> None:
        for name, section in SECTIONS.items():          # a [name] table of audit.toml arrives as a dict
            if section.config is not None and isinstance(getattr(self, name), dict):
                setattr(self, name, section.config(**getattr(self, name)))
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise TrustVisionError(f"unknown section(s) {bad}; choose from {SECTIONS.names()}")
        if self.batch_size < 1:
            raise TrustVisionError(f"--batch-size must be >= 1, got {self.batch_size}")

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> "AuditConfig":
        """Read ``audit.toml`` (top-level keys of AuditConfig, one table per section, e.g. ``[robustness]``).

        ``overrides`` (keyword arguments of AuditConfig) replace the file's values; ``None`` ones are ignored.
        """
        import tomllib
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise TrustVisionError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise TrustVisionError(f"{p}: invalid TOML ({e})") from None
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise TrustVisionError(f"{p}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**raw)
        except TypeError as e:
            raise TrustVisionError(f"{p}: {e}") from None


# ------------------------------------------------------------------ gates
_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:@[\w./]+)?)\s*=\s*([-+0-9.eE/]+)\s*$")


def summary_metrics(sections: dict[str, SectionResult]) -> dict[str, float]:
    """Flat metrics for the terminal, the report header and ``--fail-under`` gates.

    Keys: ``clean_accuracy`` and ``robust_accuracy_<norm>@<eps>`` (worst case across attacks).
    """
    out: dict[str, float] = {}
    if "clean" in sections:
        out["clean_accuracy"] = sections["clean"].metrics["clean_accuracy"]
    if "robustness" in sections:
        for norm, curve in sections["robustness"].metrics.get("worst_case_robust_accuracy", {}).items():
            for eps, acc in curve.items():
                if float(eps) > 0:
                    out[f"robust_accuracy_{norm}@{float(eps):.6g}"] = acc
    if "certify" in sections:
        for r, acc in sections["certify"].metrics.get("certified_accuracy", {}).items():
            out[f"certified_accuracy@{float(r):.6g}"] = acc
    return out


def evaluate_gates(gates: list[str], summary: dict[str, float]) -> list[dict]:
    """Check ``METRIC=VALUE`` gates (metric must be >= value).  ``@eps`` may be a fraction like ``8/255``."""
    results = []
    for g in gates:
        m = _GATE.match(g)
        if not m:
            raise TrustVisionError(f"--fail-under {g!r}: expected METRIC=VALUE, e.g. robust_accuracy_linf@8/255=0.4")
        name, threshold = m.group(1), parse_number(m.group(2))
        key = name
        if "@" in name:
            base, eps = name.split("@", 1)
            want = parse_number(eps)
            cands = [k for k in summary if k.startswith(base + "@") and abs(float(k.split("@")[1]) - want) < 1e-6]
            key = cands[0] if cands else name
        if key not in summary:
            raise TrustVisionError(f"--fail-under {g!r}: unknown metric {name!r}; available: {', '.join(summary)}")
        value = summary[key]
        results.append({"gate": g, "metric": key, "op": ">=", "threshold": threshold, "value": value,
                        "passed": value is not None and value >= threshold})
    return results


# ------------------------------------------------------------------ audit
def data_fingerprint(data: Dataset) -> str:
    """:func:`~trustvision.persist.digest` of the evaluated images (N, C, H, W) and labels (N,)."""
    return digest(data.x, data.y)


def audit(clf: Classifier, data: Dataset, config: AuditConfig | None = None, out_dir: str | Path = "trustvision-out",
          *, data_spec: str = "", progress: Progress | None = None, console=None) -> dict:
    """Run the configured sections and write ``results.json`` and ``report.html`` into ``out_dir``.

    ``data``: images (N, C, H, W) in [0, 1] and labels (N,); ``config.n_images`` of them are sampled with
    ``config.seed``.  Returns the results dictionary (the content of results.json).
    """
    from .report import render_report
    cfg = config or AuditConfig()
    progress = progress or Quiet()
    out = Path(out_dir)
    (out / "sections").mkdir(parents=True, exist_ok=True)
    data = data.conform(clf.channels, clf.num_classes).sample(cfg.n_images, cfg.seed)
    if len(data) == 0:
        raise TrustVisionError(f"dataset {data.name!r} is empty")
    weights_before = clf.weights_hash()
    base_fp = (weights_before, data_fingerprint(data), clf.describe(), cfg.seed, cfg.batch_size)
    sections: dict[str, SectionResult] = {}
    clean_logits = None
    for name in cfg.sections:
        sec_cfg = asdict(getattr(cfg, name)) if is_dataclass(getattr(cfg, name, None)) else {}
        fp = digest(*base_fp, name, sec_cfg)
        path = out / "sections" / f"{name}.json"
        saved = _resumed(path, fp) if cfg.resume else None
        if saved is not None:
            sections[name] = saved
            if console:
                console.print(f"[dim]resumed section {name!r} from {path}[/dim]")
            continue
        torch.manual_seed(cfg.seed)
        if name == "clean" or clean_logits is None:       # the clean pass: its logits feed every section
            sec, clean_logits = clean_section(clf, data, batch_size=cfg.batch_size, progress=progress)
        if name != "clean":
            inputs = SectionInputs(clf, data, clean_logits, cfg.batch_size, out, progress)
            sec = SECTIONS.get(name).run(inputs, getattr(cfg, name))
        sec.config = {**sec.config, "fingerprint": fp}
        sections[name] = sec
        write_json_atomic(path, {"fingerprint": fp, "section": sec.to_dict()})
    summary = summary_metrics(sections)
    results = envelope(model={**clf.describe(), "weights_sha256": weights_before},
                       data={"spec": data_spec or data.name, "name": data.name, "n": len(data),
                             "num_classes": data.num_classes, "sha256": data_fingerprint(data)},
                       config=asdict(cfg), summary=summary, sections=sections,
                       gates=evaluate_gates(cfg.gates, summary))
    write_json_atomic(out / "results.json", results)
    render_report(results, out)
    if clf.weights_hash() != weights_before:
        raise ModelModifiedError(f"model {clf.name!r}: weights changed during the audit (results kept in {out})")
    return results


def _resumed(path: Path, fingerprint: str) -> SectionResult | None:
    """The section saved at ``path`` if its fingerprint matches (same model, data and config), else None."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            return SectionResult.from_dict(saved["section"])
    except (json.JSONDecodeError, KeyError, TypeError):
        pass                              # unreadable: recompute
    return None
