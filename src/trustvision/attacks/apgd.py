"""APGD — Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020), with the cross-entropy (APGD-CE) and the DLR loss (APGD-DLR), and the
targeted DLR version over the top-k classes (APGD-T), in L∞ and L2.

PGD with a budget-aware step size instead of a tuned one (Algorithm 1 of the paper):

* the step size starts at ``eta = 2 eps`` and is halved at checkpoints ``w_j = ceil(p_j N_iter)``,
  ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, when (1) the loss
  increased in at most ``rho = 0.75`` of the steps since the last checkpoint, or (2) the step size was not
  halved at the last checkpoint and the best loss did not improve since; after a halving the walk
  restarts from the best point found (``x_max``) with its gradient;
* each step has momentum ``alpha = 0.75`` (1 for the first step)::

      z      = P(x_k + eta * normalize(grad))
      x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))

  (``P``: projection onto the ``eps``-ball and [0, 1]; ``normalize``: sign for L∞, ``g / ||g||_2`` for L2);
* losses ascended: ``ce`` (cross-entropy of the label), ``dlr`` = ``-(z_y - max_{i != y} z_i) /
  (z_pi1 - z_pi3)`` (shift- and scale-invariant, ``z_pi`` the logits sorted descending) and, with a target
  ``t``, the targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``;
* APGD-T (``targets=k``): one run per target class among the ``k`` classes ranked 2..k+1 by clean logit,
  each only on the images still robust; success is misclassification (as in AutoAttack).  On a model
  with fewer than ``k + 1`` classes, ``K - 1`` targets are used and ``extras["note"]`` says so; on models
  with fewer than 3 (4 for targeted) classes the DLR denominator cannot be formed and falls back to 1
  (the plain logit margin), also noted.
* ``restarts``: fresh random starts (on the sphere of radius ``eps``) for images not fooled yet;
  ``eot_iter``: gradients averaged over that many passes of a randomised model (AutoAttack's ``rand``
  version uses 20), all draws in one batched forward.

Defaults are the standard AutoAttack ones (fra31/auto-attack, ``version="standard"``): 100 iterations,
1 restart (also per target for APGD-T: the standard version sets ``apgd_targeted.n_restarts = 1``; its
"plus" version uses 5 restarts for APGD-CE/DLR), 9 targets, ``rho = 0.75``.  Deviations from the reference
code: the first checkpoint counts loss increases against the starting loss (the reference compares with
a zero row of its history buffer); the loop never synchronises with the host (checkpoint decisions are
masks); the last iteration skips the unused backward pass; with ``eot_iter > 1`` the prediction that
marks an image as fooled during the search is the mean-softmax over the draws (the final judgement is one
ordinary pass, as everywhere).

Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,), ``target`` (N,) or None; logits (N, K).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, FixedBudgetAttack, fooled, log_mean_softmax
from .gradient import DEFAULT_EPS, check_number
from .norms import BALL_NORMS, Norm, as_norm, fp32_floor

LOSSES = ("ce", "dlr")
PAPER_BUDGET = {"steps": 100, "restarts": 1}
RISING_FROM, RISING_SHARE = 0.8, 0.05     # "still rising": the last 20 % of iterations gave > 5 % of the total gain


def dlr_loss(logits: Tensor, y: Tensor, target: Tensor | None = None) -> Tensor:
    """(N,) the DLR loss to *ascend* (Croce & Hein 2020, eqs. 5 and 6) from logits (N, K) and labels (N,).

    Untargeted: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)``; targeted: ``-(z_y - z_t) / (z_pi1 - (z_pi3 +
    z_pi4) / 2)``.  With too few classes for the denominator (K < 3, targeted K < 4: K = 3 uses ``z_pi3``) it is 1.
    """
    k = logits.shape[1]
    zs = logits.sort(1, descending=True).values
    z_y = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        other = logits.masked_fill(F.one_hot(y, k).bool(), float("-inf")).amax(1)
        num = z_y - other
        den = zs[:, 0] - zs[:, 2] if k >= 3 else torch.ones_like(z_y)
    else:
        num = z_y - logits.gather(1, target[:, None])[:, 0]
        den = (zs[:, 0] - 0.5 * (zs[:, 2] + zs[:, 3]) if k >= 4 else
               zs[:, 0] - zs[:, 2] if k == 3 else torch.ones_like(z_y))
    return -num / (den + 1e-12)


def apgd_loss(kind: str, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) the loss APGD ascends: ``ce`` (targeted: minus the CE of the target) or ``dlr`` (targeted DLR)."""
    if kind == "dlr":
        return dlr_loss(logits, y, target)
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def checkpoints(steps: int) -> list[tuple[int, int]]:
    """The paper's checkpoints as ``(iteration index, window length)`` pairs for ``steps`` iterations.

    Windows start at ``max(int(0.22 N), 1)`` iterations and shrink by ``max(int(0.03 N), 1)`` down to
    ``max(int(0.06 N), 1)``: the reference code's form of ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``.
    """
    k, k_min, dec = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, i = [], k - 1
    while i < steps:
        out.append((i, k))
        k = max(k - dec, k_min)
        i += k
    return out


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def _evaluate(clf: Classifier, x_adv: Tensor, y: Tensor, tgt: Tensor | None, kind: str, eot: int,
              grad: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """Loss (N,), mean-over-draws logits (N, K) and (if ``grad``) the gradient averaged over ``eot`` draws."""
    with torch.enable_grad() if grad else torch.no_grad():
        xg = x_adv.detach().requires_grad_(grad)
        xs = xg if eot == 1 else xg.repeat_interleave(eot, 0)
        logits = clf(xs)
        rep = (lambda t: t) if eot == 1 else (lambda t: None if t is None else t.repeat_interleave(eot, 0))
        loss = apgd_loss(kind, logits, rep(y), rep(tgt))
        g = None
        if grad:
            if loss.requires_grad:
                (g,) = torch.autograd.grad(loss.sum(), xg, materialize_grads=True)
                g = g / eot
            else:                                   # the model cut the graph: zero gradient
                g = torch.zeros_like(xg)
    loss = loss.detach().view(-1, eot).mean(1)
    logits = logits.detach()
    if eot > 1:
        logits = log_mean_softmax(logits, eot)
    return g, loss, logits


def _momentum_step(x: Tensor, x_adv: Tensor, x_old: Tensor, grad: Tensor, step: Tensor, a: float, eps: float,
                   ball: Norm) -> Tensor:
    """One APGD step from ``x_adv`` (N, C, H, W) with per-image step sizes ``step`` (N,) and momentum ``a``."""
    z = (x + ball.project(x_adv + _bcast(step, x) * ball.normalize(grad) - x, eps)).clamp(0, 1)
    moved = x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_old)
    return (x + ball.project(moved - x, eps)).clamp(0, 1)


