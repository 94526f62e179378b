"""Training U-Net / Feedback U-Net segmenters, seeded and resumable, on 1 or N processes.

Per-pixel cross-entropy (ignore index honoured); for a Feedback U-Net (Shibuya & Hotta 2020) the loss is the
mean of the per-round cross-entropies, so every round is supervised, and the history records each round's
loss.  Adam with a cosine learning-rate schedule that depends only on the step, a data order drawn from
``(seed, epoch)`` alone, no other randomness: a run resumed from ``OUT/checkpoint.safetensors`` (written
atomically after every epoch by :mod:`trustvision.training.checkpoint`) ends with bit-identical weights.
``precision="bf16"`` trains under bf16 autocast.  Under ``torchrun --nproc-per-node N``
(:mod:`trustvision.scale.dist`) each rank takes every N-th image of each global batch and the
module is wrapped in ``DistributedDataParallel`` (batch-norm statistics stay per rank); rank 0 writes files.

With a :class:`~.leak.LeakPrior` (its bank = the training set) the network gets each training image's
prior retrieved from the *other* training images (:meth:`~.leak.LeakPrior.bank_prior`).

Shapes: ``data.x`` (N, C, H, W) in [0, 1], ``data.masks`` (N, H, W) int64.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..persist import digest, write_json_atomic
from ..progress import Progress, Quiet
from ..training import checkpoint
from ..scale.dist import Dist, init
from .base import SegDataset, Segmenter
from .feedback import FeedbackUNet
from .leak import LeakPrior
from .unet import UNet

PRECISIONS = ("fp32", "bf16")
CLASS_WEIGHTS = ("none", "median", "sqrt-median")
ARCHITECTURES = {"unet": UNet, "feedback-unet": FeedbackUNet}


@dataclass
class SegTrainResult:
    """The trained module (eval mode), per-epoch history, seconds, resumed-from epoch and written files."""

    module: nn.Module
    history: list[dict]
    seconds: float
    resumed_from: int = 0
    files: dict[str, str] = field(default_factory=dict)


def build_network(kind: str, in_channels: int, num_classes: int, **options) -> nn.Module:
    """``unet`` or ``feedback-unet`` with ``options`` (depth, width, batch_norm, up, prior_channels, rounds, lstm)."""
    if kind not in ARCHITECTURES:
        raise TrustVisionError(f"--model must be one of {', '.join(ARCHITECTURES)}, got {kind!r}")
    if kind == "unet":
        options = {k: v for k, v in options.items() if k not in ("rounds", "lstm")}
    return ARCHITECTURES[kind](in_channels, num_classes, **options)


def segmentation_loss(outs: list[Tensor], masks: Tensor, ignore_index: int | None,
                      weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean over rounds of the per-pixel cross-entropy (class ``weight`` (K,) optional, as in
    ``F.cross_entropy``: a weighted mean over pixels); returns (loss, per-round losses (R,))."""
    ign = -100 if ignore_index is None else ignore_index
    w = weight.to(outs[0].device) if weight is not None else None
    per = torch.stack([F.cross_entropy(o.float(), masks, weight=w, ignore_index=ign) for o in outs])
    return per.mean(), per.detach()


def class_weights(data: SegDataset, mode: str = "none") -> Tensor | None:
    """Per-class loss weights (K,) from the class frequencies f_c of ``data.masks`` (ignored pixels left out).

    ``median``: median-frequency balancing, w_c = median(f) / f_c (Eigen & Fergus, ICCV 2015; SegNet);
    ``sqrt-median``: its square root, a milder re-weighting; ``none``: None (plain cross-entropy).  A class
    absent from the masks gets weight 1.
    """
    if mode not in CLASS_WEIGHTS:
        raise TrustVisionError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {mode!r}")
    if mode == "none":
        return None
    m = data.masks[(data.masks >= 0) & (data.masks < data.num_classes)]
    freq = torch.bincount(m, minlength=data.num_classes).double()
    freq = freq / freq.sum().clamp_min(1)
    present = freq > 0
    w = torch.ones(data.num_classes, dtype=torch.float64)
    w[present] = freq[present].median() / freq[present]
    return (w.sqrt() if mode == "sqrt-median" else w).float()


def _fingerprint(module: nn.Module, data: SegDataset, cfg: dict, leak: LeakPrior | None) -> str:
    return digest(type(module).__name__, getattr(module, "config", None), data.describe(), cfg,
                  leak.describe() if leak is not None else None)


