"""Evaluation: the audit sections (:mod:`.sections`, registered in :data:`SECTIONS`) — clean accuracy and model
checks, robustness curves with soundness flags, explanations, certification, universal perturbations — and the
measures they share (soundness checks, fooling rates, zero-shot metrics)."""
from .sections import SECTIONS, Section, SectionInputs, clean_section
from .sections.robustness import RobustnessConfig, robustness_section

__all__ = ["SECTIONS", "RobustnessConfig", "Section", "SectionInputs", "robustness_section", "clean_section"]
