"""Evaluation sections: clean accuracy and model checks, robustness curves with soundness flags."""
from .robustness import RobustnessConfig, robustness_section
from .clean import clean_section

__all__ = ["RobustnessConfig", "robustness_section", "clean_section"]
