"""Audit sections: each turns (Classifier, Dataset, config) into a :class:`~trustvision.results.SectionResult`.

:data:`SECTIONS` is the registry the audit (:func:`trustvision.audit`) runs from: one :class:`Section` per
name, knowing its configuration class (the :class:`~trustvision.auditor.AuditConfig` field of the same
name holds an instance) and its runner.  Every runner gets the same :class:`SectionInputs`.

To add a section: write ``sections/NAME.py`` with a ``NameConfig`` dataclass and a function returning a
``SectionResult``, register it below with a two-line adapter, and add a ``NAME: NameConfig`` field to
``AuditConfig`` (results.json records it under ``config``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor

from ...data.dataset import Dataset
from ...models.classifier import Classifier
from ...progress import Progress
from ...registry import Registry
from ...results import SectionResult
from .certify import CertifyConfig, certify_section
from .clean import clean_section
from .corruptions import CorruptionsConfig, corruptions_section
from .explain import ExplainConfig, explain_section
from .patch import PatchConfig, patch_section
from .robustness import RobustnessConfig, robustness_section
from .uap import UAPConfig, uap_section


@dataclass(frozen=True)
class SectionInputs:
    """What every section runner gets: the model, the audited images and the clean pass's logits.

    ``data``: x (N, C, H, W) in [0, 1] and y (N,), CPU, already conformed and sampled;
    ``clean_logits``: (N, K) logits of the clean pass on ``data.x``.
    """

    classifier: Classifier
    data: Dataset
    clean_logits: Tensor
    batch_size: int
    out_dir: Path
    progress: Progress | None = None
    store: Any = None                   # robustness resume units (trustvision.resume.UnitStore) or None
    trust_code: bool = False            # --trust-code only (never a config): module.py:factory transfer models


@dataclass(frozen=True)
class Section:
    """An audit section: its configuration class and its runner ``run(inputs, config) -> SectionResult``.

    ``run`` is None for ``clean``: the clean pass that every audit makes first (its logits feed the others).
    ``default``: part of an audit that does not choose its sections.
    """

    config: type | None
    run: Callable[[SectionInputs, Any], SectionResult] | None
    default: bool = False


SECTIONS: Registry[Section] = Registry("section")


def _robustness(i: SectionInputs, cfg: RobustnessConfig) -> SectionResult:
    return robustness_section(i.classifier, i.data, i.clean_logits, cfg, batch_size=i.batch_size, out_dir=i.out_dir,
                              progress=i.progress, store=i.store)


def _explain(i: SectionInputs, cfg: ExplainConfig) -> SectionResult:
    return explain_section(i.classifier, i.data, i.clean_logits, cfg, batch_size=i.batch_size, out_dir=i.out_dir,
                           progress=i.progress)


def _certify(i: SectionInputs, cfg: CertifyConfig) -> SectionResult:
    return certify_section(i.classifier, i.data, cfg, out_dir=i.out_dir, progress=i.progress)


def _uap(i: SectionInputs, cfg: UAPConfig) -> SectionResult:
    return uap_section(i.classifier, i.data, i.clean_logits, cfg, batch_size=i.batch_size, out_dir=i.out_dir,
                       progress=i.progress, trust_code=i.trust_code)


def _patch(i: SectionInputs, cfg: PatchConfig) -> SectionResult:
    return patch_section(i.classifier, i.data, i.clean_logits, cfg, batch_size=i.batch_size, out_dir=i.out_dir,
                         progress=i.progress)


def _corruptions(i: SectionInputs, cfg: CorruptionsConfig) -> SectionResult:
    # forward batches: cfg.batch_size, else forward_batch (not the audit's --batch-size, which sizes gradient work)
    return corruptions_section(i.classifier, i.data, i.clean_logits, cfg, out_dir=i.out_dir, progress=i.progress)


SECTIONS.add("clean", Section(None, None, default=True), help="clean accuracy, per-class accuracy, output checks")
SECTIONS.add("robustness", Section(RobustnessConfig, _robustness, default=True),
             help="robust accuracy vs budget per attack, worst case, soundness flags")
SECTIONS.add("explain", Section(ExplainConfig, _explain), help="CAMs, faithfulness, attention clusters and shift")
SECTIONS.add("certify", Section(CertifyConfig, _certify), help="certified L2 accuracy by randomized smoothing")
SECTIONS.add("uap", Section(UAPConfig, _uap), help="universal adversarial perturbation vs random controls")
SECTIONS.add("patch", Section(PatchConfig, _patch), help="universal adversarial patch on held-out images vs controls")
SECTIONS.add("corruptions", Section(CorruptionsConfig, _corruptions),
             help="accuracy under common corruptions (Hendrycks & Dietterich 2019), mCE vs a baseline")

__all__ = ["SECTIONS", "Section", "SectionInputs", "clean_section"]
