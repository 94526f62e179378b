"""The ``corruptions`` section: accuracy under common corruptions (Hendrycks & Dietterich, ICLR 2019).

Every image is corrupted by every family of :data:`~trustvision.physical.corruptions.CORRUPTIONS` at each
severity (batched on the device, seeded per corruption and severity) and classified.  Reported:

* the accuracy table (corruption × severity) and a heat-map; a grid of one image at every cell;
* **mean corruption accuracy** (mean over corruptions and severities);
* **CE / mCE** against a baseline model when one is given (Hendrycks & Dietterich, eq. 1: a corruption's
  errors summed over severities, divided by the baseline's; AlexNet in the paper, the user's baseline
  here) and **relative mCE** (the same on errors *minus the clean error*: how much worse than clean);
* a ``corruption-not-monotone`` soundness flag where accuracy *rises* with severity beyond a binomial
  margin (two standard errors of a difference of two proportions on N images, at least
  :func:`~..soundness.tolerance`): a severity scale that does not hurt more at higher levels usually
  means the corruption does not fit the image size or range (e.g. a blur radius below one pixel).

Forward passes take :func:`trustvision.batching.forward_batch` images (``batch_size`` / ``--batch-size``
overrides it); the random corruptions draw their noise in fixed blocks of :data:`NOISE_BLOCK` images, so the
corrupted images, and the accuracies, never depend on the forward batch size.

Shapes: images (N, C, H, W) in [0, 1]; labels (N,).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from ...batching import forward_batch
from ...data.dataset import Dataset
from ...errors import TrustVisionError
from ...models.classifier import Classifier
from ...physical.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from ...progress import Progress, Quiet
from ...results import Figure, Flag, SectionResult, Table
from ..soundness import tolerance

NOISE_BLOCK = 256       # images corrupted per draw from a generator (the former default forward batch)


@dataclass
class CorruptionsConfig:
    """What the corruptions section runs.

    ``scale``: multiplier of the pixel-sized parameters (None: ``min(1, side/224)``, see
    :mod:`trustvision.physical.corruptions`).  ``baseline``: a model spec (``trustvision.load_model``) for
    mCE, or None; it is loaded like the audited model (same classes, channels, input size, mean and std; the
    architecture ``baseline_arch`` for a state-dict file).  ``n_images``: the first images of the audit's sample (None: all).
    ``batch_size``: images per forward pass (None: :func:`trustvision.batching.forward_batch` for the device).
    """

    corruptions: list[str] = field(default_factory=lambda: list(CORRUPTIONS.names()))
    severities: list[int] = field(default_factory=lambda: list(SEVERITIES))
    n_images: int | None = None
    scale: float | None = None
    baseline: str | None = None
    baseline_arch: str | None = None
    batch_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for c in self.corruptions:
            CORRUPTIONS.get(c)                           # one-line error listing the choices
        bad = [s for s in self.severities if s not in SEVERITIES]
        if bad or not self.severities:
            raise TrustVisionError(f"corruptions: severities must be among 1..5, got {self.severities}")
        self.severities = sorted(set(self.severities))
        if not self.corruptions:
            raise TrustVisionError("corruptions: choose at least one corruption")
        if self.n_images is not None and self.n_images < 1:
            raise TrustVisionError(f"corruptions: n_images must be >= 1, got {self.n_images}")
        if self.scale is not None and not (self.scale > 0):
            raise TrustVisionError(f"corruptions: scale must be > 0, got {self.scale}")
        if self.batch_size is not None and self.batch_size < 1:
            raise TrustVisionError(f"corruptions: batch_size (--batch-size) must be >= 1, got {self.batch_size}")


def corrupted_batches(x: Tensor, name: str, severity: int, *, generator: torch.Generator, batch_size: int,
                      device: torch.device, scale: float | None = None) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, images (b, C, H, W))``: ``x`` (N, C, H, W) corrupted, in consecutive batches of ``batch_size``.

    The corruption draws from ``generator`` in fixed blocks of :data:`NOISE_BLOCK` images, whatever
    ``batch_size`` is, so the concatenated batches are the same images for every batch size.
    """
    pending: list[Tensor] = []
    held = start = 0
    for b in range(0, len(x), NOISE_BLOCK):
        pending.append(corrupt(x[b:b + NOISE_BLOCK].to(device), name, severity, generator=generator, scale=scale))
        held += len(pending[-1])
        last = b + NOISE_BLOCK >= len(x)
        if held < batch_size and not last:
            continue
        buf = torch.cat(pending) if len(pending) > 1 else pending[0]
        cut = len(buf) if last else len(buf) - len(buf) % batch_size
        for k in range(0, cut, batch_size):
            yield start + k, buf[k:k + batch_size]
        start, held = start + cut, len(buf) - cut
        pending = [buf[cut:]] if held else []


