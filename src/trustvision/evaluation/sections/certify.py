"""The ``certify`` section: certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter,
ICML 2019; algorithms in :mod:`trustvision.defenses.smoothing`).

For every evaluated image (x (N, C, H, W) in [0, 1], y (N,)) CERTIFY returns the class of the smoothed
classifier or an abstention and a certified L2 radius.  The section reports the certified accuracy
(share of *all* images certified correct with radius ≥ r) at each radius, the abstention rate, the
base classifier's accuracy under noise, the average certified radius (Zhai et al., ICLR 2020: the
radius of correct images, 0 otherwise, averaged) and per-image records (class, radius, bound).
Opt-in: not in the default audit (100 000 samples per image are costly).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ...configs import check_config
from ...data.dataset import Dataset
from ...defenses.smoothing import Smoothed, check_settings, max_certifiable_radius
from ...errors import TrustVisionError
from ...models.classifier import Classifier
from ...progress import Progress, Quiet
from ...results import Figure, Flag, SectionResult, Table


@dataclass
class CertifyConfig:
    """What the certify section runs (paper defaults: n0 = 100, n = 100 000, alpha = 0.001).

    ``batch_size`` is the number of noisy images per forward pass; ``radii`` are where the curve is
    tabulated (None: 0, σ/2, σ, 1.5σ, 2σ, 3σ, 4σ); ``max_images`` caps the evaluated images.
    """

    name: ClassVar[str] = "certify"
    sigma: float = 0.25
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int | None = None          # None: trustvision.batching.forward_batch for the device
    max_images: int | None = 100
    radii: list[float] | None = None
    high_abstention: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self)                  # every key's type, named in the error
        check_settings(self)
        if self.radii is not None:
            if any(not isinstance(r, (int, float)) or r < 0 for r in self.radii):
                raise TrustVisionError(f"certify radii must be numbers >= 0, got {self.radii}")
            self.radii = sorted({0.0, *map(float, self.radii)})
        if self.max_images is not None and self.max_images < 1:
            raise TrustVisionError(f"certify max_images must be >= 1 or None, got {self.max_images}")

    def radius_grid(self) -> list[float]:
        """The radii the curve is tabulated at."""
        return self.radii if self.radii is not None else [k * self.sigma for k in (0, 0.5, 1, 1.5, 2, 3, 4)]

    def smoother(self, clf: Classifier) -> Smoothed:
        """The :class:`Smoothed` classifier these settings describe."""
        return Smoothed(clf, self.sigma, n0=self.n0, n=self.n, alpha=self.alpha, batch_size=self.batch_size,
                        seed=self.seed)


def certify_section(clf: Classifier, data: Dataset, cfg: CertifyConfig | None = None, *,
                    out_dir: Path | None = None, progress: Progress | None = None) -> SectionResult:
    """Run CERTIFY on ``data`` (x (N, C, H, W), y (N,) CPU tensors) and build the ``certify`` section."""
    from ...report.figures import certify as figs
    cfg = cfg or CertifyConfig()
    progress = progress or Quiet()
    t0 = time.perf_counter()
    n = len(data) if cfg.max_images is None else min(cfg.max_images, len(data))
    x, y = data.x[:n], data.y[:n]
    sm = cfg.smoother(clf)
    advance = progress.task(f"certify (sigma={cfg.sigma:g}, {n} images x {cfg.n0}+{cfg.n} samples)",
                            sm.batches(n, cfg.n0, x.shape[1:]) + sm.batches(n, cfg.n, x.shape[1:]))
    res = sm.certify(x, advance=advance)
    sampling = time.perf_counter() - t0
    radii = cfg.radius_grid()
    curve = res.certified_accuracy(y, radii)
    correct = res.prediction == y
    r_max = max_certifiable_radius(cfg.sigma, cfg.n, cfg.alpha)
    under_noise = res.counts.gather(1, y[:, None])[:, 0].double() / cfg.n if n else torch.zeros(0)
    metrics = {
        "sigma": cfg.sigma, "n0": cfg.n0, "n": cfg.n, "alpha": cfg.alpha, "n_images": n,
        "certified_accuracy": {str(r): a for r, a in zip(radii, curve)},
        "abstention_rate": float(res.abstained.double().mean()) if n else 0.0,
        "smoothed_accuracy": curve[0] if curve else 0.0,
        "base_accuracy_under_noise": float(under_noise.mean()) if n else 0.0,
        "average_certified_radius": float((res.radius * correct).mean()) if n else 0.0,
        "median_radius_correct": float(res.radius[correct].median()) if bool(correct.any()) else 0.0,
        "max_certifiable_radius": r_max,
        "noise_samples_per_second": n * (cfg.n0 + cfg.n) / max(sampling, 1e-9),
    }
    tables = [Table(f"Certified accuracy (sigma = {cfg.sigma:g}, n = {cfg.n}, alpha = {cfg.alpha:g})",
                    ["radius", "certified accuracy"], [[r, a] for r, a in zip(radii, curve)])]
    flags = _flags(cfg, metrics, radii, r_max)
    sec = SectionResult("certify", f"Certified robustness (randomized smoothing, sigma = {cfg.sigma:g})", metrics,
                        tables, flags=flags, config=asdict(cfg))
    sec.examples = [{"index": i, "label": int(y[i]), "prediction": int(res.prediction[i]),
                     "radius": float(res.radius[i]), "p_lower": float(res.p_lower[i]),
                     "votes_for_prediction": int(res.counts[i].max())} for i in range(n)]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        figs.certified_accuracy_curve(res.radius, correct, out_dir / "certify_curve.png", sigma=cfg.sigma,
                                      marks=radii, max_radius=r_max)
        figs.radius_histogram(res.radius, correct, res.abstained, out_dir / "certify_radii.png")
        sec.figures += [
            Figure("Certified accuracy vs L2 radius", "certify_curve.png",
                   f"Share of all {n} images whose smoothed prediction is correct and certified at radius ≥ r "
                   f"(CERTIFY, n0 = {cfg.n0}, n = {cfg.n}, alpha = {cfg.alpha:g}); holds with probability 1 - alpha "
                   "per image."),
            Figure("Per-image certified radius", "certify_radii.png",
                   "Radii of images certified with the right (green) and the wrong (red) class; abstentions have none.")]
    sec.seconds = time.perf_counter() - t0
    return sec


def _flags(cfg: CertifyConfig, metrics: dict, radii: list[float], r_max: float) -> list[Flag]:
    flags = []
    if metrics["n_images"] and metrics["abstention_rate"] > cfg.high_abstention:
        flags.append(Flag("certify_high_abstention", "warning",
                          f"CERTIFY abstained on {metrics['abstention_rate']:.0%} of the images: the base classifier is "
                          f"not stable under Gaussian noise of sigma = {cfg.sigma:g} (accuracy under noise "
                          f"{metrics['base_accuracy_under_noise']:.0%}); train it with that noise "
                          "(train_classifier(noise_sigma=...)) or lower --sigma.",
                          {"abstention_rate": metrics["abstention_rate"]}))
    beyond = [r for r in radii if r > r_max]
    if beyond:
        flags.append(Flag("certify_sample_limited", "info",
                          f"with n = {cfg.n} samples and alpha = {cfg.alpha:g} no radius above {r_max:.3g} can be "
                          f"certified, so the certified accuracy at {', '.join(f'{r:g}' for r in beyond)} is 0 by "
                          "construction; raise --n to certify larger radii.", {"max_certifiable_radius": r_max}))
    return flags
