"""PNG figures for the report, one module per section.

* :mod:`.common` — pyplot-free matplotlib on an Agg canvas, DPI 100, tensor -> NumPy, class labels;
* :mod:`.robustness` — robust accuracy against budget, per-class bars, adversarial-example grids, bars;
* :mod:`.certify` — certified accuracy against L2 radius, radius histogram (Cohen et al. 2019);
* :mod:`.uap` — the universal perturbation, before/after, convergence, ζ sweep, transfer matrix;
* :mod:`.explain` — CAM overlays, attention-cluster centres, deletion/insertion curves;
* :mod:`.zeroshot` — Raw Zero-Shot metric bars, soft-label PCA, metric vs attack success;
* :mod:`.train` — per-epoch loss and clean / PGD accuracy of ``trustvision train``.

Every helper takes plain Python / NumPy / torch inputs and a destination path, writes one PNG and
returns ``None``.  Sections call these helpers; the report (:mod:`trustvision.report.html`) only
embeds the files, it never draws or runs a model.  The robustness helpers are re-exported here
(``figures.robustness_curves(...)``).
"""
from .common import DPI
from .robustness import WORST_CASE, bars, example_grid, per_class_bars, robustness_curves

__all__ = ["robustness_curves", "example_grid", "per_class_bars", "bars", "DPI", "WORST_CASE"]