def corruption_accuracy(clf: Classifier, x: Tensor, y: Tensor, cfg: CorruptionsConfig, *,
                        batch_size: int | None = None, progress: Progress | None = None,
                        keep: int = 0) -> tuple[Tensor, Tensor | None]:
    """Accuracy (R, S) of ``clf`` on ``x`` (N, C, H, W), ``y`` (N,) under R corruptions × S severities.

    Each (corruption, severity) draws from its own generator, seeded from ``cfg.seed`` and its position, so
    two models see the same corrupted images.  ``keep`` > 0 also returns the corrupted versions of the first
    ``keep`` images, (R, S, keep, C, H, W) on the CPU.  Forward passes in inference mode, ``batch_size``
    images each (None: ``cfg.batch_size``, else :func:`~trustvision.batching.forward_batch`); the results
    do not depend on it (see :func:`corrupted_batches`).
    """
    dev = clf.device
    fb = forward_batch(clf, dev, sample_shape=x.shape[1:], override=batch_size if batch_size is not None
                       else cfg.batch_size)
    r, s = len(cfg.corruptions), len(cfg.severities)
    hits = torch.zeros(r, s, device=dev)
    kept = torch.zeros(r, s, keep, *x.shape[1:]) if keep else None
    advance = (progress or Quiet()).task("corruptions", r * s)
    with torch.inference_mode():
        for i, name in enumerate(cfg.corruptions):
            for j, sev in enumerate(cfg.severities):
                gen = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + 31 * i + sev)
                for b, xb in corrupted_batches(x, name, sev, generator=gen, batch_size=fb, device=dev,
                                               scale=cfg.scale):
                    hits[i, j] += (clf(xb).argmax(1) == y[b:b + len(xb)].to(dev)).sum()
                    if kept is not None and b < keep:
                        kept[i, j, b:b + len(xb[:keep - b])] = xb[:keep - b].cpu()
                advance(1)
    return (hits / max(len(x), 1)).cpu(), kept


def corruption_errors(acc: Tensor, clean_acc: float, base_acc: Tensor, base_clean: float) -> dict:
    """CE / relative CE per corruption and their means (Hendrycks & Dietterich 2019, section 3).

    ``acc``, ``base_acc``: (R, S) accuracies of the model and the baseline.  A corruption on which the
    baseline makes no error (or no error beyond its clean error) has no defined (relative) CE: NaN.
    """
    err, berr = (1 - acc).sum(1), (1 - base_acc).sum(1)
    s = acc.shape[1]
    rel, brel = err - s * (1 - clean_acc), berr - s * (1 - base_clean)
    ce = torch.where(berr > 0, err / berr.clamp_min(1e-12), torch.full_like(err, math.nan))
    rce = torch.where(brel > 0, rel / brel.clamp_min(1e-12), torch.full_like(err, math.nan))
    return {"ce": ce.tolist(), "relative_ce": rce.tolist(),
            "mce": float(ce.nanmean()), "relative_mce": float(rce.nanmean())}


def monotone_flags(acc: Tensor, corruptions: list[str], severities: list[int], n: int) -> list[Flag]:
    """``corruption-not-monotone`` warnings where accuracy at a higher severity exceeds a lower one beyond noise."""
    flags = []
    for i, name in enumerate(corruptions):
        row = acc[i].tolist()
        for j in range(1, len(row)):
            k = min(range(j), key=lambda t: row[t])           # the lowest accuracy at a lower severity
            p = (row[j] + row[k]) / 2
            margin = max(tolerance(n), 2 * math.sqrt(2 * p * (1 - p) / max(n, 1)))
            if row[j] - row[k] > margin:
                flags.append(Flag("corruption-not-monotone", "warning",
                                  f"Accuracy under {name} rises from {row[k]:.1%} at severity {severities[k]} to "
                                  f"{row[j]:.1%} at severity {severities[j]} (beyond the binomial margin "
                                  f"{margin:.1%} on {n} images): the severity scale does not fit these images. "
                                  "Check the image size (pixel-sized parameters are scaled by side/224) and range.",
                                  {"corruption": name, "severities": [severities[k], severities[j]],
                                   "accuracy": [row[k], row[j]], "margin": margin}))
                break
    return flags


