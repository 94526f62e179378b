"""One trainer for standard, noise-augmented, PGD-AT, fast-AT and TRADES training, on 1 or N processes.

The methods (papers, losses) are in :mod:`.methods`, the settings in :class:`~.config.TrainConfig`.
:func:`train` runs them with checkpoints, resume, DDP and per-epoch history; :func:`train_classifier`
is the short form used for the small cached models (the demo model, the zero-shot zoo, the
noise-trained smoothing base model): the ``standard`` method with the ``onecycle`` recipe.

**Two recipes for data order and noise.**

* ``cosine`` / ``step`` / ``constant`` schedules: each rank reads its share of every global batch
  through a ``DistributedSampler`` (reshuffled from ``seed + epoch``), random starts come from a
  generator seeded by (seed, epoch) and Gaussian noise from another one; the learning rate is a
  function of the step.
* ``onecycle`` (Smith & Topin 2019, :class:`torch.optim.lr_scheduler.OneCycleLR` over all steps):
  ``torch.manual_seed(seed)`` first, one ``torch.Generator`` seeded with ``seed`` draws a
  ``randperm`` per epoch, the global batch ``b`` of an epoch is ``perm[b·B:(b+1)·B]`` (each rank takes
  every ``world``-th image), noise is ``torch.randn`` from the global generator.  This is the recipe
  the cached models were trained with, kept bit for bit so their cache entries stay valid.

**Distributed**: under ``torchrun --nproc-per-node N`` the module is wrapped in
``DistributedDataParallel``; each global batch of ``batch_size`` images is split as ``batch_size / N``
per rank, and random starts and noise are drawn for the whole global batch and then sliced, so N processes
follow the same trajectory as one, up to floating-point reduction order.  Metrics are summed across ranks;
rank 0 writes checkpoints.

**Checkpoints**: after every epoch, ``OUT/checkpoint.safetensors`` (model + optimizer + history, see
:mod:`.checkpoint`), written atomically.  A re-run with the same configuration resumes after the last
finished epoch.  Data order, random starts and learning rate depend only on (seed, epoch, step) — for
``onecycle`` the shuffling and global generator states are stored in the checkpoint — so a resumed run
ends with the same weights as an uninterrupted one.

Shapes: training images (N, C, H, W) in [0, 1], labels (N,) int64, as a :class:`~trustvision.data.dataset.Dataset`.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from ..data.dataset import Dataset
from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..persist import write_json_atomic
from ..progress import Progress, Quiet
from . import checkpoint
from .config import AMP, METHODS, OPTIMIZERS, SCHEDULES, TrainConfig, TrainResult
from ..scale.dist import SINGLE, Dist
from .methods import evaluate, overfitting_warning, pgd_from, training_inputs, training_loss

__all__ = ["AMP", "METHODS", "OPTIMIZERS", "SCHEDULES", "TrainConfig", "TrainResult", "evaluate",
           "overfitting_warning", "pgd_from", "train", "train_classifier"]


def _lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    if cfg.schedule == "step":                         # x0.1 at 50 % and 75 % of training
        return 0.1 ** ((step >= total // 2) + (step >= 3 * total // 4))
    return 1.0


def _optimizer(cfg: TrainConfig, module: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class _Run:
    """Everything one training run carries from step to step."""

    cfg: TrainConfig
    module: nn.Module
    net: nn.Module                                  # ``module``, or its DDP wrapper
    clf: Classifier
    opt: torch.optim.Optimizer
    dist: Dist
    n_train: int
    ckpt_path: Path | None
    history: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    sched: Any = None                               # OneCycleLR for ``onecycle``
    order_gen: torch.Generator | None = None        # ``onecycle``: one shuffling stream across epochs
    sampler: DistributedSampler | None = None
    steps_per_epoch: int = 0
    scaler: Any = None
    autocast: Callable[[], ContextManager] = nullcontext

    @property
    def onecycle(self) -> bool:
        return self.cfg.schedule == "onecycle"

    @property
    def total(self) -> int:
        return self.cfg.epochs * self.steps_per_epoch


def _setup(module: nn.Module, train_data: Dataset, cfg: TrainConfig, clf_options: dict[str, Any] | None,
           out_dir: Path | None, dist: Dist) -> _Run:
    """Device, Classifier view, optimizer, data order and precision of a fresh run (no checkpoint yet)."""
    opts = {"num_classes": int(train_data.y.max()) + 1, "channels": train_data.x.shape[1], **(clf_options or {})}
    if cfg.batch_size % dist.world:
        raise TrustVisionError(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world} processes")
    if cfg.schedule == "onecycle":
        torch.manual_seed(cfg.seed)
    module.to(dist.device)
    clf = Classifier(module, device=dist.device, precision="bf16" if cfg.amp == "bf16" else "fp32",
                     name="training", **opts)
    run = _Run(cfg, module, module, clf, _optimizer(cfg, module), dist, len(train_data),
               Path(out_dir) / "checkpoint.safetensors" if out_dir is not None else None)
    per_rank = cfg.batch_size // dist.world
    if run.onecycle:
        run.order_gen = torch.Generator().manual_seed(cfg.seed)
        run.steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
    else:
        run.sampler = DistributedSampler(range(len(train_data)), num_replicas=dist.world, rank=dist.rank,
                                         shuffle=True, seed=cfg.seed)
        run.steps_per_epoch = math.ceil(len(run.sampler) / per_rank)
    run.scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.amp == "fp16")
    if cfg.amp != "off":
        dtype = torch.float16 if cfg.amp == "fp16" else torch.bfloat16
        run.autocast = lambda: torch.autocast(dist.device.type, dtype=dtype)
    return run


def _resume(run: _Run) -> None:
    """Continue from ``run.ckpt_path`` (weights, optimizer, history, ``onecycle`` RNG streams)."""
    path, cfg = run.ckpt_path, run.cfg
    if checkpoint.fingerprint_of(path) != cfg.fingerprint():
        raise TrustVisionError(f"{path} was written with other training settings; use another --out "
                               "or --no-resume to start over")
    ck = checkpoint.load(path, run.module, run.opt)
    run.history, run.start_epoch = ck.history, ck.epoch
    if run.onecycle and "rng.order" in ck.extra:
        run.order_gen.set_state(ck.extra["rng.order"])
        torch.set_rng_state(ck.extra["rng.cpu"])
        if run.dist.device.type == "cuda" and "rng.cuda" in ck.extra:
            torch.cuda.set_rng_state(ck.extra["rng.cuda"], run.dist.device)


def _rng_state(run: _Run) -> dict[str, Tensor]:
    """The ``onecycle`` recipe's random streams, for the checkpoint (empty for the other schedules)."""
    if not run.onecycle:
        return {}
    state = {"rng.order": run.order_gen.get_state(), "rng.cpu": torch.get_rng_state()}
    if run.dist.device.type == "cuda":
        state["rng.cuda"] = torch.cuda.get_rng_state(run.dist.device)
    return state


