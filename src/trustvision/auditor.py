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

import contextlib
import json
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import torch

from .configs import check_config
from .data.dataset import Dataset
from .errors import ModelModifiedError, TrustVisionError
from .evaluation.sections import SECTIONS, SectionInputs, clean_section
from .evaluation.sections.certify import CertifyConfig
from .evaluation.sections.corruptions import CorruptionsConfig
from .evaluation.sections.explain import ExplainConfig
from .evaluation.sections.patch import PatchConfig
from .evaluation.sections.robustness import RobustnessConfig
from .evaluation.sections.uap import UAPConfig
from .gates import check_budgets, check_gates, evaluate_gates, expected_metrics, parse_gate, summary_metrics
from .headline import check_fail_on
from .models.classifier import Classifier
from .evaluation.sections.robustness_units import verify_units
from .persist import digest, write_json_atomic
from .progress import Progress, Quiet
from .results import Flag, SectionResult, clean_json, envelope
from .resume import UnitStore, environment, output_lock, prepare_output, read_shared, write_stamped
from .scale.dist import Dist, current

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
    patch: PatchConfig = field(default_factory=PatchConfig)
    corruptions: CorruptionsConfig = field(default_factory=CorruptionsConfig)
    gates: list[str] = field(default_factory=list)
    fail_on: str = "error"         # lowest flag severity that fails the run: error | warning | none (--fail-on)
    resume: bool = True
    verify: float = 0.0            # share of finished per-image results re-run and compared (docs/resume.md)

    def __post_init__(self) -> None:
        check_config(self, at_least_one=("n_images", "batch_size"))   # types of every key, nested tables too
        for name, section in SECTIONS.items():          # a [name] table of audit.toml arrives as a dict
            if section.config is not None and isinstance(getattr(self, name), dict):
                setattr(self, name, section.config(**getattr(self, name)))
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise TrustVisionError(f"unknown section(s) {bad}; choose from {SECTIONS.names()}")
        if self.batch_size < 1:
            raise TrustVisionError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_fail_on(self.fail_on)
        check_budgets(self)                             # L-inf now; L2 and L0 once the image shape is known
        for gate in self.gates:                         # syntax now; metric names: check_gates() once complete
            parse_gate(gate)

    def check_gates(self) -> None:
        """Refuse a ``--fail-under`` gate naming a metric this audit will not produce (before any compute)."""
        check_gates(self.gates, expected_metrics(self))

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


# ------------------------------------------------------------------ audit
def data_fingerprint(data: Dataset) -> str:
    """:func:`~trustvision.persist.digest` of the evaluated images (N, C, H, W) and labels (N,)."""
    return digest(data.x, data.y)


_NOT_NUMBERS = ("sections", "gates", "fail_on", "resume", "verify")   # config keys that cannot change a number


def fingerprint_base(clf: Classifier, data: Dataset, cfg: AuditConfig, weights: str) -> str:
    """What every resume fingerprint covers: weights, model code and settings (``describe()``: provenance,
    device, precision), the evaluated data, trustvision's and torch's versions, the device and every
    top-level config value that can change a number; each section adds its own configuration."""
    top = {k: v for k, v in asdict(cfg).items() if k not in _NOT_NUMBERS and k not in SECTIONS}
    return digest(weights, data_fingerprint(data), clf.describe(), environment(), str(clf.device), top)


