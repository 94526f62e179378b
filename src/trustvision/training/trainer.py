"""Adversarial training: one trainer for standard, PGD-AT, fast AT and TRADES, on 1 or N processes.

* ``standard``: cross-entropy on clean images (optionally Gaussian-noise augmented, ``noise_sigma``,
  the base-classifier training of randomized smoothing, Cohen et al. 2019).
* ``pgd`` — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018:
  cross-entropy on L∞ PGD examples (``attack_steps`` steps of size ``alpha``, random start).
* ``fast`` — Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
  ICLR 2020: one FGSM step of size ``1.25·eps`` from a uniform random start in the ball.
* ``trades`` — Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
  ICML 2019: ``CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x'))`` with ``x'`` from PGD on the KL
  term, started at ``x + 0.001·N(0, I)``.

The examples are made with the project's own attack primitives (:func:`~trustvision.attacks.base.input_gradient`,
:func:`~trustvision.attacks.gradient.steepest` / ``project`` / ``enforce_budget``) through a
:class:`~trustvision.models.classifier.Classifier` on the *unwrapped* module in eval mode, as TRADES and most
reference code do; only the parameter update runs in train mode.

**Distributed**: under ``torchrun --nproc-per-node N`` the module is wrapped in
``DistributedDataParallel`` and each rank reads its share of every global batch through a
``DistributedSampler``.  Each global batch of ``batch_size`` images is split as ``batch_size / N``
per rank, and the random starts are drawn for the whole global batch and then sliced, so N processes
follow the same trajectory as one, up to floating-point reduction order.  Metrics are summed across ranks;
rank 0 writes checkpoints.

**Checkpoints**: after every epoch, ``OUT/checkpoint.safetensors`` (model + optimizer + history, see
:mod:`.checkpoint`), written atomically.  A re-run with the same configuration resumes after the last
finished epoch.  The data order, random starts and learning rate depend only on (seed, epoch, step),
so a resumed run ends with the same weights as an uninterrupted one.

Shapes: training images (N, C, H, W) in [0, 1], labels (N,) int64, as a :class:`~trustvision.data.dataset.Dataset`.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from ..attacks.gradient import attack_loss, check_number, enforce_budget, pgd_steps, project
from ..data.dataset import Dataset
from .distributed import SINGLE, Dist
from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..progress import Quiet
from ..persist import write_json_atomic
from . import checkpoint

METHODS = ("standard", "pgd", "fast", "trades")
SCHEDULES = ("cosine", "step", "constant")
OPTIMIZERS = ("adam", "sgd")
AMP = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """How to train.  Budgets are L∞ in [0, 1] pixel units."""

    name: ClassVar[str] = "train"
    method: str = "standard"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    eps: float = 8 / 255
    eps_warmup_epochs: float = 0.0          # linear ramp of eps from 0 over this many epochs
    attack_steps: int = 10                  # PGD-AT and TRADES inner steps
    alpha: float | None = None              # step size; None: 2.5·eps/steps (fast AT: 1.25·eps)
    trades_beta: float = 6.0
    noise_sigma: float = 0.0
    amp: str = "off"
    eval_eps: float | None = None           # PGD budget of the per-epoch evaluation (None: eps)
    eval_steps: int = 10
    eval_images: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for key, options in (("method", METHODS), ("schedule", SCHEDULES), ("optimizer", OPTIMIZERS), ("amp", AMP)):
            if getattr(self, key) not in options:
                raise TrustVisionError(f"train: {key} must be one of {options}, got {getattr(self, key)!r}")
        for f in ("epochs", "batch_size", "attack_steps", "eval_steps"):
            check_number(self, f, low=1, integer=True)
        for f in ("eval_images", "seed"):
            check_number(self, f, integer=True)
        for f in ("lr", "eps"):
            check_number(self, f, strict=f == "lr")
        for f in ("momentum", "weight_decay", "trades_beta", "noise_sigma", "eps_warmup_epochs"):
            check_number(self, f)
        check_number(self, "alpha", strict=True, none_ok=True)
        check_number(self, "eval_eps", none_ok=True)
        if self.method != "standard" and self.eps <= 0:
            raise TrustVisionError(f"train: method {self.method!r} needs --eps > 0")

    def fingerprint(self) -> str:
        """Hash of every setting that changes the trained weights (for resume)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def step_size(self) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        return 1.25 * self.eps if self.method == "fast" else 2.5 * self.eps / self.attack_steps


