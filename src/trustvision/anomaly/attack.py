"""Attacking the inspector: PGD against an anomaly detector's image score.

Projected gradient descent (Madry et al., ICLR 2018) within an L∞ or L2 budget, run on
:meth:`~.base.Detector.score_differentiable` instead of a classifier's loss, with the project's step rule
(``alpha = 2.5 * eps / steps``), random start, projection and exact fp32 budget
(:func:`trustvision.attacks.gradient.pgd_steps`, :func:`~trustvision.attacks.gradient.enforce_budget`,
the :mod:`~trustvision.attacks.norms` strategies).  Two goals, judged at the detector's *operating
threshold* (a high percentile of the scores of held-out normal images):

* ``"miss"`` — a defective image is pushed *below* the threshold (descend the image score): a missed defect;
* ``"false_alarm"`` — a normal image is pushed *above* it (ascend the score): a false alarm.

:func:`attack_curves` sweeps budgets and reports, per budget, the miss rate on defective images, the
false-alarm rate on normal images and the image AUROC when both are attacked.  Batched: whole batches on
the device, no per-image loops, one host sync per batch and budget.
Shapes: images (N, C, H, W) in [0, 1]; scores (N,).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..attacks.gradient import enforce_budget, pgd_steps
from ..attacks.norms import BALL_NORMS, as_norm
from ..errors import TrustVisionError
from ..progress import Progress, Quiet
from .base import Detector
from .metrics import auroc

GOALS = ("miss", "false_alarm")


def operating_threshold(normal_scores: Tensor, quantile: float = 0.95) -> float:
    """The score above which an image is called defective: the ``quantile`` of normal validation scores (N,)."""
    if not 0 < quantile < 1:
        raise TrustVisionError(f"threshold quantile must be in (0, 1), got {quantile}")
    return float(torch.quantile(normal_scores.detach().float().cpu(), quantile))


@dataclass
class DetectorPGD:
    """PGD on a detector's image score (see the module docstring).

    Args:
        eps: budget in [0, 1] pixel units; norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps (10); alpha: step size (None: ``2.5 * eps / steps``).
        random_start: start uniformly in the ball; seed: its generator.
        batch_size: images per forward/backward pass.

    ``run(detector, x, goal) -> (x_adv (N, C, H, W), scores at x_adv (N,), zero_gradient (N,) bool)``;
    ``zero_gradient`` marks images whose score gradient was exactly zero at the start (a non-differentiable
    stage: the attack is then no evidence of robustness).
    """

    eps: float
    norm: str = "linf"
    steps: int = 10
    alpha: float | None = None
    random_start: bool = True
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.norm not in BALL_NORMS:
            raise TrustVisionError(f"attack norm must be one of {BALL_NORMS}, got {self.norm!r}")
        if not self.eps >= 0 or self.steps < 1:
            raise TrustVisionError(f"attack: eps must be >= 0 and steps >= 1, got eps={self.eps}, steps={self.steps}")

    @property
    def step_size(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.5 * self.eps / self.steps

    def run(self, detector: Detector, x: Tensor, goal: str) -> tuple[Tensor, Tensor, Tensor]:
        if goal not in GOALS:
            raise TrustVisionError(f"attack goal must be one of {GOALS}, got {goal!r}")
        sign = -1.0 if goal == "miss" else 1.0
        ball = as_norm(self.norm)
        gen = torch.Generator(device=x.device).manual_seed(self.seed)

        def clf(z: Tensor) -> Tensor:                 # the "logits" are the image scores, (N, 1)
            return detector.score_differentiable(z)[1][:, None]

        def loss(s: Tensor) -> Tensor:                # ascended by PGD
            return sign * s[:, 0]

        outs, scores, zero = [], [], []
        for xb in x.split(self.batch_size):
            xb = xb.detach().clone()
            noise = ball.random_start(xb, self.eps, gen) if self.random_start and self.eps > 0 else None
            x_adv = xb if noise is None else (xb + noise).clamp(0, 1)
            with torch.enable_grad():
                g0 = xb.detach().requires_grad_(True)
                s0 = clf(g0)
                (grad,) = torch.autograd.grad(s0.sum(), g0, allow_unused=True) if s0.requires_grad else (None,)
            zero.append(torch.ones(len(xb), dtype=torch.bool, device=xb.device) if grad is None
                        else grad.flatten(1).abs().amax(1) == 0)
            if self.eps > 0:
                x_adv = pgd_steps(clf, xb, x_adv, loss, eps=self.eps, norm=ball, steps=self.steps,
                                  alpha=self.step_size)
                x_adv = enforce_budget(xb, x_adv, self.eps, ball)
            outs.append(x_adv.detach())
            scores.append(detector.score(x_adv).scores.to(x.device))
        return torch.cat(outs), torch.cat(scores), torch.cat(zero)


def attack_curves(detector: Detector, normal: Tensor, defective: Tensor, threshold: float, budgets: Sequence[float],
                  *, norm: str = "linf", steps: int = 10, seed: int = 0, batch_size: int = 32,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Miss rate, false-alarm rate and attacked image AUROC against budget for one detector.

    ``normal`` (A, C, H, W) and ``defective`` (B, C, H, W) test images; ``threshold`` the operating
    threshold.  At budget 0 the clean rates are reported.  Returns a dict of lists aligned with
    ``budgets``: ``miss_rate``, ``false_alarm_rate``, ``image_auroc`` (normal images pushed up and defective
    ones pushed down), ``mean_score_normal``/``mean_score_defective``, and ``zero_gradient_fraction``.
    """
    progress = progress or Quiet()
    tick = progress.task(f"attacking {getattr(detector, 'name', 'detector')}", len(budgets))
    labels = torch.cat([torch.zeros(len(normal)), torch.ones(len(defective))]).long()
    out: dict[str, Any] = {"budgets": [float(b) for b in budgets], "norm": norm, "steps": steps,
                           "threshold": float(threshold), "miss_rate": [], "false_alarm_rate": [],
                           "image_auroc": [], "mean_score_normal": [], "mean_score_defective": []}
    zero_frac = 0.0
    for eps in budgets:
        atk = DetectorPGD(eps=float(eps), norm=norm, steps=steps, seed=seed, batch_size=batch_size)
        _, s_norm, z_n = atk.run(detector, normal, "false_alarm")
        _, s_def, z_d = atk.run(detector, defective, "miss")
        out["miss_rate"].append(float((s_def < threshold).float().mean()) if len(s_def) else None)
        out["false_alarm_rate"].append(float((s_norm >= threshold).float().mean()) if len(s_norm) else None)
        both = len(s_norm) and len(s_def)
        out["image_auroc"].append(auroc(torch.cat([s_norm, s_def]).cpu(), labels) if both else None)
        out["mean_score_normal"].append(float(s_norm.mean()) if len(s_norm) else None)
        out["mean_score_defective"].append(float(s_def.mean()) if len(s_def) else None)
        zero_frac = max(zero_frac, float(torch.cat([z_n, z_d]).float().mean()))
        tick()
    out["zero_gradient_fraction"] = zero_frac
    return out


def fragility(curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which method is most fragile: the largest drop of attacked image AUROC from budget 0 to the largest
    budget (ties: the higher miss rate at the largest budget).  ``curves``: method -> :func:`attack_curves`."""
    drops = {m: (c["image_auroc"][0] or 0) - (c["image_auroc"][-1] or 0) for m, c in curves.items()}
    if not drops:
        return {}
    worst = max(drops, key=lambda m: (drops[m], curves[m]["miss_rate"][-1] or 0))
    return {"most_fragile": worst, "auroc_drop": drops,
            "at_budget": curves[worst]["budgets"][-1]}
