"""Fixed-budget gradient attacks: FGSM and PGD, in L∞ and L2.

* FGSM — Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
  Examples", ICLR 2015: one step of size ``eps`` along the sign of the input
  gradient (L∞) or along the normalised gradient (L2).
* PGD — Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models
  Resistant to Adversarial Attacks", ICLR 2018: ``steps`` steepest-ascent steps
  of size ``alpha`` from a random point of the ball, each followed by a
  projection onto the ``eps``-ball and onto the [0, 1] box; the best of
  ``restarts`` runs is kept per example (a success, else the highest loss).

The default step size is ``alpha = 2.5 * eps / steps`` for both norms (the
rule of Madry et al.'s ``robustness`` library), so the walk can cross the ball
in fewer than ``steps`` steps.  The loss is cross-entropy (``"ce"``; targeted:
descend the cross-entropy of the target) or the Carlini-Wagner margin
(``"margin"``).  Every returned ``x_adv`` lies in [0, 1] and satisfies
``||x_adv - x|| <= eps`` exactly in fp32 (the last ulps are corrected).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, FixedBudgetAttack, fooled, input_gradient, margin_loss
from .norms import BALL_NORMS, Norm, as_norm, fp32_floor

LOSSES = ("ce", "margin")
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise TrustVisionError(message)


def check_number(attack, field: str, *, low: float = 0.0, integer: bool = False, none_ok: bool = False,
                 strict: bool = False) -> None:
    """Coerce ``attack.<field>`` to int/float, raising a one-line TrustVisionError naming it when invalid."""
    v = getattr(attack, field)
    if v is None and none_ok:
        return
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))
    ok = ok and (float(v).is_integer() if integer else True) and (v > low if strict else v >= low)
    kind = "an integer" if integer else "a number"
    _require(ok, f"{attack.name}: {field} must be {kind} {'>' if strict else '>='} {low:g}, got {v!r}")
    setattr(attack, field, int(v) if integer else float(v))


def check_common(attack, *, eps: bool = True) -> None:
    """Validate the shared constructor arguments of a gradient attack (norm, eps, loss)."""
    _require(attack.norm in BALL_NORMS, f"{attack.name}: norm must be one of {BALL_NORMS}, got {attack.norm!r}")
    if eps:
        if attack.eps is None:
            attack.eps = DEFAULT_EPS[attack.norm]
        check_number(attack, "eps")
    if hasattr(attack, "loss"):
        _require(attack.loss in LOSSES, f"{attack.name}: loss must be one of {LOSSES}, got {attack.loss!r}")


def attack_loss(kind: str, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) loss the attack *ascends*: CE of ``y`` (untargeted), minus CE of ``target``, or minus the CW margin."""
    if kind == "margin":
        return -margin_loss(logits, y, target, kappa=None)
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def steepest(grad: Tensor, norm: str | Norm) -> Tensor:
    """Unit-norm steepest-ascent direction (N, ...) for ``grad`` (N, ...): sign (L∞) or grad / ||grad||_2 (L2)."""
    return as_norm(norm).normalize(grad)


def project(x: Tensor, x_adv: Tensor, eps: float, norm: str | Norm) -> Tensor:
    """Project ``x_adv`` (N, C, H, W) onto ``{||x_adv - x|| <= eps} ∩ [0, 1]``."""
    return (x + as_norm(norm).project(x_adv - x, eps)).clamp(0, 1)


def enforce_budget(x: Tensor, x_adv: Tensor, eps: float, norm: str | Norm) -> Tensor:
    """Correct fp32 rounding so that ``perturbation_norms(x_adv - x) <= eps`` holds exactly (moves a few ulps).

    ``eps`` is first rounded *down* to fp32, so the bound also holds against the Python float.
    Shapes: ``x``, ``x_adv`` (N, C, H, W) -> (N, C, H, W) in [0, 1].
    """
    return as_norm(norm).enforce(x, x_adv, fp32_floor(eps))


def pgd_steps(clf: Classifier, x: Tensor, x_adv: Tensor, loss_fn, *, eps: float, norm: str | Norm, steps: int,
              alpha: float) -> Tensor:
    """``steps`` steepest-ascent steps of size ``alpha`` on ``loss_fn(logits)`` (N,) from ``x_adv`` (N, C, H, W),
    each projected onto the ``eps``-ball around ``x`` and [0, 1]; no budget correction (see :func:`enforce_budget`)."""
    ball = as_norm(norm)
    for _ in range(steps):
        grad, _ = input_gradient(clf, x_adv, loss_fn)
        x_adv = project(x, x_adv.detach() + alpha * ball.normalize(grad), eps, ball)
    return x_adv


