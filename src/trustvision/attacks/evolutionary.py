"""Black-box evolutionary attacks by differential evolution (DE): few-pixel (L0) and threshold (L∞).

* :class:`PixelAttack` — Su, Vargas & Sakurai, "One Pixel Attack for Fooling Deep Neural Networks",
  IEEE Transactions on Evolutionary Computation 23(5), 2019 (and its ``th``-pixel generalisation in
  Kotyan & Vargas 2022).  A candidate is ``th`` genes ``(row, col, value per channel)``; each gene
  *replaces* all channels of one pixel.  DE/rand/1 with ``F = 0.5`` and no crossover, population 400,
  100 generations; positions start uniform, colours from ``N(128, 127)`` on 0..255, i.e.
  ``N(0.5, 127/255)`` clipped to [0, 1] here.
* :class:`ThresholdAttack` — Kotyan & Vargas, "Adversarial robustness assessment: Why in evaluation
  both L0 and L∞ attacks are necessary", PLOS ONE 17(4) e0265723, 2022.  One gene per pixel-channel:
  ``x_adv = clip(x + delta, 0, 1)`` with ``|delta| <= eps`` (the paper's ``th``, here in [0, 1] units).
  The paper optimises with CMA-ES or DE; this is DE only, with the same engine.

Fitness (minimised): the paper's soft label of the true class (untargeted) or minus that of the target
(targeted), taken as the log-odds ``±log((1 - p_c) / p_c) = ±logsumexp_{j != c}(z_j - z_c)``: a monotone
transform of ``p_c``, so DE's selections are the paper's wherever fp32 resolves ``p_c``, and it stays
informative where ``p_c`` rounds to exactly 1.  A child replaces its parent if strictly fitter.

Batched: the populations of all N images evolve together; every generation the ``A * P`` candidates of
the ``A`` still-active images are decoded and scored in forward batches of ``forward_batch`` images under
``torch.inference_mode``.  An image stops (early stop) as soon as one candidate fools the model
(untargeted: prediction != y; targeted: prediction == target); it is then no longer evaluated.  The
only host synchronisation per generation is the count of active images (boolean indexing needs it).
Queries per image = P at initialisation + P per generation while active + 1 final verification of
``x_adv``; gradients are never used.

:func:`~.runner.minimal_budget` finds, per image, the smallest budget of a list at which an attack (for
example :class:`PixelAttack`) fools it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, FixedBudgetAttack, fooled
from .gradient import _require, check_number, enforce_budget
from .norms import LINF

STRATEGIES = ("rand1", "best1")


def class_log_odds(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(M,) DE fitness to minimise from logits (M, K): ``-log((1-p_y)/p_y)`` or ``log((1-p_t)/p_t)``."""
    cls = target if target is not None else y
    z_c = logits.gather(1, cls[:, None])
    odds = torch.logsumexp((logits - z_c).scatter(1, cls[:, None], float("-inf")), dim=1)
    return odds if target is not None else -odds


@dataclass
class Problem:
    """A DE search space for N images with D genes each.

    Attributes:
        lo, hi: (N, D) gene bounds (per image).
        redraw: (D,) bool; genes that leave their bounds are redrawn uniformly (True, scipy's rule) or
            clipped to the bound (False).
        init: ``init(P, gen) -> (N, P, D)`` initial population.
        decode: ``decode(x_rows (M, C, H, W), genes (M, D)) -> (M, C, H, W)`` candidate images in [0, 1].
    """

    lo: Tensor
    hi: Tensor
    redraw: Tensor
    init: Callable[[int, torch.Generator | None], Tensor]
    decode: Callable[[Tensor, Tensor], Tensor]


def _distinct(a: int, p: int, m: int, gen, device) -> Tensor:
    """(a, p, m) indices in [0, p), distinct from each other and from their own row index (p > m)."""
    own = torch.arange(p, device=device).expand(a, p)[..., None]
    chosen = own
    for j in range(m):
        k = torch.randint(0, p - 1 - j, (a, p, 1), generator=gen, device=device)
        excl, _ = chosen.sort(-1)                     # skip the excluded values in ascending order
        for c in range(excl.shape[-1]):
            k = k + (k >= excl[..., c:c + 1]).long()
        chosen = torch.cat([chosen, k], -1)
    return chosen[..., 1:]