def audit(clf: Classifier, data: Dataset, config: AuditConfig | None = None, out_dir: str | Path = "trustvision-out",
          *, data_spec: str = "", progress: Progress | None = None, console=None, trust_code: bool = False) -> dict:
    """Run the configured sections and write ``results.json`` and ``report.html`` into ``out_dir``.

    ``data``: images (N, C, H, W) in [0, 1] and labels (N,); ``config.n_images`` of them are sampled with
    ``config.seed``.  Returns the results dictionary (the content of results.json).  Resume, digests,
    ``verify`` and the output folder's upkeep: ``docs/resume.md``.  Under torchrun (:func:`trustvision.scale.init`)
    every rank calls this with the same arguments: the batches are split across the ranks, rank 0 alone reads
    and writes ``out_dir``, and every rank returns the same results (``docs/distributed.md``, "The audit").
    """
    cfg = config or AuditConfig()
    if isinstance(cfg.verify, bool) or not 0 <= cfg.verify <= 1:
        raise TrustVisionError(f"verify must be a fraction in [0, 1], got {cfg.verify!r}")
    d, out = current(), Path(out_dir)
    d.raise_together(_on_main(d, lambda: _make_out(out)))        # only rank 0 touches the output folder
    say = _sayer(console if d.main else None)
    cfg.check_gates()
    data = data.conform(clf.channels, clf.num_classes).sample(cfg.n_images, cfg.seed)
    if len(data) == 0:
        raise TrustVisionError(f"dataset {data.name!r} is empty")
    check_budgets(cfg, tuple(data.x.shape[1:]))
    _same_sample(d, data)
    weights_before = clf.weights_hash()
    base = fingerprint_base(clf, data, cfg, weights_before)
    units = [n for n in _UNIT_SECTIONS if n in cfg.sections]
    with output_lock(out, say) if d.main else contextlib.nullcontext(), _workdir(d, out) as work:
        d.raise_together(_on_main(d, lambda: prepare_output(out, cfg.sections, units, say)))
        store = UnitStore(out / "sections" / "robustness", digest(base, "robustness-units"), say)
        sections = _run_sections(clf, data, cfg, out, base, store, progress or Quiet(), say, trust_code=trust_code,
                                 work=work)
        summary = summary_metrics(sections)
        extra = {"gates": evaluate_gates(cfg.gates, summary)}
        if cfg.verify > 0:
            extra["verification"] = _verify(clf, data, cfg, store, sections, say)
            extra["gates"].append(_verification_gate(extra["verification"]))
        results = envelope(model={**clf.describe(), "weights_sha256": weights_before},
                           data={"spec": data_spec or data.name, "name": data.name, "n": len(data),
                                 "num_classes": data.num_classes, "sha256": data_fingerprint(data),
                                 **_skipped(data)},
                           config=asdict(cfg), summary=summary, sections=sections,
                           environment={**environment(), "world_size": d.world}, **extra)
        results = _write_results(results, out) if d.main else clean_json(results)
    if clf.weights_hash() != weights_before:
        raise ModelModifiedError(f"model {clf.name!r}: weights changed during the audit (results kept in {out})")
    return results


def _make_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TrustVisionError(f"--out {out}: is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)


def _on_main(d: Dist, step) -> BaseException | None:
    """Run ``step()`` on rank 0 only; its error (or None) for :meth:`Dist.raise_together` (every rank raises)."""
    if not d.main:
        return None
    try:
        step()
    except (TrustVisionError, OSError) as e:
        return e
    return None


def _same_sample(d: Dist, data: Dataset) -> None:
    """Under torchrun: refuse (one line, on every rank) when the ranks sampled different images or labels."""
    if not d.active:
        return
    prints = d.gather(data_fingerprint(data))
    odd = [r for r, f in enumerate(prints) if f != prints[0]]
    if odd:
        raise TrustVisionError(f"rank {odd[0]} sampled other images than rank 0 from {data.name!r} ({len(data)} "
                               "images): every rank must see the same data (same --data, --n, --seed, files)")


@contextlib.contextmanager
def _workdir(d: Dist, out: Path):
    """Where the sections write figures and arrays: ``out`` on rank 0, a private temporary folder elsewhere."""
    if d.main:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix=f"trustvision-rank{d.rank}-") as tmp:
        yield Path(tmp)


def _skipped(data: Dataset) -> dict:
    """``skipped`` (count) and ``skipped_files`` ([{path, reason}]) when ``--skip-bad-images`` left files out."""
    files = data.info.get("skipped")
    return {"skipped": len(files), "skipped_files": files} if files is not None else {}


_UNIT_SECTIONS = ("robustness",)          # sections with finer resume units in OUT/sections/NAME/