CHECK_EVERY = 4   # steps between the checks of PGD's early stop (one host sync per check)


def pgd_steps_until_fooled(clf: Classifier, x: Tensor, x_adv: Tensor, y: Tensor, target: Tensor | None, loss: str, *,
                           eps: float, norm: str | Norm, steps: int, alpha: float) -> tuple[Tensor, Tensor]:
    """:func:`pgd_steps` that stops attacking an image once an iterate fools the model.

    Every :data:`CHECK_EVERY` steps the logits that the step's gradient pass computed anyway are checked: an
    image whose current iterate (already projected, so inside the ball) is misclassified (untargeted) or
    classified as ``target`` keeps that iterate and leaves the batch, so later steps run on fewer images.  The
    images that stay follow exactly the trajectory of :func:`pgd_steps` (the model is evaluated per image), so
    the attack is never weaker than the final-iterate rule; it returns the first fooling iterate found at a
    check ("best iterate" in the sense of Croce & Hein 2020's APGD) instead of the last one.

    Shapes: ``x``, ``x_adv`` (N, C, H, W), ``y``/``target`` (N,) -> (x_adv (N, C, H, W), gradients used (N,)).
    """
    ball = as_norm(norm)
    out, used = x_adv.detach().clone(), torch.full((len(x),), steps, dtype=torch.long, device=x.device)
    pos, xs, ys, ts = torch.arange(len(x), device=x.device), x, y, target
    for t in range(steps):
        grad, logits = input_gradient(clf, x_adv, lambda z: attack_loss(loss, z, ys, ts))
        if t and t % CHECK_EVERY == 0:
            done = fooled(logits, ys, ts)
            keep = (~done).nonzero()[:, 0]                      # the host sync of this check
            if len(keep) < len(pos):
                out[pos[done]], used[pos[done]] = x_adv.detach()[done], t + 1
                if len(keep) == 0:
                    return out, used
                pos, xs, ys, x_adv, grad = pos[keep], xs[keep], ys[keep], x_adv[keep], grad[keep]
                ts = ts[keep] if ts is not None else None
        x_adv = project(xs, x_adv.detach() + alpha * ball.normalize(grad), eps, ball)
    out[pos] = x_adv
    return out, used


def pgd_run(clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, *, eps: float, norm: str | Norm, steps: int,
            alpha: float, restarts: int, rand: bool, loss: str, gen: torch.Generator | None,
            early_stop: bool = False) -> AttackResult:
    """The PGD loop shared by FGSM and PGD; see :class:`PGD`.  Only the restart loop (and, with ``early_stop``,
    one check every :data:`CHECK_EVERY` steps) syncs with the host."""
    x = x.clone() if x.is_inference() else x      # tensors made under inference_mode cannot enter autograd
    ball = as_norm(norm)
    idx = None                                    # images still attacked: all in the first run
    for r in range(restarts):
        noise = ball.random_start(x, eps, gen) if rand else None    # drawn for the whole batch, so an image's
        xs, ys, ts = (x, y, target) if idx is None else (           # noise does not depend on who is left
            x[idx], y[idx], target[idx] if target is not None else None)
        x_adv = xs if noise is None else (xs + (noise if idx is None else noise[idx])).clamp(0, 1)
        if early_stop:
            x_adv, used = pgd_steps_until_fooled(clf, xs, x_adv, ys, ts, loss, eps=eps, norm=ball, steps=steps,
                                                 alpha=alpha)
        else:
            x_adv = pgd_steps(clf, xs, x_adv, lambda z: attack_loss(loss, z, ys, ts), eps=eps, norm=ball,
                              steps=steps, alpha=alpha)
            used = torch.full((len(xs),), steps, dtype=torch.long, device=x.device)
        x_adv = enforce_budget(xs, x_adv, eps, ball)
        with torch.no_grad():
            logits = clf(x_adv)
            value, ok = attack_loss(loss, logits, ys, ts), fooled(logits, ys, ts)
        if idx is None:
            best_x, best_logits, best_loss, best_ok = x_adv, logits, value, ok
            queries, gradients = used + 1, used.clone()
        else:                                    # only unfooled images ran: a success, else a higher loss wins
            better = ok | (value > best_loss[idx])
            best_x[idx] = torch.where(better.view(-1, *([1] * (x.ndim - 1))), x_adv, best_x[idx])
            best_logits[idx] = torch.where(better[:, None], logits, best_logits[idx])
            best_loss[idx] = torch.where(better, value, best_loss[idx])
            best_ok[idx] = ok
            queries[idx] += used + 1
            gradients[idx] += used
        if r + 1 < restarts:                     # one host sync per restart, never per step
            idx = (~best_ok).nonzero()[:, 0]
            if len(idx) == 0:
                break
    return AttackResult(best_x, best_ok, ball.distance(best_x - x), queries, gradients,
                        {"logits": best_logits, "loss": best_loss})