def _batches(n: int, batch_size: int, seed: int, epoch: int, dist: Dist) -> list[Tensor]:
    """This rank's indices of every global batch of ``epoch`` (order from (seed, epoch) only)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return [perm[i:i + batch_size][dist.rank::dist.world] for i in range(0, n, batch_size)]


def _forward(net: nn.Module, x: Tensor, prior: Tensor | None) -> list[Tensor]:
    kwargs = {"prior": prior} if prior is not None else {}
    out = net(x, **kwargs)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _epoch(net: nn.Module, opt: torch.optim.Optimizer, data: SegDataset, priors: Tensor | None, epoch: int,
           cfg: dict, dist: Dist, total_steps: int, advance) -> dict:
    """One pass over ``data``; returns the epoch's mean loss and per-round losses (over all ranks)."""
    batches = _batches(len(data), cfg["batch_size"], cfg["seed"], epoch, dist)
    autocast = (lambda: torch.autocast(dist.device.type, dtype=torch.bfloat16)) \
        if cfg["precision"] == "bf16" else nullcontext
    sums = None
    net.train()
    for s, idx in enumerate(batches):
        step = epoch * len(batches) + s
        for g in opt.param_groups:
            g["lr"] = cfg["lr"] * 0.5 * (1 + math.cos(math.pi * step / max(total_steps, 1)))
        x, y = data.x[idx].to(dist.device), data.masks[idx].to(dist.device)
        prior = priors[idx].to(dist.device) if priors is not None else None
        with autocast():
            outs = _forward(net, x, prior)
        loss, per_round = segmentation_loss(outs, y, data.ignore_index, cfg["weight"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        row = torch.cat([loss.detach().view(1), per_round]).double() * len(idx)
        row = torch.cat([row, torch.tensor([len(idx)], dtype=torch.float64, device=row.device)])
        sums = row if sums is None else sums + row
        advance(1)
    net.eval()
    sums = dist.sum(sums).tolist()
    n = sums[-1]
    out = {"epoch": epoch + 1, "loss": sums[0] / n, "lr": opt.param_groups[0]["lr"]}
    if len(sums) > 3:
        out["loss_per_round"] = [v / n for v in sums[1:-1]]
    return out


def _resume(ckpt: Path | None, fp: str, model: nn.Module, opt: torch.optim.Optimizer) -> tuple[list[dict], int]:
    """(history, epochs done) from ``ckpt`` into ``model`` and ``opt``; ([], 0) without a checkpoint."""
    if ckpt is None or not ckpt.exists():
        return [], 0
    if checkpoint.fingerprint_of(ckpt) != fp:
        raise TrustVisionError(f"{ckpt} was written with other training settings; use another --out or --no-resume")
    ck = checkpoint.load(ckpt, model, opt)
    return ck.history, ck.epoch


def train_segmenter(model: nn.Module, data: SegDataset, *, epochs: int = 10, batch_size: int = 16, lr: float = 3e-3,
                    seed: int = 0, device: str = "cpu", out: str | Path | None = None, resume: bool = True,
                    precision: str = "fp32", progress: Progress | None = None, leak: LeakPrior | None = None,
                    weight_decay: float = 0.0, dist: Dist | None = None, class_weighting: str = "none"
                    ) -> SegTrainResult:
    """Train ``model`` (UNet / FeedbackUNet, or any module with that calling convention) in place on ``data``.

    Args:
        model: the network (moved to the device; its initial weights are the caller's, seed them there).
        data: training images (N, C, H, W) and masks (N, H, W).
        epochs, batch_size, lr, weight_decay: Adam with a cosine schedule from ``lr`` to 0 over all steps.
        seed: the data order of every epoch.  device: ``cpu``/``cuda`` (under torchrun: ``cuda:LOCAL_RANK``).
        out: folder for ``checkpoint.safetensors`` (each epoch), ``model.safetensors`` (+ metadata to rebuild
            the network) and ``history.json``; ``leak.safetensors`` when ``leak`` is given.
        resume: continue from ``out/checkpoint.safetensors`` when its settings match.
        precision: ``fp32`` or ``bf16`` (autocast).  leak: train with the annotation prior (see module doc).
        class_weighting: ``none``, ``median`` or ``sqrt-median`` class weights of the loss (:func:`class_weights`).
    Returns:
        :class:`SegTrainResult` with the module in eval mode and per-epoch ``loss`` / ``loss_per_round``.
    """
    if precision not in PRECISIONS:
        raise TrustVisionError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise TrustVisionError(f"--epochs and --batch-size must be >= 1 and --lr > 0 (got {epochs}, {batch_size}, {lr})")
    dist = dist if dist is not None else init(device)
    if batch_size % dist.world:
        raise TrustVisionError(f"--batch-size {batch_size} must be divisible by the {dist.world} processes")
    progress = progress if (progress is not None and dist.main) else Quiet()
    model.to(dist.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    weight = class_weights(data, class_weighting)
    cfg = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "precision": precision,
           "weight_decay": weight_decay}
    if weight is not None:                        # (absent from older checkpoints' settings: they still resume)
        cfg["class_weights"] = [class_weighting, [round(v, 6) for v in weight.tolist()]]
    fp = _fingerprint(model, data, cfg, leak)
    ckpt = Path(out) / "checkpoint.safetensors" if out is not None else None
    history, start = _resume(ckpt, fp, model, opt) if resume else ([], 0)
    priors = leak.to(dist.device).bank_prior() if leak is not None else None
    net = nn.parallel.DistributedDataParallel(model, device_ids=[dist.device] if dist.device.type == "cuda" else None) \
        if dist.active else model
    steps = math.ceil(len(data) / batch_size)
    t_start = time.perf_counter() - sum(h.get("seconds", 0.0) for h in history)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        advance = progress.task(f"segmenter epoch {epoch + 1}/{epochs}", steps)
        row = _epoch(net, opt, data, priors, epoch, {**cfg, "weight": weight}, dist, epochs * steps, advance)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        if ckpt is not None and dist.main:
            checkpoint.save(ckpt, model, opt, epoch=epoch + 1, history=history, fingerprint=fp)
        dist.barrier()
    result = SegTrainResult(model.eval(), history, time.perf_counter() - t_start, start)
    if out is not None and dist.main:
        result.files = save_segmenter(model, Path(out), data, history=history, config=cfg, leak=leak)
    return result


def save_segmenter(module: nn.Module, out: Path, data: SegDataset, *, history: list[dict] | None = None,
                   config: dict | None = None, leak: LeakPrior | None = None) -> dict[str, str]:
    """``model.safetensors`` (weights + what :func:`load_segmenter` needs), ``history.json``, ``leak.safetensors``."""
    kind = {UNet: "unet", FeedbackUNet: "feedback-unet"}.get(type(module))
    if kind is None:
        raise TrustVisionError(f"cannot save a {type(module).__name__}: only UNet / FeedbackUNet are rebuildable")
    meta = {"architecture": kind, "config": json.dumps(module.config), "labels": json.dumps(list(data.labels)),
            "ignore_index": json.dumps(data.ignore_index), "train": json.dumps(config or {}),
            "leak": "leak.safetensors" if leak is not None else ""}
    checkpoint.save_weights(module, out / "model.safetensors", meta)
    files = {"weights": str(out / "model.safetensors")}
    if history is not None:
        write_json_atomic(out / "history.json", {"config": config, "history": history})
        files["history"] = str(out / "history.json")
    if leak is not None:
        leak.save(out / "leak.safetensors")
        files["leak"] = str(out / "leak.safetensors")
    return files


def load_segmenter(path: str | Path, *, device: str = "cpu", rounds: int | None = None) -> Segmenter:
    """A :class:`Segmenter` from a ``model.safetensors`` written by :func:`train_segmenter` (leak beside it)."""
    from safetensors import safe_open
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, state = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise TrustVisionError(f"{path}: cannot read segmenter weights ({' '.join(str(e).split())})") from None
    if meta.get("architecture") not in ARCHITECTURES:
        raise TrustVisionError(f"{path}: not a trustvision segmenter (no architecture metadata)")
    cfg = json.loads(meta["config"])
    module = ARCHITECTURES[meta["architecture"]](**cfg)
    module.load_state_dict(state)
    leak = LeakPrior.load(path.parent / meta["leak"], device=device) if meta.get("leak") else None
    n_rounds = rounds if rounds is not None else cfg.get("rounds", 1)
    return Segmenter(module.eval(), num_classes=cfg["num_classes"], channels=cfg["in_channels"],
                     labels=json.loads(meta["labels"]), device=device, leak=leak, rounds=n_rounds,
                     name=f"{meta['architecture']}" + (" + leak" if leak is not None else ""))
