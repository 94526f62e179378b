"""Evaluation sections: clean accuracy and model checks, robustness curves with soundness flags."""
from .sections.robustness import RobustnessConfig, robustness_section
from .sections.clean import clean_section

__all__ = ["RobustnessConfig", "robustness_section", "clean_section"]