def _mutate(pop: Tensor, fit: Tensor, lo: Tensor, hi: Tensor, redraw: Tensor, *, F: float, cr: float,
            strategy: str, gen) -> Tensor:
    """Trial vectors (A, P, D) from populations ``pop`` (A, P, D) with fitness ``fit`` (A, P)."""
    a, p, d = pop.shape
    r = _distinct(a, p, 3 if strategy == "rand1" else 2, gen, pop.device)
    pick = lambda i: pop.gather(1, r[..., i:i + 1].expand(a, p, d))
    if strategy == "rand1":
        v = pick(0) + F * (pick(1) - pick(2))
    else:
        best = pop.gather(1, fit.argmin(1)[:, None, None].expand(a, 1, d))
        v = best + F * (pick(0) - pick(1))
    if cr < 1.0:                                     # binomial crossover, one mutant gene guaranteed
        take = torch.rand(pop.shape, generator=gen, device=pop.device) < cr
        take.scatter_(2, torch.randint(0, d, (a, p, 1), generator=gen, device=pop.device), True)
        v = torch.where(take, v, pop)
    lo, hi = lo[:, None], hi[:, None]
    out = ((v < lo) | (v > hi)) & redraw
    fresh = lo + torch.rand(pop.shape, generator=gen, device=pop.device) * (hi - lo)
    return torch.where(out, fresh, torch.minimum(torch.maximum(v, lo), hi))


def _evaluate(clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, idx: Tensor, genes: Tensor,
              decode, forward_batch: int) -> tuple[Tensor, Tensor]:
    """Fitness and fooled (A, P) of candidates ``genes`` (A, P, D) of images ``idx`` (A,)."""
    a, p, d = genes.shape
    flat, rows = genes.reshape(a * p, d), idx.repeat_interleave(p)
    fit, ok = [], []
    with torch.inference_mode():
        for s in range(0, a * p, forward_batch):
            r = rows[s:s + forward_batch]
            logits = clf(decode(x[r], flat[s:s + forward_batch]))
            t = target[r] if target is not None else None
            fit.append(class_log_odds(logits, y[r], t))
            ok.append(fooled(logits, y[r], t))
    return torch.cat(fit).view(a, p), torch.cat(ok).view(a, p)


def differential_evolution(clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, problem: Problem, *,
                           pop_size: int, generations: int, F: float, cr: float, strategy: str,
                           forward_batch: int, gen) -> tuple[Tensor, Tensor, Tensor]:
    """Evolve one population per image for all images at once.

    Args: ``x`` (N, C, H, W), ``y``/``target`` (N,); see :class:`Problem` and :class:`PixelAttack`.

    Returns: ``best`` (N, D) genes (a fooling candidate where one was found, else the fittest),
    ``found`` (N,) bool, ``queries`` (N,) int64 candidate evaluations per image.
    """
    n, p = len(x), pop_size
    idx = torch.arange(n, device=x.device)
    pop = problem.init(p, gen)
    fit, ok = _evaluate(clf, x, y, target, idx, pop, problem.decode, forward_batch)
    queries = torch.full((n,), p, dtype=torch.long, device=x.device)
    ar = torch.arange(n, device=x.device)
    choice = torch.where(ok.any(1), torch.where(ok, fit, math.inf).argmin(1), fit.argmin(1))
    best, done = pop[ar, choice], ok.any(1)
    for _ in range(generations):
        idx = (~done).nonzero()[:, 0]                # the one host sync per generation
        if len(idx) == 0:
            break
        cur, cur_fit = pop[idx], fit[idx]
        trial = _mutate(cur, cur_fit, problem.lo[idx], problem.hi[idx], problem.redraw, F=F, cr=cr,
                        strategy=strategy, gen=gen)
        t_fit, t_ok = _evaluate(clf, x, y, target, idx, trial, problem.decode, forward_batch)
        queries[idx] += p
        better = t_fit < cur_fit
        pop[idx] = torch.where(better[..., None], trial, cur)
        fit[idx] = torch.where(better, t_fit, cur_fit)
        hit = t_ok.any(1)                            # keep the fittest fooling child of a finished image
        k = torch.where(t_ok, t_fit, math.inf).argmin(1)
        best[idx] = torch.where(hit[:, None], trial[torch.arange(len(idx), device=x.device), k], best[idx])
        done[idx] = hit
    last = ~done                                     # unfinished: the fittest of the final population
    best = torch.where(last[:, None], pop[ar, fit.argmin(1)], best)
    return best, done, queries


