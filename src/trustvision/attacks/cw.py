"""Carlini & Wagner L2 attack — "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017.

The perturbation lives in tanh space, ``x_adv = (tanh(w) + 1) / 2``, so the box
[0, 1] holds without clipping.  For a per-example constant ``c`` Adam minimises

    ||x_adv - x||_2^2 + c * max(margin(x_adv), -kappa)

where ``margin`` is the Carlini-Wagner margin (:func:`~.base.margin_loss`:
``z_y - max_{j!=y} z_j`` untargeted, ``max_{j!=t} z_j - z_t`` targeted).  An
outer binary search adapts ``c`` per example: smaller after a success, larger
(x10 until a success was ever seen, then bisection) after a failure.  The
smallest successful perturbation over all iterations and constants is kept.

Everything is batched: ``c``, the search bounds and Adam's moments are tensors
over the batch.  As in the authors' code, ``abort_early`` stops an inner run
when the total loss has not decreased by 0.01 % over ``steps // 10`` steps;
that check is the only host synchronisation and happens every ``steps // 10``
iterations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, MinimalAttack, fooled, margin_loss, perturbation_norms
from .gradient import check_number


@ATTACKS.register("cw")
@dataclass
class CW(MinimalAttack):
    """Carlini-Wagner L2 attack (Carlini & Wagner 2017) with a per-example binary search over ``c``.

    Args:
        steps: Adam iterations per binary-search step (100; the paper uses up to 10 000).
        binary_search_steps: outer steps adapting ``c`` (9).
        initial_const: starting ``c`` (1e-3).
        lr: Adam learning rate (0.05; the paper's 0.01 assumes up to 10 000 steps: with 100 steps,
            saturated pixels at atanh(+-0.999999) ~ +-7.25 cannot move, and on MNIST, where most
            pixels are exactly 0, success drops from 100 % to about 50 %).
        kappa: confidence margin (0): success requires ``margin <= -kappa``.
        abort_early: stop an inner run when the loss stalls (checked every ``steps // 10`` steps).
        norm: always ``"l2"``.

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,), ``target`` (N,) or None -> :class:`AttackResult`:
    ``x_adv`` (N, C, H, W) the smallest adversarial found (``x`` where none), ``success`` (N,),
    ``norms`` (N,) L2 of ``x_adv - x`` (0 where failed), ``extras["logits"]`` (N, K) at ``x_adv``,
    ``extras["const"]`` (N,) the constant ``c`` that produced the kept adversarial (NaN where none).

    Example::

        res = CW(steps=100, binary_search_steps=5)(clf, x, y)
        robust_at_1 = res.robust_at(1.0, correct)      # robust accuracy at L2 budget 1.0
    """

    name: ClassVar[str] = "cw"
    family: ClassVar[str] = "minimal"
    uses_gradients: ClassVar[bool] = True
    norm: str = "l2"
    steps: int = 100
    binary_search_steps: int = 9
    initial_const: float = 1e-3
    lr: float = 0.05
    kappa: float = 0.0
    abort_early: bool = True

    def __post_init__(self) -> None:
        if self.norm != "l2":
            raise TrustVisionError(f"cw: only norm='l2' is implemented, got {self.norm!r}")
        check_number(self, "steps", low=1, integer=True)
        check_number(self, "binary_search_steps", low=1, integer=True)
        check_number(self, "initial_const", strict=True)
        check_number(self, "lr", strict=True)
        check_number(self, "kappa")
        self.abort_early = bool(self.abort_early)

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        x = x.clone() if x.is_inference() else x
        n, dev = len(x), x.device
        view = (-1,) + (1,) * (x.ndim - 1)
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), 1e10, device=dev)
        const = torch.full((n,), self.initial_const, device=dev)
        best_l2 = torch.full((n,), float("inf"), device=dev)
        best_adv, best_const = x.clone(), torch.full((n,), float("nan"), device=dev)
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        check = max(self.steps // 10, 1)
        iters = 0
        for _ in range(self.binary_search_steps):
            w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
            found_now = torch.zeros(n, dtype=torch.bool, device=dev)
            prev = float("inf")
            for it in range(self.steps):
                w.requires_grad_(True)
                with torch.enable_grad():
                    x_adv = (torch.tanh(w) + 1) / 2
                    logits = classifier(x_adv)
                    l2 = (x_adv - x).flatten(1).pow(2).sum(1)
                    margin = margin_loss(logits, y, target, kappa=None)
                    loss = l2 + const * margin.clamp_min(-self.kappa)
                    (grad,) = torch.autograd.grad(loss.sum(), w)
                iters += 1
                with torch.no_grad():   # bookkeeping on the iterate just evaluated, then one Adam step
                    ok = fooled(logits, y, target) & (margin <= -self.kappa)
                    found_now |= ok
                    better = ok & (l2 < best_l2)
                    best_l2 = torch.where(better, l2, best_l2)
                    best_const = torch.where(better, const, best_const)
                    best_adv = torch.where(better.view(view), x_adv, best_adv)
                    m.mul_(b1).add_(grad, alpha=1 - b1)
                    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    step = self.lr * (m / (1 - b1 ** (it + 1))) / ((v / (1 - b2 ** (it + 1))).sqrt() + adam_eps)
                    w = w.detach() - step
                if self.abort_early and it % check == 0:   # host sync every steps // 10 iterations only
                    total = float(loss.detach().sum())
                    if total > prev * 0.9999:
                        break
                    prev = total
            upper = torch.where(found_now, torch.minimum(upper, const), upper)
            lower = torch.where(found_now, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2, const * 10)
        found = best_l2 < float("inf")
        with torch.no_grad():                      # re-verify the kept adversarials
            logits = classifier(best_adv)
            success = found & fooled(logits, y, target)
            x_adv = torch.where(success.view(view), best_adv, x)
            extra = 1
            if not bool((success == found).all()):   # a kept candidate did not re-verify (numerical noise)
                logits, extra = classifier(x_adv), 2
        queries = torch.full((n,), iters + extra, dtype=torch.long, device=dev)
        return AttackResult(x_adv, success, perturbation_norms(x_adv - x, "l2"), queries,
                            torch.full((n,), iters, dtype=torch.long, device=dev),
                            {"logits": logits, "const": torch.where(success, best_const, float("nan"))})