def load_baseline(clf: Classifier, spec: str, arch: str | None = None) -> Classifier:
    """The baseline model of ``spec`` with ``clf``'s classes, channels, input size, normalisation and device."""
    from ...models.loading import load_model
    mean = None if clf.mean is None else clf.mean.flatten().tolist()
    std = None if clf.std is None else clf.std.flatten().tolist()
    return load_model(spec, arch=arch, num_classes=clf.num_classes, channels=clf.channels, input_size=clf.input_size,
                      mean=mean, std=std, labels=clf.labels, device=clf.device)


def corruptions_section(clf: Classifier, data: Dataset, clean_logits: Tensor, cfg: CorruptionsConfig | None = None,
                        *, baseline: Classifier | None = None, out_dir: Path | None = None,
                        batch_size: int | None = None, progress: Progress | None = None) -> SectionResult:
    """Accuracy table, mean corruption accuracy, (relative) mCE against ``baseline``, heat-map and grid.

    ``clean_logits``: (N, K) logits of the clean pass.  ``baseline``: a second classifier for mCE
    (None: loaded from ``cfg.baseline`` when that is set).  ``batch_size``: images per forward pass
    (None: ``cfg.batch_size``, else :func:`~trustvision.batching.forward_batch` per model).
    """
    t0 = time.perf_counter()
    cfg = cfg or CorruptionsConfig()
    batch_size = batch_size if batch_size is not None else cfg.batch_size
    if baseline is None and cfg.baseline:
        baseline = load_baseline(clf, cfg.baseline, cfg.baseline_arch)
    n = len(data) if cfg.n_images is None else min(cfg.n_images, len(data))
    x, y = data.x[:n], data.y[:n]
    clean_acc = float((clean_logits[:n].argmax(1).cpu() == y).float().mean())
    acc, kept = corruption_accuracy(clf, x, y, cfg, batch_size=batch_size, progress=progress, keep=1)
    cols = [f"severity {s}" for s in cfg.severities]
    table = Table("Accuracy under common corruptions", ["corruption", *cols, "mean"],
                  [[c, *acc[i].tolist(), float(acc[i].mean())] for i, c in enumerate(cfg.corruptions)])
    metrics = {"n_images": n, "clean_accuracy": clean_acc, "mean_corruption_accuracy": float(acc.mean()),
               "accuracy": {c: {str(s): float(acc[i, j]) for j, s in enumerate(cfg.severities)}
                            for i, c in enumerate(cfg.corruptions)}}
    tables = [table]
    if baseline is not None:
        with torch.inference_mode():
            bb = forward_batch(baseline, baseline.device, sample_shape=x.shape[1:], override=batch_size)
            base_clean = float((baseline.predict(x, bb).argmax(1).cpu() == y).float().mean())
        base_acc, _ = corruption_accuracy(baseline, x, y, cfg, batch_size=batch_size, progress=progress)
        errs = corruption_errors(acc, clean_acc, base_acc, base_clean)
        metrics.update(mce=errs["mce"], relative_mce=errs["relative_mce"], baseline=baseline.name,
                       baseline_clean_accuracy=base_clean, baseline_mean_corruption_accuracy=float(base_acc.mean()))
        tables.append(Table(f"Corruption error against the baseline {baseline.name}",
                            ["corruption", "CE", "relative CE", "baseline mean accuracy"],
                            [[c, errs["ce"][i], errs["relative_ce"][i], float(base_acc[i].mean())]
                             for i, c in enumerate(cfg.corruptions)]))
    flags = monotone_flags(acc, cfg.corruptions, cfg.severities, n)
    section = SectionResult("corruptions", "Common corruptions (Hendrycks & Dietterich 2019)", metrics, tables,
                            flags=flags, config=asdict(cfg), seconds=0.0)
    if out_dir is not None and kept is not None:
        _figures(section, acc, kept, x[0], cfg, clean_acc, out_dir)
    section.seconds = time.perf_counter() - t0
    return section


def _figures(section: SectionResult, acc: Tensor, kept: Tensor, clean: Tensor, cfg: CorruptionsConfig,
             clean_acc: float, out_dir: Path) -> None:
    from ...report.figures import corruptions as fig
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.accuracy_heatmap(acc, cfg.corruptions, cfg.severities, out_dir / "corruptions_heatmap.png", clean_acc=clean_acc)
    section.figures.append(Figure("Accuracy under common corruptions", "corruptions_heatmap.png",
                                  "Rows: corruption families; columns: severity 1 (mild) to 5 (strong)."))
    if len(kept) and kept.shape[2]:
        fig.corruption_grid(kept[:, :, 0], cfg.corruptions, cfg.severities, out_dir / "corruptions_grid.png",
                            clean=clean)
        section.figures.append(Figure("One image at every corruption and severity", "corruptions_grid.png"))
