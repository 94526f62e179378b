"""DeepFool — Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool
deep neural networks", CVPR 2016.

At each iteration the classifier is linearised around the current point and the
image is moved onto the nearest linearised decision boundary among the
``candidates`` classes with the highest *clean* logits (the true class
included, as in the authors' implementation):

    l* = argmin_k |f_k| / ||w_k||_*,   r_i = (|f_l*| + 1e-4) / ||w_l*||_* · ∂||w_l*||_*

with ``f_k = z_k - z_y`` and ``w_k = ∇z_k - ∇z_y``; ``||·||_*`` is the dual norm
(L2 for the L2 attack; L1 for the L∞ variant, whose step is ``sign(w)``).  The
accumulated perturbation is applied with an ``overshoot``:
``x_adv = clip(x + (1 + overshoot) · r_tot, 0, 1)``.

Batched over images: one forward per iteration and one backward per candidate
class for the whole batch (``∇ Σ_n z_{n,k}`` — images are independent in eval
mode).  Images that are already fooled stop moving (masked); every
``check_every`` iterations the loop syncs with the host once to stop when all
images are fooled and to drop finished images from the working set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, MinimalAttack, fooled
from .norms import BALL_NORMS
from .gradient import check_number


@ATTACKS.register("deepfool")
@dataclass
class DeepFool(MinimalAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016), untargeted, L2 or L∞, batched.

    Args:
        norm: ``"l2"`` (the paper's main attack) or ``"linf"`` (the dual-norm variant, sec. 3.3).
        max_iter: iterations at most (50).
        overshoot: final scaling ``1 + overshoot`` of the accumulated step (0.02).
        candidates: classes linearised per image, the true class included, chosen by clean logit (10).
        check_every: iterations between host checks for early exit / working-set compaction (2).

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,) -> :class:`AttackResult`: ``x_adv`` (N, C, H, W)
    (``x`` where the attack failed), ``success`` (N,), ``norms`` (N,) in ``norm``,
    ``queries`` (N,) forward passes, ``gradients`` (N,) class-logit gradients (``candidates`` per
    iteration), ``extras["logits"]`` (N, K) at ``x_adv``, ``extras["iterations"]`` (N,).

    Example::

        res = DeepFool()(clf, x, y)
        res.norms[res.success].median()     # typical minimal L2 perturbation
    """

    name: ClassVar[str] = "deepfool"
    family: ClassVar[str] = "minimal"
    uses_gradients: ClassVar[bool] = True
    norm: str = "l2"
    max_iter: int = 50
    overshoot: float = 0.02
    candidates: int = 10
    check_every: int = 2

    def __post_init__(self) -> None:
        if self.norm not in BALL_NORMS:
            raise TrustVisionError(f"deepfool: norm must be one of {BALL_NORMS}, got {self.norm!r}")
        check_number(self, "max_iter", low=1, integer=True)
        check_number(self, "overshoot")
        check_number(self, "candidates", low=2, integer=True)
        check_number(self, "check_every", low=1, integer=True)

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        if target is not None:
            raise TrustVisionError("deepfool is untargeted only: drop the target, or use pgd/cw for targeted attacks")
        x = x.clone() if x.is_inference() else x
        n, dev, k = len(x), x.device, min(self.candidates, classifier.num_classes)
        view = (-1,) + (1,) * (x.ndim - 1)
        scale = 1 + self.overshoot
        ball = self.metric
        with torch.no_grad():
            logits0 = classifier(x)
        others = logits0.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices
        cls_all = torch.cat([y[:, None], others], 1)                   # (N, k): true class first
        r_tot = torch.zeros_like(x)
        queries = torch.ones(n, dtype=torch.long, device=dev)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        # working set: images still attacked; `act` masks those fooled since the last compaction
        wi = (~fooled(logits0, y, None)).nonzero()[:, 0]
        xs, ys, cls, r = x[wi], y[wi], cls_all[wi], r_tot[wi]
        act = torch.ones(len(wi), dtype=torch.bool, device=dev)
        for it in range(self.max_iter):
            if len(wi) == 0:
                break
            x_cur = (xs + scale * r).clamp(0, 1).requires_grad_(True)
            with torch.enable_grad():
                logits = classifier(x_cur)
                z = logits.gather(1, cls)                              # (n, k)
                grads = [torch.autograd.grad(z[:, j].sum(), x_cur, retain_graph=j + 1 < k)[0] for j in range(k)]
            with torch.no_grad():
                act &= logits.argmax(1) == ys                          # fooled images stop moving
                g = torch.stack(grads, 1).flatten(2)                   # (n, k, D)
                f = (z[:, 1:] - z[:, :1]).abs()                        # (n, k-1)
                w = g[:, 1:] - g[:, :1]                                # (n, k-1, D)
                pert = f / ball.dual(w).clamp_min(1e-12)
                best = pert.argmin(1)
                p = pert.gather(1, best[:, None])                      # (n, 1)
                wl = w.gather(1, best[:, None, None].expand(-1, 1, w.shape[2]))[:, 0]
                r += ball.dual_step(wl, p + 1e-4).view_as(r) * act.view(view)
                queries[wi] += 1
                iterations[wi] += act.long()
            if (it + 1) % self.check_every == 0:                       # host sync every check_every iterations
                keep = act.nonzero()[:, 0]
                r_tot[wi] = r
                wi, xs, ys, cls, r, act = wi[keep], xs[keep], ys[keep], cls[keep], r[keep], act[keep]
        r_tot[wi] = r
        with torch.no_grad():
            cand = (x + scale * r_tot).clamp(0, 1)
            logits = classifier(cand)
            success = fooled(logits, y, None)
            x_adv = torch.where(success.view(view), cand, x)
            logits = torch.where(success[:, None], logits, logits0)
        gradients = (queries - 1) * k                                  # k class gradients per iteration forward
        queries += 1
        return AttackResult(x_adv, success, ball.distance(x_adv - x), queries, gradients,
                            {"logits": logits, "iterations": iterations})
