"""``trustvision train``: standard, PGD-AT, fast-AT and TRADES training (see :mod:`trustvision.training.trainer`).

Runs unchanged under ``torchrun --nproc-per-node N -m trustvision train ...`` (DDP, gloo on the CPU, nccl on
CUDA).  Writes ``OUT/model.safetensors`` (plain weights, auditable with ``--arch``), ``OUT/checkpoint.safetensors``
(resume), ``OUT/history.json`` and ``OUT/training.png`` (per-epoch curves); see ``docs/training.md``.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import torch
import typer
from rich.markup import escape
from rich.table import Table as RichTable

from ...errors import TrustVisionError
from ...parsing import parse_numbers
from ..console import console, progress_bars
from ..options import MAX_PIXELS, DataOpt, MaxPixelsOpt, MeanOpt, OutOpt, SeedOpt, SizeOpt, StdOpt, parse_size

if TYPE_CHECKING:
    from torch import nn

    from ...data import Dataset


def train(arch: Annotated[str, typer.Option(help="architecture, e.g. trustvision:smallcnn or torchvision:resnet18")],
          data: DataOpt, out: OutOpt = Path("trustvision-train"),
          method: Annotated[str, typer.Option(help="standard | pgd | fast | trades")] = "standard",
          eps: Annotated[str, typer.Option(help="L-inf training budget, e.g. 0.3 or 8/255")] = "8/255",
          epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
          batch_size: Annotated[int, typer.Option("--batch-size", help="global batch (split across processes)")] = 128,
          lr: Annotated[float, typer.Option(help="peak learning rate")] = 2e-3,
          optimizer: Annotated[str, typer.Option(help="adam | sgd")] = "adam",
          schedule: Annotated[str, typer.Option(help="cosine | step | constant")] = "cosine",
          steps: Annotated[int, typer.Option(help="PGD / TRADES inner steps")] = 10,
          beta: Annotated[float, typer.Option(help="TRADES trade-off beta")] = 6.0,
          eps_warmup: Annotated[float, typer.Option(help="epochs over which eps ramps up from 0")] = 0.0,
          noise_sigma: Annotated[float, typer.Option(help="Gaussian noise augmentation (randomized smoothing)")] = 0.0,
          amp: Annotated[str, typer.Option(help="off | bf16 | fp16 (fp16: CUDA, with loss scaling)")] = "off",
          eval_fraction: Annotated[float, typer.Option(help="held-out share of --data for per-epoch evaluation")] = 0.2,
          eval_steps: Annotated[int, typer.Option(help="PGD steps of the per-epoch evaluation")] = 10,
          eval_images: Annotated[int, typer.Option(help="images of the per-epoch evaluation")] = 500,
          num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="default: from the labels")] = None,
          input_size: SizeOpt = None, mean: MeanOpt = None, std: StdOpt = None,
          device: Annotated[str, typer.Option(help="cpu | cuda (under torchrun: cuda:LOCAL_RANK)")] = "cpu",
          seed: SeedOpt = 0,
          no_resume: Annotated[bool, typer.Option("--no-resume", help="ignore an existing checkpoint")] = False,
          max_pixels: MaxPixelsOpt = MAX_PIXELS) -> None:
    """Train a model, adversarially or not; evaluate clean and PGD accuracy after every epoch; checkpoint and resume."""
    from ...progress import Quiet
    from ...scale import dist as distributed
    from ...training import TrainConfig
    from ...training import train as run_train

    budget = parse_numbers(eps, "--eps")
    if not budget or len(budget) != 1:
        raise TrustVisionError(f"--eps: expected one number, got {eps!r}")
    if not 0 <= eval_fraction < 1:
        raise TrustVisionError(f"--eval-fraction must be in [0, 1), got {eval_fraction}")
    cfg = TrainConfig(method=method, epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr,
                      schedule=schedule, eps=budget[0], eps_warmup_epochs=eps_warmup, attack_steps=steps,
                      trades_beta=beta, noise_sigma=noise_sigma, amp=amp, eval_steps=eval_steps,
                      eval_images=eval_images, seed=seed)
    dist = distributed.init(device)
    try:
        module, train_set, eval_set, opts = _prepare(arch, data, num_classes, parse_size(input_size), eval_fraction,
                                                     seed, max_pixels)
        opts.update(mean=parse_numbers(mean, "--mean"), std=parse_numbers(std, "--std"))
        if dist.main:
            console.print(f"{cfg.method} training of {arch} on {data}: {len(train_set)} train / "
                          f"{len(eval_set) if eval_set else 0} eval images, {dist.world} process(es) on {dist.device}",
                          markup=False)
        with progress_bars() if dist.main else nullcontext() as progress:
            res = run_train(module, train_set, eval_set, cfg, clf_options=opts, out_dir=out, resume=not no_resume,
                            dist=dist, progress=progress or Quiet())
    finally:
        distributed.shutdown()
    if dist.main:
        from ...report.figures.train import training_curves
        _print_history(res.history, res.resumed_from)
        training_curves(res.history, out / "training.png", title=f"{cfg.method} training of {arch}")
        console.print(f"curves: {out / 'training.png'}\nweights: {out / 'model.safetensors'}  (audit with --model "
                      f"{out / 'model.safetensors'} --arch {arch})\nhistory: {out / 'history.json'}", markup=False)


def _prepare(arch: str, data: str, num_classes: int | None, size: tuple[int, int] | None, eval_fraction: float,
             seed: int, max_pixels: int | None = MAX_PIXELS
             ) -> tuple["nn.Module", "Dataset", "Dataset | None", dict[str, Any]]:
    """Load and split the data, build ``arch`` (seeded: the same initial weights on every rank) and check that
    it runs on the images; returns the module, the train/eval sets and the Classifier options (minus mean/std)."""
    from ...data import load_dataset
    from ...models.loading import build_architecture, fixed_input_size, probe_architecture
    ds = load_dataset(data, size=size, max_pixels=max_pixels)
    nc = num_classes or int(ds.y.max()) + 1
    ds = ds.conform(ds.x.shape[1], nc)
    train_set, eval_set = ds.split(eval_fraction, seed=seed) if eval_fraction > 0 else (ds, None)
    torch.manual_seed(seed)                       # the same initial weights on every rank
    module, _, fixed = build_architecture(arch, nc, ds.x.shape[1], None, size)
    fixed = fixed or fixed_input_size(module)     # e.g. ViTs: inputs are resized to it inside the Classifier
    probed = probe_architecture(module.eval(), arch, None, size or fixed or tuple(ds.x.shape[-2:]), torch.device("cpu"))
    if isinstance(probed, BaseException):
        raise TrustVisionError(f"{arch} does not run on {tuple(ds.x.shape[1:])} images from {data}: "
                               f"{str(probed).splitlines()[0] if str(probed) else type(probed).__name__}")
    if probed[0] != nc:
        raise TrustVisionError(f"{arch} outputs {probed[0]} classes but {data} has {nc}; pass --num-classes")
    if probed[1] != ds.x.shape[1]:             # e.g. a 3-channel torchvision model on grey digits
        train_set, eval_set = (d.conform(probed[1], nc) if d is not None else None for d in (train_set, eval_set))
    return module, train_set, eval_set, {"num_classes": nc, "channels": probed[1], "input_size": size or fixed}


def _print_history(history: list[dict], resumed_from: int) -> None:
    t = RichTable(title="per-epoch metrics" + (f" (resumed after epoch {resumed_from})" if resumed_from else ""))
    for col in ("epoch", "lr", "train loss", "train acc", "clean acc", "PGD acc", "seconds"):
        t.add_column(col, justify="right")
    for h in history:
        t.add_row(str(h["epoch"]), f"{h['lr']:.2e}", f"{h['train_loss']:.3f}", f"{h['train_accuracy']:.1%}",
                  f"{h['clean_accuracy']:.1%}" if "clean_accuracy" in h else "-",
                  f"{h['robust_accuracy']:.1%} @ {h['eval_eps']:.3g}" if "robust_accuracy" in h else "-",
                  f"{h['seconds']:.1f}")
    console.print(t)
    last = next((h for h in reversed(history) if "warning" in h), None)
    if last is not None:
        console.print(f"[yellow]warning[/yellow] (epoch {last['epoch']}): {escape(str(last['warning']))}",
                      highlight=False)
