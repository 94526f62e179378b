"""The training methods' adversarial examples and losses, and the per-epoch robustness evaluation.

* ``standard``: cross-entropy on clean images (optionally Gaussian-noise augmented, ``noise_sigma``,
  the base-classifier training of randomized smoothing, Cohen et al. 2019).
* ``pgd`` — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018:
  cross-entropy on L∞ PGD examples (``attack_steps`` steps of size ``alpha``, random start).
* ``fast`` — Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
  ICLR 2020: one FGSM step of size ``1.25·eps`` from a uniform random start in the ball.
* ``trades`` — Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
  ICML 2019: ``CE(f(x), y) + β·KL(softmax f(x) ‖ softmax f(x'))`` with ``x'`` from PGD on the KL
  term, started at ``x + 0.001·N(0, I)``.

The examples are made with the project's own attack primitives (:func:`~trustvision.attacks.gradient.pgd_steps`,
``project``, ``enforce_budget``) through a :class:`~trustvision.models.classifier.Classifier` on the *unwrapped*
module in eval mode, as TRADES and most reference code do; only the parameter update runs in train mode.
Random starts are drawn for the whole global batch and sliced per rank (see :mod:`trustvision.scale.dist`).

Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64, logits (N, K).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks.gradient import attack_loss, enforce_budget, pgd_steps, project
from ..data.dataset import Dataset
from ..models.classifier import Classifier
from .config import TrainConfig
from ..scale.dist import SINGLE, Dist


def _start(kind: str, shape: torch.Size, eps: float, gen: torch.Generator, device, dist: Dist) -> Tensor:
    """Random starts for this rank's share of a global batch: drawn for all ranks, then sliced."""
    full = (shape[0] * dist.world, *shape[1:])
    if kind == "uniform":
        noise = (torch.rand(full, generator=gen, device=device) * 2 - 1) * eps
    else:
        noise = 0.001 * torch.randn(full, generator=gen, device=device)
    return noise[dist.rank::dist.world]


def pgd_from(clf: Classifier, x: Tensor, y: Tensor, x0: Tensor, *, eps: float, alpha: float, steps: int,
             loss_fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """L∞ PGD from the start ``x0`` (N, C, H, W): ``steps`` sign steps of ``alpha`` ascending ``loss_fn(logits)``
    (default: cross-entropy of ``y``), each projected onto the ``eps``-ball around ``x`` and [0, 1]."""
    loss_fn = loss_fn or (lambda z: attack_loss("ce", z, y, None))
    x_adv = pgd_steps(clf, x, project(x, x0, eps, "linf"), loss_fn, eps=eps, norm="linf", steps=steps, alpha=alpha)
    return enforce_budget(x, x_adv.detach(), eps, "linf")


def kl_divergence(logits_adv: Tensor, p_clean: Tensor) -> Tensor:
    """(N,) KL(p_clean ‖ softmax(logits_adv)) for logits (N, K) and probabilities (N, K)."""
    return F.kl_div(logits_adv.log_softmax(1), p_clean, reduction="none").sum(1)


def training_inputs(cfg: TrainConfig, clf: Classifier, x: Tensor, y: Tensor, eps: float, gen: torch.Generator,
                    dist: Dist) -> Tensor:
    """What the update sees for the batch ``x`` (N, C, H, W): ``x`` itself (standard) or its adversarial examples."""
    if cfg.method == "standard":
        return x
    alpha = cfg.step_size * eps / cfg.eps
    if cfg.method in ("pgd", "fast"):
        x0 = x + _start("uniform", x.shape, eps, gen, x.device, dist)
        return pgd_from(clf, x, y, x0, eps=eps, alpha=alpha, steps=cfg.attack_steps if cfg.method == "pgd" else 1)
    with torch.no_grad():                                  # trades
        p_clean = clf(x).softmax(1)
    x0 = x + _start("normal", x.shape, eps, gen, x.device, dist)
    return pgd_from(clf, x, y, x0, eps=eps, alpha=alpha, steps=cfg.attack_steps,
                    loss_fn=lambda z: kl_divergence(z, p_clean))


def training_loss(cfg: TrainConfig, forward: Callable[[Tensor], Tensor], x: Tensor, x_in: Tensor,
                  y: Tensor) -> tuple[Tensor, Tensor]:
    """(loss, logits (N, K) scored for train accuracy) of one batch; ``forward`` maps pixels to logits.

    TRADES runs one forward of [clean; adversarial], so batch-norm statistics are shared between them.
    """
    if cfg.method == "trades":
        logits_all = forward(torch.cat([x, x_in]))
        logits, logits_adv = logits_all[:len(x)].float(), logits_all[len(x):].float()
        return F.cross_entropy(logits, y) + cfg.trades_beta * kl_divergence(logits_adv, logits.softmax(1)).mean(), logits
    logits = forward(x_in).float()
    return F.cross_entropy(logits, y), logits


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