def _start_schedule(run: _Run) -> None:
    """OneCycleLR for ``onecycle`` (fast-forwarded past the epochs a checkpoint already holds)."""
    if not run.onecycle:
        return
    run.sched = torch.optim.lr_scheduler.OneCycleLR(run.opt, max_lr=run.cfg.lr, total_steps=run.total)
    with warnings.catch_warnings():                 # "scheduler.step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(run.start_epoch * run.steps_per_epoch):
            run.sched.step()


def _epoch_batches(run: _Run, epoch: int) -> Callable[[int], Tensor]:
    """``indices(s)``: this rank's training indices for step ``s`` of ``epoch``."""
    cfg, dist = run.cfg, run.dist
    if run.onecycle:
        perm = torch.randperm(run.n_train, generator=run.order_gen)
        return lambda s: perm[s * cfg.batch_size:(s + 1) * cfg.batch_size][dist.rank::dist.world]
    run.sampler.set_epoch(epoch)
    order = torch.tensor(list(iter(run.sampler)))
    per_rank = cfg.batch_size // dist.world
    return lambda s: order[s * per_rank:(s + 1) * per_rank]


def _add_noise(run: _Run, x: Tensor, g_noise: torch.Generator | None) -> Tensor:
    """``x + σ·N(0, I)``, the noise drawn for the whole global batch and sliced to this rank's share."""
    dist, shape = run.dist, (len(x) * run.dist.world, *x.shape[1:])
    if run.onecycle:                                # the global generator, on the device
        noise = torch.randn(shape, device=x.device, dtype=x.dtype)
    else:
        noise = torch.randn(shape, generator=g_noise).to(dist.device)
    return x + run.cfg.noise_sigma * noise[dist.rank::dist.world]


