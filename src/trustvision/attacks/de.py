"""Batched differential evolution (DE), the engine of the evolutionary attacks (:mod:`.evolutionary`).

Storn & Price, "Differential evolution — a simple and efficient heuristic for global optimization over
continuous spaces", J. Global Optimization 11, 1997: DE/rand/1 or DE/best/1 mutation with scale ``F``,
optional binomial crossover ``cr``, one-to-one replacement of a parent by a strictly fitter child.

Batched: the populations of all N images, (N, P, D), evolve together; every generation the ``A * P``
candidates of the ``A`` still-active images are decoded and scored in forward batches under
``torch.inference_mode``; an image stops as soon as one candidate fools the model.  The only host
synchronisation per generation is the count of active images.

:class:`EvolutionaryAttack` is the shared base of the pixel and threshold attacks: DE settings, the
8-bit ``quantize`` switch and the run (search, decode, one verifying forward pass).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..models.classifier import Classifier
from .base import AttackResult, FixedBudgetAttack, fooled
from .gradient import _require, check_number

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
        decode: ``decode(rows (M,), genes (M, D)) -> (M, C, H, W)`` candidate images in [0, 1] of the
            images ``rows`` (indices into the N images).
        scale: (N,) a typical step per image (CMA-ES's initial σ), or None.
    """

    lo: Tensor
    hi: Tensor
    redraw: Tensor
    init: Callable[[int, torch.Generator | None], Tensor]
    decode: Callable[[Tensor, Tensor], Tensor]
    scale: Tensor | None = None


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


def score_candidates(clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, idx: Tensor, genes: Tensor,
                     decode, forward_batch: int) -> tuple[Tensor, Tensor]:
    """Fitness and fooled (A, P) of candidates ``genes`` (A, P, D) of images ``idx`` (A,)."""
    a, p, d = genes.shape
    flat, rows = genes.reshape(a * p, d), idx.repeat_interleave(p)
    fit, ok = [], []
    with torch.inference_mode():
        for s in range(0, a * p, forward_batch):
            r = rows[s:s + forward_batch]
            logits = clf(decode(r, flat[s:s + forward_batch]))
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
    fit, ok = score_candidates(clf, x, y, target, idx, pop, problem.decode, forward_batch)
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
        t_fit, t_ok = score_candidates(clf, x, y, target, idx, trial, problem.decode, forward_batch)
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


class EvolutionaryAttack(FixedBudgetAttack):
    """Shared settings and run of the evolutionary attacks: subclasses give :meth:`problem` and :attr:`budget`
    (and may override :meth:`search`, e.g. for CMA-ES).

    ``quantize``: 8-bit candidates, as the authors' code (integer pixel values 0..255): every returned
    ``x_adv`` lies on the 1/255 grid.
    """

    family: ClassVar[str] = "black-box"
    uses_gradients: ClassVar[bool] = False

    pop_size: int
    generations: int
    F: float
    cr: float
    strategy: str
    quantize: bool
    seed: int | None
    forward_batch: int | None

    def _check_de(self) -> None:
        check_number(self, "pop_size", low=5, integer=True)
        check_number(self, "generations", low=0, integer=True)
        check_number(self, "F", strict=True)
        check_number(self, "cr", strict=True)
        _require(self.cr <= 1, f"{self.name}: cr must be in (0, 1], got {self.cr!r}")
        _require(self.strategy in STRATEGIES, f"{self.name}: strategy must be one of {STRATEGIES}")
        _require(isinstance(self.quantize, bool), f"{self.name}: quantize must be True or False")
        check_number(self, "seed", integer=True, none_ok=True)
        check_number(self, "forward_batch", low=1, integer=True, none_ok=True)

    @property
    def budget(self) -> float:
        raise NotImplementedError

    def problem(self, x: Tensor, gen) -> Problem:
        raise NotImplementedError

    def _fb(self, x: Tensor) -> int:
        return self.forward_batch or (4096 if x.device.type == "cuda" else 256)

    def search(self, clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, prob: Problem,
               gen) -> tuple[Tensor, Tensor]:
        """Best genes (N, D) and queries (N,) by differential evolution."""
        best, _, queries = differential_evolution(
            clf, x, y, target, prob, pop_size=self.pop_size, generations=self.generations, F=self.F, cr=self.cr,
            strategy=self.strategy, forward_batch=self._fb(x), gen=gen)
        return best, queries

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        gen = self.generator(self.seed, x.device)
        fb = self._fb(x)
        zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
        if self.budget > 0 and len(x):
            prob = self.problem(x, gen)
            best, queries = self.search(classifier, x, y, target, prob, gen)
            rows = torch.arange(len(x), device=x.device)
            x_adv = torch.cat([prob.decode(rows[i:i + fb], best[i:i + fb]) for i in range(0, len(x), fb)])
        else:
            x_adv, queries = x.clone(), zeros.clone()
        return verified(classifier, x, x_adv, y, target, queries, self.metric, fb)


def verified(clf: Classifier, x: Tensor, x_adv: Tensor, y: Tensor, target: Tensor | None, queries: Tensor, metric,
             fb: int, extras: dict | None = None) -> AttackResult:
    """:class:`AttackResult` with verdicts from one forward pass on the returned ``x_adv`` (N, C, H, W) itself
    (``queries`` (N,) + 1 for it; no gradients)."""
    with torch.inference_mode():
        parts = [clf(x_adv[i:i + fb]) for i in range(0, len(x), fb)]
    logits = torch.cat(parts) if parts else torch.empty(0, clf.num_classes, device=x.device)
    zeros = torch.zeros(len(x), dtype=torch.long, device=x.device)
    return AttackResult(x_adv, fooled(logits, y, target), metric.distance(x_adv - x), queries + 1, zeros,
                        {"logits": logits, **(extras or {})})
