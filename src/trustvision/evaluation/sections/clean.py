"""The ``clean`` section: accuracy on unperturbed data and checks of the model's outputs.

Checks (each a :class:`~trustvision.results.Flag` with a sentence a person can act on):

* ``nan-logits`` (error): the model returns NaN/Inf — nothing downstream is meaningful;
* ``probabilities-not-logits`` (warning): outputs are non-negative and sum to one per row,
  i.e. softmax was applied inside the model; cross-entropy gradients then saturate and
  gradient attacks underestimate vulnerability (Carlini & Wagner 2017, sec. 4);
* ``non-deterministic`` (warning): two identical passes disagree — a randomised model or
  defence, which must be evaluated with EOT (Athalye et al. 2018), not plain PGD;
* ``low-clean-accuracy`` (warning): near chance, so robustness numbers say little.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from ...data.dataset import Dataset
from ...errors import TrustVisionError
from ...models.classifier import Classifier
from ...progress import Progress, Quiet
from ...results import Flag, SectionResult, Table


def per_class_accuracy(correct: Tensor, y: Tensor, num_classes: int) -> Tensor:
    """(K,) accuracy per true class (NaN where a class has no images)."""
    counts = torch.bincount(y, minlength=num_classes).float()
    hits = torch.bincount(y, weights=correct.float(), minlength=num_classes)
    return hits / counts.where(counts > 0, torch.full_like(counts, float("nan")))


def output_flags(clf: Classifier, x: Tensor, logits: Tensor) -> list[Flag]:
    """Flags about the model's outputs, from logits (N, K) of images x (N, C, H, W) on clf.device."""
    flags: list[Flag] = []
    probs_like = bool((logits >= 0).all() and (logits <= 1).all()
                      and ((logits.sum(1) - 1).abs() < 1e-3).all())
    if probs_like:
        flags.append(Flag("probabilities-not-logits", "warning",
                          "The model's outputs are non-negative and sum to 1: it seems to apply softmax itself. "
                          "Gradient attacks on probabilities saturate and understate vulnerability; "
                          "wrap the model so it returns logits (remove the final softmax).",
                          {"row_sum_max_dev": float((logits.sum(1) - 1).abs().max())}))
    with torch.inference_mode():
        again = clf(x)
    scale = logits.abs().amax().clamp_min(1e-6)
    diff = float((again - logits).abs().amax() / scale)
    if diff > 1e-4:
        flags.append(Flag("non-deterministic", "warning",
                          f"Two identical forward passes differ (relative max difference {diff:.2g}): the model "
                          "or its defence is randomised. Plain PGD is not a sound evaluation of a random model; "
                          "use EOT (expectation over transformations) and report it.",
                          {"relative_max_diff": diff}))
    return flags


def clean_section(clf: Classifier, data: Dataset, *, batch_size: int = 256,
                  progress: Progress | None = None) -> tuple[SectionResult, Tensor]:
    """Clean accuracy, per-class accuracy and output checks.

    Returns the section and the clean logits (N, K) on the CPU.
    """
    progress = progress or Quiet()
    t0 = time.perf_counter()
    advance = progress.task("clean accuracy", (len(data) + batch_size - 1) // batch_size)
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            chunks.append(clf(data.x[i:i + batch_size].to(clf.device)).cpu())
            advance(1)
    logits = torch.cat(chunks)
    bad = ~torch.isfinite(logits).all(1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        where = data.paths[first] if data.paths else f"index {first}"
        raise TrustVisionError(f"model {clf.name!r} returned NaN/Inf logits for {int(bad.sum())} of {len(data)} "
                               f"images (first: {where})")
    pred = logits.argmax(1)
    correct = pred == data.y
    acc = float(correct.float().mean()) if len(data) else float("nan")
    pcs = per_class_accuracy(correct, data.y, clf.num_classes)
    chance = 1.0 / clf.num_classes
    probe = data.x[:64].to(clf.device)
    flags = output_flags(clf, probe, logits[:64].to(clf.device))
    if acc < chance + 0.5 * (1 - chance) * 0.2:
        flags.append(Flag("low-clean-accuracy", "warning",
                          f"Clean accuracy {acc:.1%} is close to chance ({chance:.1%}); check the model, its "
                          "normalisation (--mean/--std) and the label order before reading robustness numbers.",
                          {"clean_accuracy": acc, "chance": chance}))
    table = Table("Accuracy per class", ["class", "images", "clean accuracy"],
                  [[clf.labels[k], int((data.y == k).sum()), float(pcs[k])] for k in range(clf.num_classes)])
    section = SectionResult(
        name="clean", title="Clean accuracy and model checks",
        metrics={"clean_accuracy": acc, "n_images": len(data), "chance": chance,
                 "per_class_accuracy": {clf.labels[k]: float(pcs[k]) for k in range(clf.num_classes)}},
        tables=[table], flags=flags, seconds=time.perf_counter() - t0)
    return section, logits
