"""The report layer: PNG figure helpers and the self-contained HTML report.

Sections draw figures with :mod:`trustvision.report.figures` and store their
relative paths in ``SectionResult.figures``; :func:`render_report` turns a
results dictionary into ``report.html`` with every figure embedded.  The report
never runs a model.
"""
from .figures import bars, example_grid, per_class_bars, robustness_curves
from .html import render_report

__all__ = ["render_report", "robustness_curves", "example_grid", "per_class_bars", "bars"]