def apgd_single_run(clf: Classifier, x: Tensor, y: Tensor, x_start: Tensor, *, tgt: Tensor | None,
                    target: Tensor | None, kind: str, eps: float, ball: Norm, steps: int, rho: float,
                    momentum: float, eot: int) -> dict:
    """One APGD run from ``x_start`` (n, C, H, W); no host synchronisation inside the loop.

    ``tgt`` (n,) the loss's target class (None: untargeted loss), ``target`` the success criterion's target
    (None: misclassification).  Returns ``x_best`` (highest loss point), ``x_adv`` (last adversarial point),
    ``fooled`` (n,), ``loss_best`` (n,), ``rising`` (n,) (the best loss still grew by > 5 % of its total gain in the last 20 % of the
    iterations) and
    ``curve`` (steps + 1,) the mean best loss per iteration.
    """
    n = len(x)
    dev = x.device
    grad, loss, logits = _evaluate(clf, x_start, y, tgt, kind, eot, True)
    hist = torch.empty(steps + 1, n, device=dev)
    hist[0] = loss
    curve = torch.empty(steps + 1, device=dev)
    x_adv, x_old = x_start, x_start
    x_best, grad_best, loss_best = x_start.clone(), grad.clone(), loss.clone()
    curve[0] = loss_best.mean()
    is_adv = fooled(logits, y, target)
    x_found = x_start.clone()
    step = torch.full((n,), 2.0 * eps, device=dev)
    reduced = torch.zeros(n, dtype=torch.bool, device=dev)
    best_at_check = loss_best.clone()
    plan = dict(checkpoints(steps))
    late, best_late = int(RISING_FROM * steps), loss_best.clone()       # the last 20 % of the iterations
    for i in range(steps):
        x_new = _momentum_step(x, x_adv, x_old, grad, step, momentum if i > 0 else 1.0, eps, ball)
        x_old, x_adv = x_adv, x_new
        g, loss, logits = _evaluate(clf, x_adv, y, tgt, kind, eot, i + 1 < steps)
        grad = g if g is not None else grad
        now = fooled(logits, y, target)
        x_found = torch.where(_bcast(now, x), x_adv, x_found)
        is_adv = is_adv | now
        hist[i + 1] = loss
        better = loss > loss_best
        x_best = torch.where(_bcast(better, x), x_adv, x_best)
        grad_best = torch.where(_bcast(better, x), grad, grad_best)
        loss_best = torch.where(better, loss, loss_best)
        curve[i + 1] = loss_best.mean()
        if i + 1 == late:
            best_late = loss_best.clone()
        if i in plan:                                          # a checkpoint: halve where progress stalled
            k = plan[i]
            ups = (hist[i - k + 2:i + 2] > hist[i - k + 1:i + 1]).sum(0)
            cut = (ups <= k * rho) | (~reduced & (best_at_check >= loss_best))
            reduced, best_at_check = cut, loss_best.clone()
            step = torch.where(cut, step / 2, step)
            x_adv = torch.where(_bcast(cut, x), x_best, x_adv)
            grad = torch.where(_bcast(cut, x), grad_best, grad)
    rising = (loss_best - best_late) > RISING_SHARE * (loss_best - hist[0]).clamp_min(1e-6)
    return {"x_best": x_best, "x_adv": x_found, "fooled": is_adv, "loss_best": loss_best,
            "rising": rising & ~is_adv, "curve": curve}