def _train_epoch(run: _Run, data: Dataset, epoch: int, advance: Callable[[int], None]) -> list[float]:
    """One pass over ``data``; returns [sum of loss·n, correct, n] over all ranks."""
    cfg, dist = run.cfg, run.dist
    indices = _epoch_batches(run, epoch)
    gen = torch.Generator(device=dist.device).manual_seed(cfg.seed * 1_000_003 + epoch)
    g_noise = torch.Generator().manual_seed(cfg.seed * 7_368_787 + epoch) if cfg.noise_sigma > 0 else None
    warmup = cfg.eps_warmup_epochs * run.steps_per_epoch
    sums = torch.zeros(3, dtype=torch.float64, device=dist.device)       # loss·n, correct, n
    run.module.train()
    for s in range(run.steps_per_epoch):
        step = epoch * run.steps_per_epoch + s
        idx = indices(s)
        x, y = data.x[idx].to(dist.device), data.y[idx].to(dist.device)
        if cfg.noise_sigma > 0:
            x = _add_noise(run, x, g_noise)
        eps = cfg.eps * min(1.0, (step + 1) / warmup) if warmup > 0 else cfg.eps
        x_in = training_inputs(cfg, run.clf, x, y, eps, gen, dist)
        if run.sched is None:
            for g in run.opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(cfg, step, run.total)
        with run.autocast():
            loss, logits = training_loss(cfg, lambda t: run.net(run.clf.preprocess(t)), x, x_in, y)
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.opt)
        run.scaler.update()
        if run.sched is not None:
            run.sched.step()
        sums += torch.stack([loss.detach() * len(x), (logits.argmax(1) == y).sum(),
                             torch.tensor(len(x), device=dist.device)]).double()
        advance(1)
    run.module.eval()
    return dist.sum(sums).tolist()


def _epoch_row(run: _Run, epoch: int, sums: list[float], eval_subset: Dataset | None, t0: float) -> dict:
    """The history row of a finished epoch: lr, train loss/accuracy, held-out clean/PGD accuracy, warning."""
    cfg = run.cfg
    lr = run.opt.param_groups[0]["lr"] if run.sched is not None else \
        cfg.lr * _lr_factor(cfg, (epoch + 1) * run.steps_per_epoch, run.total)
    row = {"epoch": epoch + 1, "lr": lr, "train_loss": sums[0] / sums[2], "train_accuracy": sums[1] / sums[2]}
    if eval_subset is not None:
        row.update(evaluate(run.clf, eval_subset, eps=cfg.eps if cfg.eval_eps is None else cfg.eval_eps,
                            steps=cfg.eval_steps, batch_size=cfg.batch_size, seed=cfg.seed, dist=run.dist))
    row["seconds"] = time.perf_counter() - t0
    if cfg.eval_eps in (None, cfg.eps) and (warning := overfitting_warning(cfg.method, row)):
        row["warning"] = warning
    return row


def _write_outputs(run: _Run, out_dir: Path, result: TrainResult) -> None:
    """``model.safetensors`` (plain weights + the config as metadata) and ``history.json``."""
    out, desc = Path(out_dir), run.cfg.describe()
    checkpoint.save_weights(run.module, out / "model.safetensors",
                            {"method": run.cfg.method, "config": json.dumps(desc)})
    write_json_atomic(out / "history.json", {"config": desc, "history": run.history})
    result.files = {"weights": str(out / "model.safetensors"), "checkpoint": str(run.ckpt_path),
                    "history": str(out / "history.json")}