@ATTACKS.register("fgsm")
@dataclass
class FGSM(FixedBudgetAttack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015), one step of size ``eps``.

    Distance: L∞ (``x + eps·sign(∇)``) or L2 (``x + eps·∇/||∇||₂``), then clipped to [0, 1].

    Args:
        eps: budget in [0, 1] pixel units (None: 8/255 for L∞, 0.5 for L2).
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (cross-entropy) or ``"margin"`` (CW margin).

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,) -> :class:`AttackResult` (x_adv (N, C, H, W), ...);
    queries = 2 (gradient + final forward), gradients = 1 per image.

    Example::

        res = FGSM(eps=0.1)(clf, x, y)
        robust_acc = (~res.success).float().mean()
    """

    name: ClassVar[str] = "fgsm"
    family: ClassVar[str] = "gradient"
    uses_gradients: ClassVar[bool] = True
    single_step: ClassVar[bool] = True
    eps: float | None = None
    norm: str = "linf"
    loss: str = "ce"

    def __post_init__(self) -> None:
        check_common(self)

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        return pgd_run(classifier, x, y, target, eps=self.eps, norm=self.norm, steps=1, alpha=self.eps,
                       restarts=1, rand=False, loss=self.loss, gen=None)


@ATTACKS.register("pgd")
@dataclass
class PGD(FixedBudgetAttack):
    """Projected Gradient Descent (Madry et al. 2018), L∞ or L2, with random start and restarts.

    Args:
        eps: budget in [0, 1] pixel units (None: 8/255 for L∞, 0.5 for L2).
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps per restart (10).
        alpha: step size; None -> ``2.5 * eps / steps``.
        restarts: independent random starts; per image the best is kept (a success, else the
            highest loss).  Later restarts only attack images not yet fooled.  Without
            ``random_start`` every restart would be identical, so only one is run.
        random_start: start uniformly in the ball (L∞: uniform box; L2: uniform in the ball).
        seed: seeds the random starts (None: global RNG).
        loss: ``"ce"`` or ``"margin"`` (Carlini-Wagner margin, better on saturated models).
        early_stop: stop attacking an image once an iterate fools the model (checked every
            :data:`CHECK_EVERY` steps on logits computed anyway) and return that iterate; the other
            images follow the same trajectory as without it, so the attack is never weaker, and it is
            cheaper (:func:`pgd_steps_until_fooled`).  ``False``: every image takes all ``steps`` and the
            last iterate is returned (torchattacks' and Madry et al.'s rule).

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,), ``target`` (N,) or None ->
    :class:`AttackResult` with ``x_adv`` (N, C, H, W), ``success``/``norms``/``queries``/``gradients`` (N,),
    ``extras["logits"]`` (N, K) at ``x_adv`` and ``extras["loss"]`` (N,).
    Per restart an image costs at most ``steps`` gradients and ``steps + 1`` forward passes (fewer once fooled
    with ``early_stop``; ``gradients``/``queries`` count what was spent).

    Example::

        res = PGD(eps=8 / 255, norm="linf", steps=20, restarts=2, seed=0)(clf, x, y)
        res_t = PGD(eps=0.3)(clf, x, y, target=torch.zeros_like(y))   # push every image to class 0
    """

    name: ClassVar[str] = "pgd"
    family: ClassVar[str] = "gradient"
    uses_gradients: ClassVar[bool] = True
    eps: float | None = None
    norm: str = "linf"
    steps: int = 10
    alpha: float | None = None
    restarts: int = 1
    random_start: bool = True
    seed: int | None = 0
    loss: str = "ce"
    early_stop: bool = True

    def __post_init__(self) -> None:
        check_common(self)
        self.early_stop = bool(self.early_stop)
        check_number(self, "steps", low=1, integer=True)
        check_number(self, "restarts", low=1, integer=True)
        check_number(self, "alpha", strict=True, none_ok=True)
        check_number(self, "seed", integer=True, none_ok=True)
        self.random_start = bool(self.random_start)

    @property
    def step_size(self) -> float:
        """The step size used: ``alpha`` or ``2.5 * eps / steps``."""
        return float(self.alpha) if self.alpha is not None else 2.5 * self.eps / self.steps

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        return pgd_run(classifier, x, y, target, eps=self.eps, norm=self.norm, steps=self.steps,
                       alpha=self.step_size, restarts=self.restarts if self.random_start else 1,
                       rand=self.random_start, loss=self.loss, gen=self.generator(self.seed, x.device),
                       early_stop=self.early_stop)
