"""The ``clean`` section: accuracy on unperturbed data and checks of the model's outputs.

Checks (each a :class:`~trustvision.results.Flag` with a sentence a person can act on):

* ``nan-logits`` (error): the model returns NaN/Inf — nothing downstream is meaningful;
* ``probabilities-not-logits`` (warning): outputs are non-negative and sum to one per row,
  i.e. softmax was applied inside the model; cross-entropy gradients then saturate and
  gradient attacks underestimate vulnerability (Carlini & Wagner 2017, sec. 4);
* ``non-deterministic`` (warning): two identical passes disagree — a randomised model or
  defence, which must be evaluated with EOT (Athalye et al. 2018), not plain PGD;
* ``low-clean-accuracy`` (warning): near chance, so robustness numbers say little;
* ``constant-predictions`` (error): the model predicts one class for (nearly) every image although the
  labels hold several classes — a degenerate model (e.g. a random-init network) whose "robustness" is
  meaningless;
* ``below-majority-baseline`` (warning): clean accuracy is not above the majority-class rate (always
  answering the most frequent label) by more than a binomial margin;
* ``skipped-images`` (warning): ``--skip-bad-images`` left unreadable files out (listed in the evidence).

Metrics name both baselines: ``majority_class_rate`` (the share of the most frequent true class, the
honest chance line on imbalanced data) and ``chance_1_over_k`` (1/K; also kept as ``chance``).
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
from ...scale.shard import map_batches


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


CONSTANT_SHARE = 0.95      # one predicted class for at least this share of images: constant predictions
BASELINE_Z = 2.0           # binomial margin (standard errors) above the majority-class rate


def baseline_flags(pred: Tensor, y: Tensor, labels: list[str]) -> tuple[list[Flag], dict]:
    """Flags comparing predictions (N,) with trivial baselines on labels (N,): ``constant-predictions`` and
    ``below-majority-baseline``.  Returns the flags and the metrics ``majority_class_rate``, ``majority_class``,
    ``top_prediction_share``.
    """
    n, k = len(y), len(labels)
    if n == 0:
        return [], {"majority_class_rate": None, "majority_class": None, "top_prediction_share": None}
    true_counts = torch.bincount(y, minlength=k)
    pred_counts = torch.bincount(pred, minlength=k)
    major = int(true_counts.argmax())
    rate = float(true_counts[major]) / n
    top = int(pred_counts.argmax())
    top_share = float(pred_counts[top]) / n
    acc = float((pred == y).float().mean())
    stats = {"majority_class_rate": rate, "majority_class": labels[major], "top_prediction_share": top_share}
    flags: list[Flag] = []
    top_true = float(true_counts[top]) / n
    several = int((true_counts > 0).sum()) > 1
    if n >= 10 and several and top_share >= CONSTANT_SHARE and top_true < CONSTANT_SHARE - 0.05:
        flags.append(Flag("constant-predictions", "error",
                          f"The model predicts class {labels[top]!r} for {top_share:.1%} of the images "
                          f"({int(pred_counts[top])} of {n}) although only {top_true:.1%} of them belong to it: a "
                          "degenerate model (untrained weights, wrong --num-classes or normalisation). Its robustness "
                          "numbers are meaningless.",
                          {"class": labels[top], "prediction_share": top_share, "label_share": top_true, "n": n}))
    margin = BASELINE_Z * (rate * (1 - rate) / n) ** 0.5
    if acc <= rate + margin:
        flags.append(Flag("below-majority-baseline", "warning",
                          f"Clean accuracy {acc:.1%} (of {n} images) is not above the majority-class rate {rate:.1%} "
                          f"(always answering {labels[major]!r}) by more than the binomial margin {margin:.1%}: the "
                          "model does no better than a constant guess. Check the model, its normalisation and the "
                          "label order before reading robustness numbers.",
                          {"clean_accuracy": acc, "majority_class_rate": rate, "majority_class": labels[major],
                           "margin": margin, "n": n}))
    return flags, stats


def skipped_flags(data: Dataset) -> list[Flag]:
    """A ``skipped-images`` warning when ``--skip-bad-images`` left unreadable files out of the data."""
    skipped = data.info.get("skipped") or []
    if not skipped:
        return []
    first = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:3])
    return [Flag("skipped-images", "warning",
                 f"{len(skipped)} unreadable image file(s) were skipped (--skip-bad-images) and are not in these "
                 f"numbers: {first}{' ...' if len(skipped) > 3 else ''}. Fix or remove them.",
                 {"skipped": len(skipped), "files": skipped})]


def clean_section(clf: Classifier, data: Dataset, *, batch_size: int = 256,
                  progress: Progress | None = None) -> tuple[SectionResult, Tensor]:
    """Clean accuracy, per-class accuracy and output checks of images ``data.x`` (N, C, H, W), labels (N,).

    Returns the section and the clean logits (N, K) on the CPU.  Under torchrun the forward batches are
    split across the ranks and gathered (:func:`trustvision.scale.shard.map_batches`): every rank gets all N.
    """
    progress = progress or Quiet()
    t0 = time.perf_counter()
    nb = (len(data) + batch_size - 1) // batch_size
    advance = progress.task("clean accuracy", nb)

    def one(b: int) -> Tensor:                  # (B, K) logits of batch b, on the CPU
        with torch.inference_mode():
            return clf(data.x[b * batch_size:(b + 1) * batch_size].to(clf.device)).cpu()

    chunks = map_batches(one, nb, advance)      # split across torchrun ranks, gathered in order
    logits = torch.cat(chunks) if chunks else torch.zeros(0, clf.num_classes)
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
    base_flags, base = baseline_flags(pred, data.y, clf.labels)
    flags += base_flags + skipped_flags(data)
    table = Table("Accuracy per class", ["class", "images", "clean accuracy"],
                  [[clf.labels[k], int((data.y == k).sum()), float(pcs[k])] for k in range(clf.num_classes)])
    section = SectionResult(
        name="clean", title="Clean accuracy and model checks",
        metrics={"clean_accuracy": acc, "n_images": len(data), "chance": chance, "chance_1_over_k": chance, **base,
                 "per_class_accuracy": {clf.labels[k]: float(pcs[k]) for k in range(clf.num_classes)}},
        tables=[table], flags=flags, seconds=time.perf_counter() - t0)
    return section, logits