class _Evolutionary(FixedBudgetAttack):
    """Shared DE settings and the run: subclasses give :meth:`problem` and :attr:`budget`."""

    family: ClassVar[str] = "black-box"
    uses_gradients: ClassVar[bool] = False

    pop_size: int
    generations: int
    F: float
    cr: float
    strategy: str
    seed: int | None
    forward_batch: int | None

    def _check_de(self) -> None:
        check_number(self, "pop_size", low=5, integer=True)
        check_number(self, "generations", low=0, integer=True)
        check_number(self, "F", strict=True)
        check_number(self, "cr", strict=True)
        _require(self.cr <= 1, f"{self.name}: cr must be in (0, 1], got {self.cr!r}")
        _require(self.strategy in STRATEGIES, f"{self.name}: strategy must be one of {STRATEGIES}")
        check_number(self, "seed", integer=True, none_ok=True)
        check_number(self, "forward_batch", low=1, integer=True, none_ok=True)

    @property
    def budget(self) -> float:
        raise NotImplementedError

    def problem(self, x: Tensor, gen) -> Problem:
        raise NotImplementedError

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        gen = self.generator(self.seed, x.device)
        fb = self.forward_batch or (4096 if x.device.type == "cuda" else 256)
        zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if self.budget > 0 and len(x):
            prob = self.problem(x, gen)
            best, _, queries = differential_evolution(
                classifier, x, y, target, prob, pop_size=self.pop_size, generations=self.generations, F=self.F,
                cr=self.cr, strategy=self.strategy, forward_batch=fb, gen=gen)
            x_adv = torch.cat([prob.decode(x[i:i + fb], best[i:i + fb]) for i in range(0, len(x), fb)])
        else:
            x_adv, queries = x.clone(), zeros.clone()
        with torch.inference_mode():                 # verdicts from the returned images themselves
            parts = [classifier(x_adv[i:i + fb]) for i in range(0, len(x), fb)]
        logits = torch.cat(parts) if parts else torch.empty(0, classifier.num_classes, device=x.device)
        return AttackResult(x_adv, fooled(logits, y, target), self.metric.distance(x_adv - x),
                            queries + 1, zeros, {"logits": logits})


@ATTACKS.register("pixel")
@dataclass
class PixelAttack(_Evolutionary):
    """Few-pixel L0 attack (Su, Vargas & Sakurai, IEEE TEVC 2019) by batched differential evolution.

    Each candidate is ``th`` genes ``(row, col, v_1..v_C)``: pixel ``(row, col)`` gets the colour ``v``
    in all channels (replaced, not added).  Positions are continuous in [0, H) x [0, W) and floored;
    a position that leaves the image is redrawn uniformly, a colour is clipped to [0, 1].  Where
    genes of one candidate share a pixel, the channel-wise maximum of their colours is written
    (deterministic on every device).

    Args:
        th: number of pixels changed (the budget; ``with_eps(e)`` sets ``th = round(e)``).
        pop_size: candidates per image (400, the paper's).
        generations: DE generations after the initial population (100).
        F: DE scale factor (0.5).  cr: probability that a trial gene comes from the mutant; 1.0 = no
            crossover (the paper).  strategy: ``"rand1"`` (paper) or ``"best1"``.
        seed: seeds the torch.Generator (None: global RNG).
        forward_batch: candidate images per forward pass (None: 4096 on a GPU, 256 on a CPU, where
            larger batches fall out of cache and run slower).

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y``/``target`` (N,) -> :class:`AttackResult` with ``x_adv``
    (N, C, H, W) (a fooling image, else the fittest candidate), ``norms`` (N,) = changed pixels (L0),
    ``queries`` (N,) <= ``pop_size * (generations + 1) + 1``, ``gradients`` 0, ``extras["logits"]`` (N, K).
    Memory: the populations take ``N * pop_size * th * (C + 2)`` floats.

    Example::

        res = PixelAttack(th=3, pop_size=400, generations=100)(clf, x, y)
        res.success.float().mean()      # share of images fooled by changing 3 pixels
    """

    name: ClassVar[str] = "pixel"
    norm: ClassVar[str] = "l0"
    th: int = 1
    pop_size: int = 400
    generations: int = 100
    F: float = 0.5
    cr: float = 1.0
    strategy: str = "rand1"
    seed: int | None = 0
    forward_batch: int | None = None

    def __post_init__(self) -> None:
        check_number(self, "th", integer=True)
        self._check_de()

    @property
    def budget(self) -> float:
        return float(self.th)

    @property
    def eps(self) -> float:
        """The budget as a number: ``th`` pixels."""
        return float(self.th)

    def with_eps(self, eps: float) -> PixelAttack:
        """The same attack changing ``round(eps)`` pixels (a copy)."""
        return dataclasses.replace(self, th=round(float(eps)))

    def problem(self, x: Tensor, gen) -> Problem:
        n, c, h, w = x.shape
        k, dev = self.th, x.device
        hi_one = torch.tensor([float(h), float(w)] + [1.0] * c, device=dev)
        hi = hi_one.repeat(k).expand(n, -1)
        redraw = torch.tensor([True, True] + [False] * c, device=dev).repeat(k)

        def init(p: int, g) -> Tensor:
            pos = torch.rand(n, p, k, 2, generator=g, device=dev) * hi_one[:2]
            col = (0.5 + 127 / 255 * torch.randn(n, p, k, c, generator=g, device=dev)).clamp(0, 1)
            return torch.cat([pos, col], -1).view(n, p, k * (c + 2))

        def decode(xr: Tensor, genes: Tensor) -> Tensor:
            m = len(xr)
            g = genes.view(m, k, c + 2)
            r = g[..., 0].long().clamp(0, h - 1)
            q = g[..., 1].long().clamp(0, w - 1)
            where = (r * w + q)[:, None, :].expand(m, c, k)
            vals = g[..., 2:].clamp(0, 1).transpose(1, 2)
            return xr.reshape(m, c, h * w).scatter_reduce(2, where, vals, "amax", include_self=False).view_as(xr)

        return Problem(torch.zeros_like(hi), hi, redraw, init, decode)