def _run_sections(clf: Classifier, data: Dataset, cfg: AuditConfig, out: Path, base: str, store: UnitStore,
                  progress: Progress, say, trust_code: bool = False, work: Path | None = None
                  ) -> dict[str, SectionResult]:
    """Resume or compute each section; every computed section is saved (stamped) as soon as it finishes.

    Under torchrun rank 0 reads the stamped files and broadcasts what it found (every rank skips the same
    sections), every rank computes the others (the batches are split inside), rank 0 alone writes; the
    sections of the other ranks write their figures into ``work`` (a private temporary folder)."""
    d, work = current(), work or out
    sections: dict[str, SectionResult] = {}
    clean_logits = None
    store.reuse = cfg.resume
    for name in cfg.sections:
        sec_cfg = asdict(getattr(cfg, name)) if is_dataclass(getattr(cfg, name, None)) else {}
        fp = digest(base, name, sec_cfg)
        path = out / "sections" / f"{name}.json"
        saved, why = _resumed(path, fp, name) if cfg.resume else (None, None)
        notes = [f"section {name!r}: {path} {why}; recomputing it"] if why else []
        for note in notes:
            say(note)
        if saved is not None:
            sections[name] = saved
            say(f"resumed section {name!r} from {path}")
            continue
        torch.manual_seed(cfg.seed)
        if name == "clean" or clean_logits is None:       # the clean pass: its logits feed every section
            sec, clean_logits = clean_section(clf, data, batch_size=cfg.batch_size, progress=progress)
        if name != "clean":
            store.resumed.clear()
            store.discarded.clear()
            inputs = SectionInputs(clf, data, clean_logits, cfg.batch_size, work, progress,
                                   store=store if name in _UNIT_SECTIONS else None, trust_code=trust_code)
            sec = SECTIONS.get(name).run(inputs, getattr(cfg, name))
            if name in _UNIT_SECTIONS and store.resumed:
                say(f"resumed {len(store.resumed)} attack run(s) of section {name!r} from {store.folder}: "
                    f"{', '.join(store.resumed)}")
        notes += store.discarded if name in _UNIT_SECTIONS else []
        sec.flags += [Flag("resume-file-discarded", "warning", n, {"section": name}) for n in notes]
        sec.config = {**sec.config, "fingerprint": fp}
        sections[name] = sec
        if d.main:
            write_stamped(path, fp, sec.to_dict())
    return sections


def _resumed(path: Path, fingerprint: str, name: str) -> tuple[SectionResult | None, str | None]:
    """``(section, None)`` if ``path`` holds section ``name`` with this fingerprint, intact; else ``(None, why)``."""
    payload, why = read_shared(path, fingerprint)
    if payload is None:
        return None, why
    try:
        sec = SectionResult.from_dict(payload)
    except (TypeError, ValueError, AttributeError, KeyError):
        return None, "does not hold a readable section"
    if sec.name != name:
        return None, f"holds section {sec.name!r}, not {name!r}"
    return sec, None


def _verify(clf: Classifier, data: Dataset, cfg: AuditConfig, store: UnitStore, sections: dict, say) -> dict:
    """Re-run a ``cfg.verify`` share of the robustness section's per-image results (see ``docs/resume.md``)."""
    store.reuse = True
    if "robustness" not in sections:
        say("verify: no robustness section, nothing to re-run")
        return {"fraction": cfg.verify, "checked_batches": 0, "passed": True}
    block = verify_units(cfg.robustness, clf, data, store, sections["robustness"].metrics,
                         batch_size=cfg.batch_size, fraction=cfg.verify, seed=cfg.seed)
    if block["passed"]:
        say(f"verify: {block['checked_batches']} of {block['total_batches']} batches re-run "
            f"({block['checked_images']} images): identical to the stored results")
    else:
        what = (block["mismatches"][:1] or block["assembly_mismatches"][:1] or block["missing_units"][:1])[0]
        say(f"verification FAILED: {len(block['mismatches'])} re-run batch(es) differ, "
            f"{len(block['assembly_mismatches'])} section value(s) disagree with the stored masks, "
            f"{len(block['missing_units'])} unit(s) missing (first: {what}); see 'verification' in results.json")
    return block


def _verification_gate(block: dict) -> dict:
    """The verification as a gate entry: a failed one makes the CLI exit 1 like a failed ``--fail-under``."""
    checked = max(1, block.get("checked_batches", 0))
    value = 1.0 - len(block.get("mismatches", [])) / checked
    return {"gate": "--verify", "metric": "verified_batches", "op": ">=", "threshold": 1.0, "value": value,
            "passed": bool(block["passed"])}


def _write_results(results: dict, out: Path) -> dict:
    """Write results.json (kept as is when only ``created`` would change) and re-render report.html
    when the results digest recorded in it does not match."""
    from .report import render_report
    from .report.html import rendered_digest, results_digest
    path = out / "results.json"
    results, old = clean_json(results), None
    with contextlib.suppress(OSError, ValueError):
        old = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(old, dict) and {**old, "created": results["created"]} == results:
        results = old                                     # a fully resumed run: nothing new to write
    else:
        write_json_atomic(path, results)
    if rendered_digest(out / "report.html") != results_digest(results):
        render_report(results, out)
    return results


def _sayer(console):
    """A one-line printer to ``console`` (user strings never read as markup or emoji); silent without one."""
    if console is None:
        return lambda msg: None
    return lambda msg: console.print(msg, markup=False, emoji=False, highlight=False, style="dim")