@dataclass
class TrainResult:
    """The trained module (eval mode), per-epoch ``history`` and where files went."""

    module: nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    files: dict[str, str] = field(default_factory=dict)


# -------------------------------------------------------------- adversarial examples
def _start(kind: str, shape: torch.Size, eps: float, gen: torch.Generator, device, dist: Dist) -> Tensor:
    """Random starts for this rank's share of a global batch: drawn for all ranks, then sliced."""
    full = (shape[0] * dist.world, *shape[1:])
    if kind == "uniform":
        noise = (torch.rand(full, generator=gen, device=device) * 2 - 1) * eps
    else:
        noise = 0.001 * torch.randn(full, generator=gen, device=device)
    return noise[dist.rank::dist.world]


def pgd_from(clf: Classifier, x: Tensor, y: Tensor, x0: Tensor, *, eps: float, alpha: float, steps: int,
             loss_fn=None) -> Tensor:
    """L∞ PGD from the start ``x0`` (N, C, H, W): ``steps`` sign steps of ``alpha`` ascending ``loss_fn(logits)``
    (default: cross-entropy of ``y``), each projected onto the ``eps``-ball around ``x`` and [0, 1]."""
    loss_fn = loss_fn or (lambda z: attack_loss("ce", z, y, None))
    x_adv = pgd_steps(clf, x, project(x, x0, eps, "linf"), loss_fn, eps=eps, norm="linf", steps=steps, alpha=alpha)
    return enforce_budget(x, x_adv.detach(), eps, "linf")


def _kl(logits_adv: Tensor, p_clean: Tensor) -> Tensor:
    """(N,) KL(p_clean ‖ softmax(logits_adv))."""
    return F.kl_div(logits_adv.log_softmax(1), p_clean, reduction="none").sum(1)


def _examples(cfg: TrainConfig, clf: Classifier, x: Tensor, y: Tensor, eps: float, gen, dist: Dist) -> Tensor:
    if cfg.method == "pgd":
        x0 = x + _start("uniform", x.shape, eps, gen, x.device, dist)
        return pgd_from(clf, x, y, x0, eps=eps, alpha=cfg.step_size * eps / cfg.eps, steps=cfg.attack_steps)
    if cfg.method == "fast":
        x0 = x + _start("uniform", x.shape, eps, gen, x.device, dist)
        return pgd_from(clf, x, y, x0, eps=eps, alpha=cfg.step_size * eps / cfg.eps, steps=1)
    with torch.no_grad():                                  # trades
        p_clean = clf(x).softmax(1)
    x0 = x + _start("normal", x.shape, eps, gen, x.device, dist)
    return pgd_from(clf, x, y, x0, eps=eps, alpha=cfg.step_size * eps / cfg.eps, steps=cfg.attack_steps,
                    loss_fn=lambda z: _kl(z, p_clean))


# ------------------------------------------------------------------ the trainer
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


def overfitting_warning(method: str, row: dict, gap: float = 0.25) -> str | None:
    """A sentence when the model resists its own training attack far better than held-out PGD, else None.

    The signature of catastrophic overfitting in single-step training (Wong, Rice & Kolter 2020): accuracy on
    the FGSM training examples stays high while PGD accuracy collapses.  Compared only for ``pgd`` and
    ``fast``, whose ``train_accuracy`` is measured on adversarial inputs at the same ε as the evaluation.
    """
    if method not in ("pgd", "fast") or "robust_accuracy" not in row:
        return None
    train_acc, pgd_acc = row["train_accuracy"], row["robust_accuracy"]
    if train_acc - pgd_acc <= gap:
        return None
    return (f"catastrophic overfitting: {train_acc:.0%} accuracy on its own {method} training examples but "
            f"{pgd_acc:.0%} under held-out PGD at eps={row['eval_eps']:.3g}; the model has learned to resist its "
            "training attack, not attacks (Wong et al. 2020). Use PGD-AT or TRADES, a smaller eps, or stop earlier.")


