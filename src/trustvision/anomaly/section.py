"""The ``anomaly`` section: fit each inspection method on normal images, score the test set, evaluate,
attack the inspector, and hand a :class:`~trustvision.results.SectionResult` to results.json.

Methods: ``vae`` (reconstruction maps), ``vae+siamese`` (the VAE's candidate regions re-judged by a Siamese
network, the two-stage inspector of Takimoto's report) and ``patchcore`` (Roth et al., CVPR 2022).  Every
method sees only ``train`` (normal images); a seeded ``val_fraction`` of them is held out of fitting and
sets each method's operating threshold (the ``threshold_quantile`` of their scores).  Trained state is
saved as safetensors in ``OUT/models/METHOD-<fingerprint>.safetensors`` (:func:`trustvision.persist.digest`
of the training images, the method's settings and the backbone) and reused on a rerun.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..persist import digest
from ..progress import Progress, Quiet
from ..results import Figure, Flag, SectionResult, Table
from .attack import DetectorPGD, attack_curves, fragility, operating_threshold
from .base import AnomalyResult, Detector, load_detector, save_detector
from .data import AnomalyDataset
from .metrics import evaluate

METHODS = ("vae", "vae+siamese", "patchcore")
PATCHCORE_PRESETS = {
    # CPU-friendly default: patches on the deeper (stride-4) grid, a 1 % coreset, max patch score
    "fast": {"coreset_ratio": 0.01, "grid": "deep", "reweight": False},
    # Roth et al.'s setting: patches on the shallow grid, a 10 % coreset, reweighted image score (Eq. 7)
    "paper": {"coreset_ratio": 0.1, "grid": "shallow", "reweight": True},
}
METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max")


def parse_methods(text: str | list[str]) -> list[str]:
    """``vae|vae+siamese|patchcore|all`` or a comma list -> method names (one-line error when unknown)."""
    names = text if isinstance(text, list) else [t.strip() for t in str(text).split(",") if t.strip()]
    out: list[str] = []
    for n in names:
        for m in (METHODS if n == "all" else (n,)):
            if m not in METHODS:
                raise TrustVisionError(f"--method {n!r}: choose vae, vae+siamese, patchcore or all")
            if m not in out:
                out.append(m)
    if not out:
        raise TrustVisionError("--method: give at least one of vae, vae+siamese, patchcore, all")
    return out


@dataclass
class AnomalyConfig:
    """Settings of the anomaly section (``trustvision anomaly`` options)."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    epochs: int | None = None                 # VAE (and Siamese) epochs; None: the methods' defaults
    backbone: str = "demo"
    backbone_weights: str | None = None
    patchcore_preset: str = "fast"
    eps: list[float] = field(default_factory=lambda: [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255])
    attack_norm: str = "linf"
    attack_steps: int = 10
    threshold_quantile: float = 0.95
    val_fraction: float = 0.1
    n_examples: int = 6
    batch_size: int | None = None             # None: forward passes by forward_batch, attack batches of 32
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.methods = parse_methods(self.methods)
        if self.patchcore_preset not in PATCHCORE_PRESETS:
            raise TrustVisionError(f"patchcore preset {self.patchcore_preset!r}: choose {', '.join(PATCHCORE_PRESETS)}")
        if not 0 < self.val_fraction < 1:
            raise TrustVisionError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if any(not e >= 0 for e in self.eps):
            raise TrustVisionError(f"--eps-linf: budgets must be >= 0, got {self.eps}")
        self.eps = sorted({0.0, *map(float, self.eps)})
        if self.epochs is not None and self.epochs < 1:
            raise TrustVisionError(f"--epochs must be >= 1, got {self.epochs}")
        if self.attack_steps < 1 or (self.batch_size is not None and self.batch_size < 1):
            raise TrustVisionError("--attack-steps and --batch-size must be >= 1")
        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise TrustVisionError(f"--device {self.device!r}: not a device (cpu, cuda, cuda:1, mps)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise TrustVisionError(f"--device {self.device}: no CUDA GPU is available here; use --device cpu")


def split_validation(train: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded split of normal images (N, C, H, W) into (fit, validation); validation gets ``fraction`` (>= 1)."""
    if len(train) < 2:
        raise TrustVisionError(f"need at least 2 normal training images, got {len(train)}")
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    n_val = min(len(train) - 1, max(1, round(fraction * len(train))))
    return train[perm[n_val:]], train[perm[:n_val]]


def build_detector(method: str, cfg: AnomalyConfig, backbone=None) -> Detector:
    """A fresh, unfitted detector for ``method`` with ``cfg``'s settings."""
    from .vae import VAEDetector
    kw = {"seed": cfg.seed, "device": cfg.device, "score_batch_size": cfg.batch_size,
          **({"epochs": cfg.epochs} if cfg.epochs else {})}
    if method == "vae":
        return VAEDetector(**kw)
    if method == "vae+siamese":
        from .siamese import SiameseRejudge
        return SiameseRejudge(vae=VAEDetector(**kw), seed=cfg.seed, device=cfg.device, embed_batch_size=cfg.batch_size)
    from .patchcore import PatchCore
    return PatchCore(backbone, seed=cfg.seed, batch_size=cfg.batch_size, **PATCHCORE_PRESETS[cfg.patchcore_preset])


def _settings(method: str, cfg: AnomalyConfig, backbone) -> dict[str, Any]:
    """What determines a method's trained state (part of its model fingerprint)."""
    s: dict[str, Any] = {"method": method, "seed": cfg.seed, "val_fraction": cfg.val_fraction}
    if method.startswith("vae"):
        s["epochs"] = cfg.epochs
    if method == "patchcore":
        s.update(PATCHCORE_PRESETS[cfg.patchcore_preset], backbone=backbone.fingerprint())
    return s


def fit_or_load(method: str, cfg: AnomalyConfig, fit_x: Tensor, models: Path, *, backbone=None, resume: bool = True,
                progress: Progress | None = None) -> tuple[Detector, dict[str, Any]]:
    """Fit ``method`` on ``fit_x`` (N, C, H, W), or load its saved state from ``models`` when the fingerprint
    matches and ``resume``; returns (detector, info: path, reused, fit seconds)."""
    det = build_detector(method, cfg, backbone)
    fp = digest(fit_x, _settings(method, cfg, backbone))
    path = models / f"{method.replace('+', '-')}-{fp}.safetensors"
    if resume and path.exists():
        try:
            if method.startswith("vae"):                      # the network is built from the image shape
                _prime(det, fit_x)
            load_detector(det, path)
            return det, {"path": str(path), "reused": True, "fit_seconds": 0.0}
        except (TrustVisionError, RuntimeError, KeyError, ValueError):
            det = build_detector(method, cfg, backbone)       # unreadable: refit
    t0 = time.perf_counter()
    det.fit(fit_x.to(cfg.device), progress=progress)
    seconds = time.perf_counter() - t0
    save_detector(det, path)
    return det, {"path": str(path), "reused": False, "fit_seconds": round(seconds, 3)}


def _prime(det: Detector, x: Tensor) -> None:
    """Build a VAE-based detector's network for ``x``'s shape before loading weights into it."""
    vae = getattr(det, "vae", det)
    if getattr(vae, "net", None) is None and hasattr(vae, "_build"):
        vae.net = vae._build(tuple(x.shape[1:]))


def score_all(det: Detector, x: Tensor, batch_size: int | None = None) -> AnomalyResult:
    """Score ``x`` (N, C, H, W) in chunks of ``batch_size`` (None: one call; the detector picks its forward
    batches) and concatenate maps, scores and per-image extras."""
    parts = [det.score(xb) for xb in x.split(batch_size or max(len(x), 1))]
    extras: dict[str, Any] = {}
    for k, v in parts[0].extras.items():
        if isinstance(v, Tensor) and v.dim() >= 1 and all(isinstance(p.extras.get(k), Tensor) for p in parts):
            extras[k] = torch.cat([p.extras[k] for p in parts])
    return AnomalyResult(torch.cat([p.maps for p in parts]).float().cpu(),
                         torch.cat([p.scores for p in parts]).float().cpu(), extras)


def run_method(method: str, data: AnomalyDataset, cfg: AnomalyConfig, out: Path, *, backbone=None,
               resume: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Fit/load, score, evaluate and attack one method; returns its metrics, curves and raw outputs."""
    progress = progress or Quiet()
    fit_x, val_x = split_validation(data.train, cfg.val_fraction, cfg.seed)
    det, info = fit_or_load(method, cfg, fit_x, out / "models", backbone=backbone, resume=resume, progress=progress)
    t0 = time.perf_counter()
    res = score_all(det, data.test.to(cfg.device), cfg.batch_size)
    info["score_images_per_s"] = round(len(data.test) / max(time.perf_counter() - t0, 1e-9), 2)
    threshold = operating_threshold(score_all(det, val_x.to(cfg.device), cfg.batch_size).scores,
                                    cfg.threshold_quantile)
    metrics = evaluate(res, data)
    test = data.test.to(cfg.device)
    curves = attack_curves(det, test[data.labels == 0], test[data.labels == 1], threshold, cfg.eps,
                           norm=cfg.attack_norm, steps=cfg.attack_steps, seed=cfg.seed,
                           batch_size=cfg.batch_size or DetectorPGD.batch_size,
                           progress=progress)
    return {"metrics": metrics, "threshold": threshold, "curves": curves, "info": info, "result": res,
            "describe": det.describe() if hasattr(det, "describe") else {}}


def _tables(runs: dict[str, dict[str, Any]]) -> list[Table]:
    """Overall metrics, per-defect rows, regions and attack curves as report tables."""
    overall = Table("Inspection metrics per method", ["method", *METRIC_KEYS, "threshold", "fit s", "images/s"],
                    [[m, *(r["metrics"].get(k) for k in METRIC_KEYS), r["threshold"], r["info"]["fit_seconds"],
                      r["info"]["score_images_per_s"]] for m, r in runs.items()])
    per = Table("Per defect type (each type's images with the normal ones)", ["method", "defect", *METRIC_KEYS],
                [[m, row["defect"], *(row.get(k) for k in METRIC_KEYS)]
                 for m, r in runs.items() for row in r["metrics"].get("per_defect", [])])
    tables = [overall, per]
    reg = [[m, *(r["metrics"]["regions"].get(k) for k in REGION_KEYS)] for m, r in runs.items()
           if r["metrics"].get("regions")]
    if reg:
        tables.append(Table("Candidate regions before / after re-judgment", ["method", *REGION_KEYS], reg))
    rows = [[m, b, r["curves"]["miss_rate"][i], r["curves"]["false_alarm_rate"][i], r["curves"]["image_auroc"][i]]
            for m, r in runs.items() for i, b in enumerate(r["curves"]["budgets"])]
    norm = next(iter(runs.values()))["curves"]["norm"] if runs else "linf"
    tables.append(Table(f"Attacking the inspector (PGD, {norm})", ["method", "eps", "miss rate", "false-alarm rate",
                                                                    "image AUROC under attack"], rows))
    return tables


REGION_KEYS = ("regions_before", "regions_after", "false_positive_regions_before", "false_positive_regions_after",
               "defect_regions", "defects_found_before", "defects_found_after", "true_defects_lost")


def _flags(data: AnomalyDataset, cfg: AnomalyConfig, runs: dict[str, dict[str, Any]]) -> list[Flag]:
    flags = [Flag("synthetic-data" if data.synthetic else "data-note", "info", note) for note in data.notes]
    if data.synthetic and not data.notes:
        flags.append(Flag("synthetic-data", "info", f"{data.name} is synthetic data, not a real inspection set"))
    if data.masks is None and not any("mask" in n for n in data.notes):
        flags.append(Flag("no-masks", "info", "no ground-truth masks: pixel AUROC and AUPRO are not computed"))
    for m, r in runs.items():
        z = r["curves"]["zero_gradient_fraction"]
        if z > 0.5:
            flags.append(Flag("zero-gradient", "warning", f"{m}: the attack got no input gradient on {z:.0%} of the "
                              "images (a non-differentiable stage), so its attack curve is no evidence of robustness",
                              {"method": m, "fraction": z}))
        reg = r["metrics"].get("regions")
        if reg and (reg["false_positive_regions_after"] >= reg["false_positive_regions_before"]
                    or reg["true_defects_lost"] > 0):
            flags.append(Flag("rejudge-tradeoff", "info", f"{m}: re-judgment removed "
                              f"{reg['false_positive_regions_removed']} false-positive region(s) and lost "
                              f"{reg['true_defects_lost']} true defect(s)", reg))
    if "patchcore" in runs:
        if cfg.backbone != "demo" and not cfg.backbone_weights:
            flags.append(Flag("random-backbone", "warning", f"patchcore: backbone {cfg.backbone} has random weights; "
                              "pass --backbone-weights FILE (e.g. ImageNet weights you have)"))
        flags.append(Flag("offline-backbone", "info", "patchcore reaches about 99 % image AUROC on MVTec AD with "
                          "ImageNet weights (Roth et al. 2022); numbers with an offline backbone are not comparable"))
    frag = fragility({m: r["curves"] for m, r in runs.items()})
    if frag and len(runs) > 1:
        flags.append(Flag("most-fragile", "info", f"most fragile under attack: {frag['most_fragile']} (image AUROC "
                          f"drops by {frag['auroc_drop'][frag['most_fragile']]:.3f} at eps {frag['at_budget']:.4g})",
                          frag))
    return flags


def anomaly_section(data: AnomalyDataset, cfg: AnomalyConfig | None = None, out: str | Path = "anomaly-out", *,
                    resume: bool = True, progress: Progress | None = None) -> SectionResult:
    """Run every method of ``cfg`` on ``data`` and return the ``anomaly`` :class:`SectionResult`
    (figures written under ``out/figures``, models under ``out/models``)."""
    from ..report.figures import anomaly as figs
    cfg = cfg or AnomalyConfig()
    out = Path(out)
    t0 = time.perf_counter()
    backbone = None
    if "patchcore" in cfg.methods:
        from .backbone import load_backbone
        backbone = load_backbone(cfg.backbone, cfg.backbone_weights, seed=cfg.seed).to(cfg.device)
    runs = {m: run_method(m, data, cfg, out, backbone=backbone, resume=resume, progress=progress)
            for m in cfg.methods}
    labels = data.labels.numpy()
    results = {m: r["result"] for m, r in runs.items()}
    pick = figs.pick_examples(data.defect_types, cfg.n_examples)
    figures = [Figure("Anomaly maps", str(figs.overlays(data.test[pick], {m: r.maps[pick] for m, r in results.items()},
                      None if data.masks is None else data.masks[pick], [data.defect_types[i] for i in pick],
                      out / "figures" / "anomaly_overlays.png").relative_to(out)),
                      "image | ground truth | each method's map (after re-judgment for vae+siamese)"),
               Figure("ROC curves", str(figs.roc_curves({m: r.scores for m, r in results.items()}, labels,
                                                        out / "figures" / "anomaly_roc.png").relative_to(out))),
               Figure("Score histograms", str(figs.histograms(
                   {m: r.scores for m, r in results.items()}, labels, {m: r["threshold"] for m, r in runs.items()},
                   out / "figures" / "anomaly_hist.png").relative_to(out)), "normal vs defective; dashed: threshold"),
               Figure("Attacking the inspector", str(figs.attack_curves(
                   {m: r["curves"] for m, r in runs.items()}, out / "figures" / "anomaly_attack.png").relative_to(out)),
                   "miss rate (defects pushed below the threshold) and false alarms vs budget")]
    for m, r in results.items():
        if "candidate_labels" in r.extras and "kept_labels" in r.extras:
            p = figs.regions(data.test[pick], r.extras["candidate_labels"][pick], r.extras["kept_labels"][pick],
                             out / "figures" / f"anomaly_regions_{m.replace('+', '-')}.png")
            figures.append(Figure(f"Candidate regions kept vs removed ({m})", str(p.relative_to(out)),
                                  "green: kept by the re-judgment, red: removed"))
    metrics = {m: {**{k: r["metrics"].get(k) for k in (*METRIC_KEYS, "f1_threshold", "per_defect", "regions",
                                                       "regions_before", "regions_after") if k in r["metrics"]},
                   "threshold": r["threshold"], "attack": r["curves"], **r["info"], "settings": r["describe"]}
               for m, r in runs.items()}
    metrics["most_fragile"] = fragility({m: r["curves"] for m, r in runs.items()}).get("most_fragile")
    return SectionResult(name="anomaly", title="Inspection: anomaly maps and attacks on the inspector",
                         metrics=metrics, tables=_tables(runs), figures=figures, flags=_flags(data, cfg, runs),
                         config=asdict(cfg), seconds=round(time.perf_counter() - t0, 2))
