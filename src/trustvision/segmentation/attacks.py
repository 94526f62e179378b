"""Adversarial attacks on segmenters: FGSM and PGD on the per-pixel loss, L∞ and L2, untargeted and targeted.

* FGSM — Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015;
* PGD — Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018;
* applied to dense prediction as in Xie et al., "Adversarial Examples for Semantic Segmentation and
  Object Detection", ICCV 2017 (per-pixel losses, targeted: paint pixels with a chosen class) and
  Arnab, Miksik & Torr, "On the Robustness of Semantic Segmentation Models to Adversarial Attacks",
  CVPR 2018 (robust mIoU against the L∞ budget, FGSM and iterative variants).

The loss the attack ascends, per image (N,):

* untargeted: the mean per-pixel cross-entropy of the true mask over non-ignored pixels (drives mIoU down);
* targeted: minus the mean per-pixel cross-entropy of the ``target`` class inside ``region`` (paints the
  region with the target class); ``target`` is one class, (N,) classes or an (N, H, W) target mask,
  ``region`` an (N, H, W) bool mask (default: every pixel).

The step, projection and budget correction are the classifier attacks' own primitives
(:func:`~trustvision.attacks.gradient.pgd_steps`, :func:`~trustvision.attacks.gradient.enforce_budget`,
the :mod:`~trustvision.attacks.norms` strategies): no second copy of PGD's loop.  Every returned
``x_adv`` lies in [0, 1] and satisfies ``||x_adv - x|| <= eps`` exactly in fp32.  On a Feedback U-Net the
loss is taken on the final round (``rounds="last"``, what the user sees) or averaged over every round
(``rounds="all"``).  A leak prior (:mod:`.leak`) is recomputed from the perturbed pixels at every step but
carries no gradient (retrieval is discrete).  Robust mIoU curves: :func:`~.section.robust_curves`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks.gradient import check_number, enforce_budget, pgd_steps
from ..attacks.norms import BALL_NORMS, as_norm
from ..errors import TrustVisionError

DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
ROUNDS = ("last", "all")


@dataclass
class SegAttackResult:
    """What :class:`SegmentationAttack` returns (tensors with leading dimension N, on the attack's device).

    Attributes:
        x_adv: (N, C, H, W) adversarial images in [0, 1].
        pred: (N, H, W) int64 predicted mask at ``x_adv`` (final round).
        norms: (N,) perturbation size ``||x_adv - x||`` in the attack's norm.
        loss: (N,) the attack's objective at ``x_adv`` (higher = stronger attack).
        gradients: (N,) int64 input-gradient evaluations spent on each image.
    """

    x_adv: Tensor
    pred: Tensor
    norms: Tensor
    loss: Tensor
    gradients: Tensor


def _pixel_mean(values: Tensor, weight: Tensor) -> Tensor:
    """(N, H, W) values, (N, H, W) 0/1 weight -> (N,) weighted mean per image (0 where the weight is empty)."""
    w = weight.to(values.dtype)
    return (values * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1.0)


def segmentation_loss(logits: Tensor, masks: Tensor, *, ignore_index: int | None, target: Tensor | None = None,
                      region: Tensor | None = None) -> Tensor:
    """(N,) objective the attack ascends, from logits (N, K, H, W) or stacked rounds (R, N, K, H, W).

    Untargeted (``target`` None): mean cross-entropy of ``masks`` (N, H, W) over pixels that are not
    ``ignore_index``.  Targeted: minus the mean cross-entropy of ``target`` (N, H, W) over ``region`` (N, H, W).
    Stacked rounds are averaged.
    """
    if logits.ndim == 5:
        return torch.stack([segmentation_loss(z, masks, ignore_index=ignore_index, target=target, region=region)
                            for z in logits]).mean(0)
    if target is None:
        valid = masks != ignore_index if ignore_index is not None else torch.ones_like(masks, dtype=torch.bool)
        ce = F.cross_entropy(logits, torch.where(valid, masks, 0), reduction="none")
        return _pixel_mean(ce, valid)
    return -_pixel_mean(F.cross_entropy(logits, target, reduction="none"), region)


@dataclass
class SegmentationAttack:
    """FGSM / PGD against a segmenter's per-pixel loss (Madry et al. 2018 on dense outputs; Xie et al. 2017).

    Args:
        eps: budget in [0, 1] pixel units (None: 8/255 for L∞, 0.5 for L2).
        norm: ``"linf"`` or ``"l2"``.
        steps: gradient steps (1 with ``random_start=False`` and ``alpha=None`` is FGSM: one step of size eps).
        alpha: step size; None -> ``eps`` for one step, else ``2.5 * eps / steps`` (Madry et al.'s rule).
        random_start: start uniformly in the ball (seeded by ``seed``).
        restarts: independent random starts; per image the run with the highest loss is kept.
        seed: seeds the random starts (None: global RNG).
        ignore_index: mask value that no loss or metric counts (e.g. 255); None: every pixel counts.
        rounds: ``"last"`` attacks the final round, ``"all"`` the mean loss over every round (feedback nets).

    Call: ``attack(segmenter, x, masks, target=None, region=None)`` with ``x`` (N, C, H, W) in [0, 1],
    ``masks`` (N, H, W) int64, ``target`` an int, (N,) or (N, H, W) int64, ``region`` (N, H, W) bool;
    returns :class:`SegAttackResult`.  ``segmenter(x)`` must give logits (N, K, H, W) differentiably
    (:class:`~trustvision.segmentation.base.Segmenter`); ``segmenter.rounds(x)`` is used with ``rounds="all"``.

    Example::

        fgsm = SegmentationAttack.fgsm(eps=4 / 255)
        res = SegmentationAttack(eps=4 / 255, steps=20)(seg, x, masks)                       # untargeted PGD
        paint = SegmentationAttack(eps=8 / 255, steps=40)(seg, x, masks, target=3, region=box)  # targeted
    """

    eps: float | None = None
    norm: str = "linf"
    steps: int = 10
    alpha: float | None = None
    random_start: bool = True
    restarts: int = 1
    seed: int | None = 0
    ignore_index: int | None = 255
    rounds: str = "last"
    name: str = "pgd"

    def __post_init__(self) -> None:
        if self.norm not in BALL_NORMS:
            raise TrustVisionError(f"segmentation attack: norm must be one of {BALL_NORMS}, got {self.norm!r}")
        if self.rounds not in ROUNDS:
            raise TrustVisionError(f"segmentation attack: rounds must be one of {ROUNDS}, got {self.rounds!r}")
        if self.eps is None:
            self.eps = DEFAULT_EPS[self.norm]
        check_number(self, "eps")
        check_number(self, "steps", low=1, integer=True)
        check_number(self, "restarts", low=1, integer=True)
        check_number(self, "alpha", strict=True, none_ok=True)
        check_number(self, "seed", integer=True, none_ok=True)
        self.random_start = bool(self.random_start)

    @classmethod
    def fgsm(cls, eps: float | None = None, norm: str = "linf", **kw: Any) -> "SegmentationAttack":
        """One step of size ``eps`` from the clean image (Goodfellow et al. 2015)."""
        return cls(eps=eps, norm=norm, steps=1, alpha=None, random_start=False, name="fgsm", **kw)

    @property
    def single_step(self) -> bool:
        return self.steps == 1 and not self.random_start

    @property
    def step_size(self) -> float:
        """``alpha``, else ``eps`` for FGSM and ``2.5 * eps / steps`` for PGD."""
        if self.alpha is not None:
            return float(self.alpha)
        return self.eps if self.steps == 1 else 2.5 * self.eps / self.steps

    def with_eps(self, eps: float) -> "SegmentationAttack":
        """The same attack at budget ``eps`` (a copy)."""
        return dataclasses.replace(self, eps=float(eps))

    def describe(self) -> dict[str, Any]:
        """Constructor arguments, for results.json."""
        return dataclasses.asdict(self)

    def _objective(self, segmenter, masks: Tensor, target: Tensor | None, region: Tensor | None
                   ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """(forward x -> logits or stacked rounds, loss logits -> (N,))."""
        if self.rounds == "all":
            forward = lambda x: torch.stack(list(segmenter.rounds(x)))        # noqa: E731  (R, N, K, H, W)
        else:
            forward = segmenter
        return forward, lambda z: segmentation_loss(z, masks, ignore_index=self.ignore_index, target=target,
                                                    region=region)

    def __call__(self, segmenter, x: Tensor, masks: Tensor, *, target: int | Tensor | None = None,
                 region: Tensor | None = None) -> SegAttackResult:
        x, masks, target, region = self._check(segmenter, x, masks, target, region)
        x = x.clone() if x.is_inference() else x
        forward, loss_fn = self._objective(segmenter, masks, target, region)
        ball = as_norm(self.norm)
        gen = torch.Generator(device=x.device).manual_seed(self.seed) if self.seed is not None else None
        best_x = best_loss = None
        for _ in range(self.restarts if self.random_start else 1):
            start = (x + ball.random_start(x, self.eps, gen)).clamp(0, 1) if self.random_start else x
            x_adv = pgd_steps(forward, x, start, loss_fn, eps=self.eps, norm=ball, steps=self.steps,
                              alpha=self.step_size)
            x_adv = enforce_budget(x, x_adv, self.eps, ball)
            with torch.no_grad():
                value = loss_fn(forward(x_adv))
            if best_x is None:
                best_x, best_loss = x_adv, value
            else:                                 # per image, the restart with the higher loss wins
                better = value > best_loss
                best_x = torch.where(better.view(-1, 1, 1, 1), x_adv, best_x)
                best_loss = torch.where(better, value, best_loss)
        with torch.no_grad():
            pred = segmenter(best_x).argmax(1)
        n_runs = self.restarts if self.random_start else 1
        grads = torch.full((len(x),), self.steps * n_runs, dtype=torch.long, device=x.device)
        return SegAttackResult(best_x.detach(), pred, ball.distance(best_x.detach() - x), best_loss.detach(), grads)

    def _check(self, segmenter, x: Tensor, masks: Tensor, target, region):
        """Validate and move the inputs to the segmenter's device; target and region to (N, H, W)."""
        if x.ndim != 4:
            raise TrustVisionError(f"segmentation attack: images must be N,C,H,W, got {tuple(x.shape)}")
        if masks.shape != (x.shape[0], *x.shape[2:]):
            raise TrustVisionError(f"segmentation attack: masks must be N,H,W = {(x.shape[0], *x.shape[2:])}, "
                                   f"got {tuple(masks.shape)}")
        device = getattr(segmenter, "device", x.device)
        x, masks = x.to(device, torch.float32), masks.to(device, torch.long)
        if target is None:
            if region is not None:
                raise TrustVisionError("segmentation attack: region is only used with a target class")
            return x, masks, None, None
        k = int(segmenter.num_classes)
        t = torch.as_tensor(target, device=device, dtype=torch.long)
        if t.ndim == 0:
            t = t.expand(len(x))
        if t.ndim == 1:
            t = t.view(-1, 1, 1).expand_as(masks)
        if t.shape != masks.shape or bool((t < 0).any()) or bool((t >= k).any()):
            raise TrustVisionError(f"segmentation attack: target must be a class in [0, {k - 1}], (N,) classes or "
                                   f"an N,H,W mask, got shape {tuple(torch.as_tensor(target).shape)}")
        region = torch.ones_like(masks, dtype=torch.bool) if region is None else region.to(device, torch.bool)
        if region.shape != masks.shape:
            raise TrustVisionError(f"segmentation attack: region must be N,H,W = {tuple(masks.shape)}, "
                                   f"got {tuple(region.shape)}")
        return x, masks, t.contiguous(), region