def evaluate(clf: Classifier, data: Dataset, *, eps: float, steps: int, batch_size: int, seed: int,
             dist: Dist = SINGLE) -> dict[str, float]:
    """Clean and L∞ PGD (random start, ``steps`` steps, α = 2.5·eps/steps) accuracy on ``data``, all ranks summed.

    Each rank takes every ``world``-th image of each global batch; starts are drawn per global batch.
    """
    gen = torch.Generator(device=clf.device).manual_seed(seed + 7919)
    totals = torch.zeros(3, dtype=torch.float64, device=clf.device)       # clean, robust, n
    for i in range(0, len(data), batch_size):
        xg = data.x[i:i + batch_size]
        noise = (torch.rand(xg.shape, generator=gen, device=clf.device) * 2 - 1) * eps
        x, y = xg[dist.rank::dist.world].to(clf.device), data.y[i:i + batch_size][dist.rank::dist.world].to(clf.device)
        if len(x) == 0:
            continue
        with torch.no_grad():
            ok = clf(x).argmax(1) == y
        if eps > 0:
            x_adv = pgd_from(clf, x, y, x + noise[dist.rank::dist.world], eps=eps, alpha=2.5 * eps / steps, steps=steps)
            with torch.no_grad():
                ok_adv = ok & (clf(x_adv).argmax(1) == y)
        else:
            ok_adv = ok
        totals += torch.stack([ok.sum(), ok_adv.sum(), torch.tensor(len(x), device=clf.device)]).double()
    totals = dist.sum(totals).tolist()
    n = max(totals[2], 1.0)
    return {"clean_accuracy": totals[0] / n, "robust_accuracy": totals[1] / n, "eval_eps": eps, "eval_images": int(n)}