def _start(x: Tensor, eps: float, ball: Norm, gen: torch.Generator | None) -> Tensor:
    """(N, C, H, W) random starts on the sphere of radius ``eps`` around ``x`` (the reference's), clipped to [0, 1]."""
    t = ball.random_start(x, 1.0, gen)
    return (x + t * _bcast(eps / ball.distance(t).clamp_min(1e-12), x)).clamp(0, 1)


@ATTACKS.register("apgd")
@dataclass
class APGD(FixedBudgetAttack):
    """Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and APGD-T (targeted DLR), L∞ or L2.

    Args:
        eps: budget in [0, 1] pixel units (None: 8/255 for L∞, 0.5 for L2); exact in fp32.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits ratio; targeted DLR when ``targets``).
        steps: iterations per run (100, the paper's).  restarts: random restarts per run (1; later ones only on
            images not fooled yet).
        targets: 0 for the untargeted attack; ``k`` for APGD-T over the classes ranked 2..k+1 by clean logit
            (9 in AutoAttack; ``K - 1`` on models with fewer classes, with ``extras["note"]``).
        rho: checkpoint threshold on the share of loss increases (0.75).  momentum: ``alpha`` (0.75).
        eot_iter: gradient draws per step for randomised models (1; 20 in AutoAttack's ``rand`` version).
        seed: seeds the random starts (None: global RNG).

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,), ``target`` (N,) or None (an explicit target runs one
    targeted pass; success is then ``pred == target``) -> :class:`AttackResult`: ``x_adv`` (N, C, H, W)
    (the adversarial found, else the highest-loss point), ``success``/``norms`` (N,), ``queries`` (N,)
    forward passes (per run ``(steps + 1) * eot_iter``, plus the clean and the final pass), ``gradients``
    (N,) (``steps * eot_iter`` per run), ``extras``: ``logits`` (N, K) at ``x_adv``, ``loss`` (N,) best
    loss of the last run, ``rising`` (N,) bool (still robust and the best loss still growing over the last 20 % of the
    iterations: more iterations may help), ``loss_curve`` (steps + 1,) mean best loss of the first run,
    ``targets`` and, when adapted, ``note``.

    Example::

        res = APGD(eps=8 / 255, loss="dlr")(clf, x, y)                 # APGD-DLR
        res_t = APGD(eps=0.3, loss="dlr", targets=9)(clf, x, y)        # APGD-T
    """

    name: ClassVar[str] = "apgd"
    family: ClassVar[str] = "gradient"
    uses_gradients: ClassVar[bool] = True
    paper_budget: ClassVar[dict] = PAPER_BUDGET
    per_image_extras: ClassVar[tuple[str, ...]] = ("rising",)
    eps: float | None = None
    norm: str = "linf"
    loss: str = "ce"
    steps: int = 100
    restarts: int = 1
    targets: int = 0
    rho: float = 0.75
    momentum: float = 0.75
    eot_iter: int = 1
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.norm not in BALL_NORMS:
            raise TrustVisionError(f"apgd: norm must be one of {BALL_NORMS}, got {self.norm!r}")
        if self.loss not in LOSSES:
            raise TrustVisionError(f"apgd: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.eps is None:
            self.eps = DEFAULT_EPS[self.norm]
        check_number(self, "eps")
        for name in ("steps", "restarts", "eot_iter"):
            check_number(self, name, low=1, integer=True)
        check_number(self, "targets", low=0, integer=True)
        check_number(self, "seed", integer=True, none_ok=True)
        for name in ("rho", "momentum"):
            check_number(self, name, strict=True)
            if getattr(self, name) > 1:
                raise TrustVisionError(f"apgd: {name} must be in (0, 1], got {getattr(self, name)!r}")

    def _plans(self, logits0: Tensor, target: Tensor | None, extras: dict) -> list[Tensor | None]:
        """The loss target of each pass: the given target, none (untargeted) or the ranks 2..k+1 (APGD-T)."""
        k_cls = logits0.shape[1]
        notes = []
        if target is not None:
            plans = [target]
        elif self.targets == 0:
            plans = [None]
        else:
            k = min(self.targets, k_cls - 1)
            if k < self.targets:
                notes.append(f"{self.targets} target classes asked, the model has {k_cls}: used {k}")
            order = logits0.argsort(1, descending=True)
            plans = [order[:, j] for j in range(1, k + 1)]
            extras["targets"] = k
        targeted = plans[0] is not None
        if self.loss == "dlr" and k_cls < (4 if targeted else 3):
            notes.append(f"the DLR loss needs {4 if targeted else 3} classes, the model has {k_cls}: "
                         "its denominator is 1 (the plain logit margin)")
        if notes:
            extras["note"] = "; ".join(notes)
        return plans

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        x = x.clone() if x.is_inference() else x
        ball, eps, n, dev = as_norm(self.norm), fp32_floor(self.eps), len(x), x.device
        gen = self.generator(self.seed, dev)
        with torch.no_grad():
            logits0 = classifier(x)
        extras: dict = {}
        plans = self._plans(logits0, target, extras)
        done = fooled(logits0, y, target)
        best_x, best_loss = x.clone(), torch.full((n,), -math.inf, device=dev)
        rising = torch.zeros(n, dtype=torch.bool, device=dev)
        queries = torch.ones(n, dtype=torch.long, device=dev)
        gradients = torch.zeros_like(queries)
        for tcls in plans:
            for _ in range(self.restarts):
                starts = _start(x, eps, ball, gen)                   # drawn for all: independent of who is left
                idx = (~done).nonzero()[:, 0]                        # one host sync per run, never per step
                if len(idx) == 0:
                    break
                r = apgd_single_run(classifier, x[idx], y[idx], starts[idx], tgt=None if tcls is None else tcls[idx],
                                    target=None if target is None else target[idx], kind=self.loss, eps=eps,
                                    ball=ball, steps=self.steps, rho=self.rho, momentum=self.momentum,
                                    eot=self.eot_iter)
                keep = r["fooled"] | (r["loss_best"] > best_loss[idx])
                pick = torch.where(_bcast(r["fooled"], r["x_adv"]), r["x_adv"], r["x_best"])
                best_x[idx] = torch.where(_bcast(keep, pick), pick, best_x[idx])
                best_loss[idx] = torch.where(keep, r["loss_best"], best_loss[idx])
                done[idx] = r["fooled"]
                rising[idx] = r["rising"]
                queries[idx] += (self.steps + 1) * self.eot_iter
                gradients[idx] += self.steps * self.eot_iter
                extras.setdefault("loss_curve", r["curve"])
        return self._finish(classifier, x, y, target, best_x, best_loss, rising, queries, gradients, extras)

    def _finish(self, clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, best_x: Tensor,
                best_loss: Tensor, rising: Tensor, queries: Tensor, gradients: Tensor, extras: dict) -> AttackResult:
        """Exact budget in fp32, then one ordinary forward pass judges every image."""
        ball = as_norm(self.norm)
        x_adv = ball.enforce(x, best_x, fp32_floor(self.eps))
        with torch.inference_mode():
            logits = clf(x_adv)
        success = fooled(logits, y, target)
        extras.update(logits=logits, loss=best_loss, rising=rising & ~success)
        extras.setdefault("targets", 0)
        return AttackResult(x_adv, success, ball.distance(x_adv - x), queries + 1, gradients, extras)
