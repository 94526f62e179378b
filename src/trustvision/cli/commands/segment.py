"""``trustvision segment``: train, evaluate and attack segmenters (U-Net, Feedback U-Net, annotation leak).

A Typer sub-app with four commands (see ``docs/segmentation.md``):

* ``segment train --data DIR --out OUT --model unet|feedback-unet [--rounds 2] [--leak knn:3] [--epochs ..]``
  trains on the ``train`` split, writes ``OUT/model.safetensors`` (+ ``model.json``, ``leak.safetensors``,
  ``checkpoint.safetensors`` for resume), then evaluates and attacks it on the ``--eval-split``;
* ``segment eval --data DIR --weights FILE --out OUT``: clean metrics (mIoU, per round, per class, boundary F1);
* ``segment attack --data DIR --weights FILE --eps-linf 0,2/255,4/255,8/255 --out OUT``: robust mIoU curves;
* ``segment demo``: U-Net, Feedback U-Net and Feedback U-Net + leak on ``bundled:cells`` (or
  ``--data bundled:digit-scenes``), compared in one report.

Every command writes ``OUT/results.json`` and ``OUT/report.html`` (resume and exit codes as the audit:
0 ok, 2 bad input with one line naming the culprit).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from ...errors import TrustVisionError
from ...parsing import parse_numbers
from ..console import console, print_summary
from ..options import BatchOpt, DeviceOpt, NoResumeOpt, OutOpt, SeedOpt

if TYPE_CHECKING:
    from ...segmentation.base import SegDataset

SegDataOpt = Annotated[str, typer.Option("--data", "-d", help="folder with images/ + masks/ (train/ val/ test/ or "
                                         "split files) | bundled:digit-scenes | bundled:cells")]
SegWeightsOpt = Annotated[Path, typer.Option("--weights", help="model.safetensors written by segment train")]
SplitOpt = Annotated[str, typer.Option("--split", help="train | val | test | all")]
EpsOpt = Annotated[str, typer.Option("--eps-linf", help="L-inf budgets, e.g. 0,1/255,2/255,4/255,8/255")]
StepsOpt = Annotated[int, typer.Option("--steps", help="PGD steps per budget")]
AttackNOpt = Annotated[int, typer.Option("--n-attack", help="images attacked (the first N of the split)")]
SizeOpt = Annotated[Optional[int], typer.Option("--size", help="resize images and masks to SIZE x SIZE")]
IgnoreOpt = Annotated[int, typer.Option("--ignore-index", help="mask value that is no class")]
RoundsOpt = Annotated[Optional[int], typer.Option("--rounds", help="feedback rounds at inference (default: trained)")]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", help="use only the first N images of each split")]
DEFAULT_EPS = "0,1/255,2/255,4/255,8/255"


def _load(data: str, split: str, size: int | None, ignore_index: int, seed: int, limit: int | None) -> "SegDataset":
    from ...segmentation.data import load_segmentation
    if limit is not None and limit < 1:
        raise TrustVisionError(f"--limit must be >= 1, got {limit}")
    ds = load_segmentation(data, split, size=size, ignore_index=ignore_index, seed=seed)
    return ds if limit is None or limit >= len(ds) else ds.subset(range(limit))


def _config(eps_linf: str, steps: int, n_attack: int, batch_size: int, seed: int, attack: bool = True):
    from ...segmentation.section import SegmentConfig
    eps = parse_numbers(eps_linf, "--eps-linf") if attack else [0.0]
    if not eps or any(e < 0 or e > 1 for e in eps):
        raise TrustVisionError(f"--eps-linf: expected budgets in [0, 1], got {eps_linf!r}")
    return SegmentConfig(eps_linf=tuple(eps), steps=steps, n_attack=n_attack, batch_size=batch_size, seed=seed,
                         fgsm=attack and any(e > 0 for e in eps))


def _finish(results: dict, out: Path) -> None:
    print_summary({**results, "gates": []}, out)


def _weights(path: Path, device: str, rounds: int | None):
    from ...segmentation.train import load_segmenter
    if not path.is_file():
        raise TrustVisionError(f"--weights {path}: no such file")
    return load_segmenter(path, device=device, rounds=rounds)


def train(data: SegDataOpt, out: OutOpt = Path("trustvision-segment"),
          model: Annotated[str, typer.Option("--model", help="unet | feedback-unet")] = "unet",
          rounds: Annotated[int, typer.Option("--rounds", help="feedback rounds (feedback-unet)")] = 2,
          leak: Annotated[Optional[str], typer.Option("--leak", help="annotation leak prior, e.g. knn:3")] = None,
          epochs: Annotated[int, typer.Option("--epochs", help="training epochs")] = 10,
          batch_size: BatchOpt = 16, lr: Annotated[float, typer.Option("--lr", help="Adam learning rate")] = 3e-3,
          depth: Annotated[int, typer.Option("--depth", help="U-Net down-sampling stages")] = 3,
          width: Annotated[int, typer.Option("--width", help="channels of the first stage")] = 16,
          precision: Annotated[str, typer.Option("--precision", help="fp32 | bf16")] = "fp32",
          class_weights: Annotated[str, typer.Option("--class-weights", help="none | median | sqrt-median: "
                                                     "loss weights against class imbalance")] = "none",
          eval_split: Annotated[str, typer.Option("--eval-split", help="split evaluated after training")] = "val",
          eps_linf: EpsOpt = DEFAULT_EPS, steps: StepsOpt = 10, n_attack: AttackNOpt = 32, size: SizeOpt = None,
          ignore_index: IgnoreOpt = 255, limit: LimitOpt = None, device: DeviceOpt = "cpu", seed: SeedOpt = 0,
          no_resume: NoResumeOpt = False) -> None:
    """Train a U-Net / Feedback U-Net (optionally with the annotation leak), then evaluate and attack it."""
    from contextlib import nullcontext

    from ...progress import rich_progress
    from ...scale.dist import init, shutdown
    from ...segmentation.leak import parse_leak
    from ...segmentation.run import fit_segmenter, run_segmentation
    from ...segmentation.train import ARCHITECTURES, CLASS_WEIGHTS
    if model not in ARCHITECTURES:
        raise TrustVisionError(f"--model must be one of {', '.join(ARCHITECTURES)}, got {model!r}")
    if class_weights not in CLASS_WEIGHTS:
        raise TrustVisionError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {class_weights!r}")
    cfg = _config(eps_linf, steps, n_attack, batch_size, seed)
    k = parse_leak(leak)
    train_set = _load(data, "train", size, ignore_index, seed, limit)
    eval_set = _load(data, eval_split, size, ignore_index, seed, limit)
    dist = init(device)                           # under torchrun: DDP training, then rank 0 evaluates alone
    if dist.main:
        console.print(f"training {model}{f' + leak knn:{k}' if k else ''} on {train_set.name}: {len(train_set)} "
                      f"images, {train_set.num_classes} classes, {dist.world} process(es); evaluating on "
                      f"{eval_set.name} ({len(eval_set)} images)")
    try:
        with rich_progress(console) if dist.main else nullcontext() as progress:
            seg, history = fit_segmenter(model, train_set, out, rounds=rounds, leak_k=k, depth=depth, width=width,
                                         epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                                         precision=precision, resume=not no_resume, progress=progress,
                                         class_weighting=class_weights)
    finally:
        shutdown()
    if not dist.main:
        return
    with rich_progress(console) as progress:
        results = run_segmentation({model: seg}, eval_set, cfg, out, data_spec=f"{data} ({eval_split})",
                                   resume=not no_resume, progress=progress, say=console.print,
                                   extra={"training": {model: history}})
    console.print(f"weights: {out / 'model.safetensors'}")
    _finish(results, out)


def eval_(data: SegDataOpt, weights: SegWeightsOpt, out: OutOpt = Path("trustvision-segment-eval"),
          split: SplitOpt = "test", rounds: RoundsOpt = None, batch_size: BatchOpt = 32, size: SizeOpt = None,
          ignore_index: IgnoreOpt = 255, limit: LimitOpt = None, device: DeviceOpt = "cpu", seed: SeedOpt = 0,
          no_resume: NoResumeOpt = False) -> None:
    """Evaluate a trained segmenter: mIoU (per round), per-class IoU, Dice, pixel accuracy, boundary F1."""
    from ...segmentation.run import run_segmentation
    ds = _load(data, split, size, ignore_index, seed, limit)
    seg = _weights(weights, device, rounds)
    cfg = _config("0", 1, 1, batch_size, seed, attack=False)
    results = run_segmentation({"model": seg}, ds, cfg, out, data_spec=f"{data} ({split})", resume=not no_resume,
                               say=console.print)
    _finish(results, out)


def attack(data: SegDataOpt, weights: SegWeightsOpt, out: OutOpt = Path("trustvision-segment-attack"),
           eps_linf: EpsOpt = DEFAULT_EPS, steps: StepsOpt = 10,
           restarts: Annotated[int, typer.Option("--restarts", help="PGD random restarts")] = 1,
           attack_rounds: Annotated[str, typer.Option("--attack-rounds", help="last | all: the rounds the loss "
                                                      "covers")] = "last",
           n_attack: AttackNOpt = 64, split: SplitOpt = "test",
           rounds: RoundsOpt = None,
           batch_size: BatchOpt = 32, size: SizeOpt = None, ignore_index: IgnoreOpt = 255, limit: LimitOpt = None,
           device: DeviceOpt = "cpu", seed: SeedOpt = 0, no_resume: NoResumeOpt = False) -> None:
    """Attack a trained segmenter with PGD and FGSM on the per-pixel loss: robust mIoU vs L-inf budget, flags."""
    import dataclasses

    from ...progress import rich_progress
    from ...segmentation.run import run_segmentation
    cfg = dataclasses.replace(_config(eps_linf, steps, n_attack, batch_size, seed), restarts=restarts,
                              attack_rounds=attack_rounds)
    ds = _load(data, split, size, ignore_index, seed, limit)
    seg = _weights(weights, device, rounds)
    with rich_progress(console) as progress:
        results = run_segmentation({"model": seg}, ds, cfg, out, data_spec=f"{data} ({split})",
                                   resume=not no_resume, progress=progress, say=console.print)
    _finish(results, out)


def demo(out: OutOpt = Path("trustvision-segment-demo"),
         data: Annotated[str, typer.Option("--data", help="bundled:cells | bundled:digit-scenes")] = "bundled:cells",
         epochs: Annotated[int, typer.Option("--epochs", help="training epochs per model")] = 8,
         n_train: Annotated[int, typer.Option("--n-train", help="training images")] = 96,
         n_test: Annotated[int, typer.Option("--n-test", help="test images evaluated")] = 48,
         n_attack: AttackNOpt = 8, steps: StepsOpt = 10, device: DeviceOpt = "cpu", seed: SeedOpt = 0,
         no_resume: NoResumeOpt = False) -> None:
    """Train U-Net, Feedback U-Net and Feedback U-Net + leak on a bundled demo set; compare them in one report."""
    from ...progress import rich_progress
    from ...segmentation.run import demo_segmenters, run_segmentation
    cfg = _config("0,2/255,4/255,8/255", steps, n_attack, 16, seed)     # 3 budgets, 8 images: the demo in ~5 min
    with rich_progress(console) as progress:
        models, test, histories = demo_segmenters(data, out / "models", n_train=n_train, n_test=n_test, epochs=epochs,
                                                  seed=seed, device=device, resume=not no_resume, progress=progress)
        results = run_segmentation(models, test, cfg, out, data_spec=f"{data} (test)", resume=not no_resume,
                                   progress=progress, say=console.print, extra={"training": histories})
    _finish(results, out)


def sub_app(wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> typer.Typer:
    """The ``segment`` Typer sub-app; ``wrap`` is the main app's command wrapper (one-line errors, exit 2)."""
    app = typer.Typer(no_args_is_help=True, help="Segmentation: train, evaluate and attack U-Net / Feedback U-Net "
                                                 "segmenters (with the test-time annotation leak).")
    for name, fn in (("train", train), ("eval", eval_), ("attack", attack), ("demo", demo)):
        app.command(name)(wrap(fn))
    return app