def train(module: nn.Module, train_data: Dataset, eval_data: Dataset | None, cfg: TrainConfig, *,
          clf_options: dict[str, Any] | None = None, out_dir: Path | None = None, resume: bool = True,
          dist: Dist = SINGLE, progress=None) -> TrainResult:
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
    opts = {"num_classes": int(train_data.y.max()) + 1, "channels": train_data.x.shape[1], **(clf_options or {})}
    if cfg.batch_size % dist.world:
        raise TrustVisionError(f"--batch-size {cfg.batch_size} must be divisible by the {dist.world} processes")
    module.to(dist.device)
    clf = Classifier(module, device=dist.device, precision="bf16" if cfg.amp == "bf16" else "fp32",
                     name="training", **opts)
    opt = _optimizer(cfg, module)
    ckpt_path = Path(out_dir) / "checkpoint.safetensors" if out_dir is not None else None
    history, start_epoch = [], 0
    if resume and ckpt_path is not None and ckpt_path.exists():
        if checkpoint.fingerprint_of(ckpt_path) != cfg.fingerprint():
            raise TrustVisionError(f"{ckpt_path} was written with other training settings; use another --out "
                                   "or --no-resume to start over")
        ck = checkpoint.load(ckpt_path, module, opt)
        history, start_epoch = ck.history, ck.epoch
    net = module
    if dist.active:
        net = nn.parallel.DistributedDataParallel(module, device_ids=[dist.device] if dist.device.type == "cuda" else None)
    per_rank = cfg.batch_size // dist.world
    sampler = DistributedSampler(range(len(train_data)), num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                 seed=cfg.seed)
    steps_per_epoch = math.ceil(len(sampler) / per_rank)
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.eps_warmup_epochs * steps_per_epoch
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.amp == "fp16")
    autocast = (lambda: torch.autocast(dist.device.type, dtype=torch.float16 if cfg.amp == "fp16" else torch.bfloat16)) \
        if cfg.amp != "off" else nullcontext
    eval_subset = eval_data.subset(range(min(cfg.eval_images, len(eval_data)))) if eval_data is not None else None
    t_start = time.perf_counter() - sum(h.get("seconds", 0.0) for h in history)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)))
        gen = torch.Generator(device=dist.device).manual_seed(cfg.seed * 1_000_003 + epoch)
        g_noise = torch.Generator().manual_seed(cfg.seed * 7_368_787 + epoch) if cfg.noise_sigma > 0 else None
        sums = torch.zeros(3, dtype=torch.float64, device=dist.device)       # loss·n, correct, n
        advance = progress.task(f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
        module.train()
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s
            idx = order[s * per_rank:(s + 1) * per_rank]
            x, y = train_data.x[idx].to(dist.device), train_data.y[idx].to(dist.device)
            if cfg.noise_sigma > 0:
                noise = torch.randn((len(x) * dist.world, *x.shape[1:]), generator=g_noise)[dist.rank::dist.world]
                x = x + cfg.noise_sigma * noise.to(dist.device)
            eps = cfg.eps * min(1.0, (step + 1) / warmup) if warmup > 0 else cfg.eps
            x_in = x if cfg.method == "standard" else _examples(cfg, clf, x, y, eps, gen, dist)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * _lr_factor(cfg, step, total)
            with autocast():
                if cfg.method == "trades":      # one forward of [clean; adversarial] (shared BN statistics)
                    logits_all = net(clf.preprocess(torch.cat([x, x_in])))
                    logits, logits_adv = logits_all[:len(x)].float(), logits_all[len(x):].float()
                    loss = F.cross_entropy(logits, y) + cfg.trades_beta * _kl(logits_adv, logits.softmax(1)).mean()
                else:
                    logits = net(clf.preprocess(x_in)).float()
                    loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sums += torch.stack([loss.detach() * len(x), (logits.argmax(1) == y).sum(),
                                 torch.tensor(len(x), device=dist.device)]).double()
            advance(1)
        module.eval()
        sums = dist.sum(sums).tolist()
        row = {"epoch": epoch + 1, "lr": cfg.lr * _lr_factor(cfg, (epoch + 1) * steps_per_epoch, total),
               "train_loss": sums[0] / sums[2], "train_accuracy": sums[1] / sums[2]}
        if eval_subset is not None:
            row.update(evaluate(clf, eval_subset, eps=cfg.eps if cfg.eval_eps is None else cfg.eval_eps,
                                steps=cfg.eval_steps, batch_size=cfg.batch_size, seed=cfg.seed, dist=dist))
        row["seconds"] = time.perf_counter() - t0
        if cfg.eval_eps in (None, cfg.eps) and (warning := overfitting_warning(cfg.method, row)):
            row["warning"] = warning
        history.append(row)
        if ckpt_path is not None and dist.main:
            checkpoint.save(ckpt_path, module, opt, epoch=epoch + 1, history=history, fingerprint=cfg.fingerprint())
        dist.barrier()
    result = TrainResult(module.eval(), history, time.perf_counter() - t_start, start_epoch)
    if out_dir is not None and dist.main:
        out = Path(out_dir)
        checkpoint.save_weights(module, out / "model.safetensors", {"method": cfg.method, "config": json.dumps(asdict(cfg))})
        write_json_atomic(out / "history.json", {"config": asdict(cfg), "history": history})
        result.files = {"weights": str(out / "model.safetensors"), "checkpoint": str(ckpt_path),
                        "history": str(out / "history.json")}
    return result


def adversarially_trained_mnist(method: str = "pgd", *, eps: float = 0.2, epochs: int = 3, attack_steps: int = 3,
                                seed: int = 0, progress=None):
    """:func:`trustvision.models.zoo.small.smallcnn` trained with ``method`` at L∞ ``eps`` on the bundled MNIST (80/20 split).

    Cached like the demo model (eps ramps up over the first epoch).  Returns (module, train set, test set,
    weights path, cached?).
    """
    from ..data import bundled
    from ..models.zoo import small as zoo
    from .cache import cached_model
    train_set, test_set = bundled.load("mnist").split(0.2, seed=seed)
    cfg = TrainConfig(method=method, epochs=epochs, batch_size=64, eps=eps, eps_warmup_epochs=1.0,
                      attack_steps=attack_steps, seed=seed)
    key = {"name": f"mnist-smallcnn-{method}", "config": asdict(cfg), "v": 1, "torch": torch.__version__.split("+")[0]}
    module, path, cached = cached_model(
        key, lambda: zoo.smallcnn(10, 1),
        lambda m: train(m, train_set, None, cfg, progress=progress).module)
    return module, train_set, test_set, path, cached