@ATTACKS.register("threshold")
@dataclass
class ThresholdAttack(_Evolutionary):
    """Threshold L∞ attack (Kotyan & Vargas, PLOS ONE 2022, e0265723) by batched differential evolution.

    One gene per pixel-channel, ``delta`` bounded per image to ``[max(-eps, -x), min(eps, 1 - x)]``
    (so ``x + delta`` is always a valid image); genes leaving the box are clipped to it, which favours
    its corners as L∞ attacks do.  The initial population is uniform in the box.  The result satisfies
    ``||x_adv - x||_∞ <= eps`` exactly in fp32 and ``x_adv`` in [0, 1].

    Args:
        eps: the paper's threshold ``th`` in [0, 1] pixel units (10/255: the paper's largest, th = 10).
        pop_size, generations, F, cr, strategy, seed, forward_batch: as :class:`PixelAttack`.  The genome is
            large (C·H·W), so the default adds binomial crossover (``cr = 0.1``) to leave the span of the
            population; ``cr = 1.0`` is the pure DE/rand/1 of the pixel attack.

    Shapes: as :class:`PixelAttack`, with ``norms`` the L∞ size.  Memory: the populations take
    ``N * pop_size * C * H * W`` floats (three copies at a time): lower ``pop_size`` on large images.

    Example::

        res = ThresholdAttack(eps=8 / 255)(clf, x, y)
    """

    name: ClassVar[str] = "threshold"
    norm: ClassVar[str] = "linf"
    eps: float = 10 / 255
    pop_size: int = 100
    generations: int = 100
    F: float = 0.5
    cr: float = 0.1
    strategy: str = "rand1"
    seed: int | None = 0
    forward_batch: int | None = None

    def __post_init__(self) -> None:
        check_number(self, "eps")
        self._check_de()

    @property
    def budget(self) -> float:
        return self.eps

    def problem(self, x: Tensor, gen) -> Problem:
        n, dev, e = len(x), x.device, self.eps
        flat = x.flatten(1)
        lo, hi = torch.clamp(-flat, min=-e), torch.clamp(1 - flat, max=e)
        redraw = torch.zeros(flat.shape[1], dtype=torch.bool, device=dev)

        def init(p: int, g) -> Tensor:
            return lo[:, None] + torch.rand(n, p, flat.shape[1], generator=g, device=dev) * (hi - lo)[:, None]

        def decode(xr: Tensor, genes: Tensor) -> Tensor:
            return enforce_budget(xr, (xr + genes.view_as(xr)).clamp(0, 1), e, LINF)

        return Problem(lo, hi, redraw, init, decode)