def train(module: nn.Module, train_data: Dataset, eval_data: Dataset | None, cfg: TrainConfig, *,
          clf_options: dict[str, Any] | None = None, out_dir: Path | None = None, resume: bool = True,
          dist: Dist = SINGLE, progress: Progress | None = None) -> TrainResult:
    """Train ``module`` in place per ``cfg``; returns it (eval mode) with per-epoch metrics.

    Args:
        module: the network; moved to ``dist.device``.  Its forward gets what ``Classifier.preprocess``
            makes of [0, 1] pixels (``clf_options``: ``num_classes``, ``channels``, ``mean``, ``std``, ``input_size``).
        train_data, eval_data: images (N, C, H, W) in [0, 1] and labels; ``eval_data`` (first
            ``cfg.eval_images``) is scored clean and under PGD after each epoch (skipped when None).
        out_dir: checkpoint, ``model.safetensors`` and ``history.json`` go here (rank 0 writes).
        resume: continue from ``out_dir/checkpoint.safetensors`` when its configuration matches.
    """
    progress = progress if (progress is not None and dist.main) else Quiet()
    run = _setup(module, train_data, cfg, clf_options, out_dir, dist)
    if resume and run.ckpt_path is not None and run.ckpt_path.exists():
        _resume(run)
    _start_schedule(run)
    if dist.active:
        run.net = nn.parallel.DistributedDataParallel(
            module, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    eval_subset = eval_data.subset(range(min(cfg.eval_images, len(eval_data)))) if eval_data is not None else None
    t_start = time.perf_counter() - sum(h.get("seconds", 0.0) for h in run.history)
    for epoch in range(run.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        advance = progress.task(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", run.steps_per_epoch)
        sums = _train_epoch(run, train_data, epoch, advance)
        run.history.append(_epoch_row(run, epoch, sums, eval_subset, t0))
        if run.ckpt_path is not None and dist.main:
            checkpoint.save(run.ckpt_path, module, run.opt, epoch=epoch + 1, history=run.history,
                            fingerprint=cfg.fingerprint(), extra=_rng_state(run))
        dist.barrier()
    result = TrainResult(module.eval(), run.history, time.perf_counter() - t_start, run.start_epoch)
    if out_dir is not None and dist.main:
        _write_outputs(run, out_dir, result)
    return result


class _StepCallback:
    """A :class:`~trustvision.progress.Progress` that reports ``callback(done, total)`` over all epochs."""

    def __init__(self, callback: Callable[[int, int], None], total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def task(self, description: str, total: int) -> Callable[[int], None]:
        def advance(n: int = 1) -> None:
            self.done += n
            self.callback(self.done, self.total)
        return advance


def train_classifier(module: nn.Module, data: Dataset, *, epochs: int = 3, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0, device: str = "cpu",
                     progress: Progress | Callable[[int, int], None] | None = None,
                     noise_sigma: float = 0.0) -> nn.Module:
    """Train ``module`` in place with Adam + cross-entropy on ``data`` (pixels in [0, 1]); returns it in eval mode.

    The ``standard`` method of :func:`train` with the ``onecycle`` recipe (one-cycle LR peaking at ``lr``,
    seeded shuffling, no evaluation, no files).  ``noise_sigma > 0`` adds Gaussian noise N(0, noise_sigma²)
    to every training batch (no clamping), the base-classifier training of randomized smoothing (Cohen et
    al. 2019; see :mod:`trustvision.defenses.smoothing`).  ``progress`` is a
    :class:`~trustvision.progress.Progress` or a callable ``progress(done_steps, total_steps)``.
    """
    if not noise_sigma >= 0:
        raise TrustVisionError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
    cfg = TrainConfig(method="standard", epochs=epochs, batch_size=batch_size, lr=lr, schedule="onecycle",
                      noise_sigma=noise_sigma, seed=seed)
    if progress is not None and not hasattr(progress, "task"):
        progress = _StepCallback(progress, epochs * math.ceil(len(data) / batch_size))
    nc = max(int(data.y.max()) + 1, 2)                # only the Classifier view needs it (no evaluation here)
    dist = Dist(device=torch.device(device))
    return train(module, data, None, cfg, clf_options={"num_classes": nc}, dist=dist, progress=progress).module
