"""Inspection: anomaly maps on MVTec-AD-style data, AUROC/AUPRO, and the two-stage inspector.

* contract (:mod:`.base`): :class:`AnomalyResult` (maps (N, H, W), scores (N,), extras), :class:`Detector`;
* data (:mod:`.data`, :mod:`.textures`): :func:`load_mvtec`, :func:`load_anomaly_data` (a folder or
  ``bundled:textures``, the synthetic offline set), :func:`write_mvtec`;
* metrics (:mod:`.metrics`): :func:`evaluate` (image/pixel AUROC, AUPRO, F1-max, per defect, regions);
* methods: :class:`VAEDetector` (reconstruction maps), :class:`SiameseRejudge` (re-judgment of the
  VAE's candidate regions by a Siamese network).
"""
from .base import AnomalyResult, Detector, load_detector, save_detector
from .data import AnomalyDataset, load_anomaly_data, load_mvtec, write_mvtec
from .metrics import aupro, auroc, evaluate, f1_max, region_counts
from .siamese import SiameseRejudge
from .textures import make_textures
from .vae import VAEDetector

__all__ = ["AnomalyDataset", "AnomalyResult", "Detector", "SiameseRejudge", "VAEDetector", "aupro", "auroc",
           "evaluate", "f1_max", "load_anomaly_data", "load_detector", "load_mvtec", "make_textures",
           "region_counts", "save_detector", "write_mvtec"]
