"""Threshold attack (Kotyan & Vargas, PLOS ONE 17(4) e0265723, 2022): a black-box L∞ attack, as its authors run it.

Kotyan & Vargas, "Adversarial robustness assessment: Why in evaluation both L0 and L∞ attacks are
necessary".  One gene per pixel-channel: ``x_adv = clip(x + delta, 0, 1)`` with ``|delta| <= th`` (the
paper's threshold ``th``, here ``eps`` in [0, 1] units).  Options that bring it to the authors' code
(github.com/shashankkotyan/DualQualityAssessment, ``code/attacks/our_attacks.py``):

* ``optimizer="cmaes"`` — their default optimiser (:func:`~.cmaes.cma_es`, batched), started at the clean
  image with ``σ₀ = th / 4``; ``"de"`` is differential evolution (:func:`~.de.differential_evolution`).
* ``quantize=True`` — 8-bit images: integer thresholds ``th = ⌊255 eps⌋`` and integer pixel values, so
  every ``x_adv`` lies on the 1/255 grid (when ``x`` does).
* ``minimal=True`` — their default search: per image, the smallest threshold ``th`` in
  ``1..max_threshold`` (in 1/255) that fools, by a binary search batched over images (each round runs the
  search once for all unresolved images, each at its own mid threshold: ``⌈log2(max_threshold + 1)⌉``
  rounds).  The attack is then a *minimal* attack (``minimal`` is True on the instance): ``norms`` is the
  L∞ size of the smallest fooling ``x_adv`` found.

The paper-faithful settings are the preset ``kotyan2022`` (:meth:`ThresholdAttack.kotyan2022`); its
deviations from the authors' code are listed in docs/attacks.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, fooled
from .cmaes import cma_es
from .de import EvolutionaryAttack, Problem, score_candidates, verified
from .gradient import _require, check_number
from .norms import LINF

OPTIMIZERS = ("de", "cmaes")


def fp32_floor_t(e: Tensor) -> Tensor:
    """(N,) float32 values rounded *down* from the float64 budgets ``e`` (N,): a bound in fp32 holds for ``e``."""
    e32 = e.float()
    return torch.where(e32.double() > e, torch.nextafter(e32, torch.zeros_like(e32)), e32)


@ATTACKS.register("threshold")
@dataclass
class ThresholdAttack(EvolutionaryAttack):
    """Threshold L∞ attack (Kotyan & Vargas, PLOS ONE 2022, e0265723), batched, by DE or CMA-ES.

    ``delta`` is bounded per image to ``[max(-eps, -x), min(eps, 1 - x)]`` (so ``x + delta`` is a valid
    image); candidates leaving the box are clipped to it, which favours its corners as L∞ attacks do.

    Args:
        eps: the threshold ``th`` in [0, 1] pixel units (10/255: the paper's largest); ignored when ``minimal``.
        optimizer: ``"de"`` (default here) or ``"cmaes"`` (the authors' default).
        pop_size: candidates per image and generation (100; the authors 400).  generations: 100.
        F, cr, strategy: DE only, as :class:`~.evolutionary.PixelAttack`; the genome is large (C·H·W), so DE
            adds binomial crossover (``cr = 0.1``) to leave the span of the population.
        quantize: 8-bit thresholds and pixel values (``x_adv`` on the 1/255 grid).
        minimal: search the smallest fooling threshold per image in ``1..max_threshold`` (/255).
        max_threshold: the largest threshold of the minimal search, an integer in 1..255 (the authors: 127).
        seed, forward_batch: as :class:`~.evolutionary.PixelAttack`.

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y``/``target`` (N,) -> :class:`AttackResult` with ``x_adv``
    (N, C, H, W), ``norms`` (N,) the L∞ size (``<= eps`` exactly in fp32; quantised: up to one fp32 ulp
    of the grid), ``queries`` (N,), ``gradients`` 0, ``extras["logits"]`` (N, K) and, when minimal,
    ``extras["threshold"]`` (N,) the smallest fooling threshold found in 1/255 (``inf`` where none).
    Memory: DE takes ``3·N·pop_size·C·H·W`` floats; CMA-ES ``2·N·(C·H·W)²`` (the covariances) plus
    ``2·N·pop_size·C·H·W``: 16 MNIST images take about 80 MB, 64 CIFAR-10 images 5 GB.

    Example::

        res = ThresholdAttack(eps=8 / 255)(clf, x, y)
        res = ThresholdAttack.kotyan2022()(clf, x, y)      # CMA-ES, 400 x 100, minimal, 8-bit
        res.extras["threshold"]                            # (N,) smallest fooling th in 1/255 units
    """

    name: ClassVar[str] = "threshold"
    norm: ClassVar[str] = "linf"
    eps: float = 10 / 255
    optimizer: str = "de"
    pop_size: int = 100
    generations: int = 100
    F: float = 0.5
    cr: float = 0.1
    strategy: str = "rand1"
    quantize: bool = False
    minimal: bool = False          # type: ignore[misc]  (an instance capability: see the module doc)
    max_threshold: int = 255
    seed: int | None = 0
    forward_batch: int | None = None

    def __post_init__(self) -> None:
        check_number(self, "eps")
        _require(self.optimizer in OPTIMIZERS, f"threshold: optimizer must be one of {OPTIMIZERS}, "
                                               f"got {self.optimizer!r}")
        _require(isinstance(self.minimal, bool), "threshold: minimal must be True or False")
        check_number(self, "max_threshold", low=1, integer=True)
        _require(self.max_threshold <= 255, f"threshold: max_threshold must be in 1..255, got {self.max_threshold}")
        self._check_de()

    @classmethod
    def kotyan2022(cls, **overrides) -> ThresholdAttack:
        """The authors' settings (preset ``kotyan2022``): CMA-ES, population 400, 100 generations, minimal
        threshold in 1..127, 8-bit.  ``overrides`` change any argument (e.g. ``generations=10`` for a test)."""
        from .presets import PRESETS
        return PRESETS.get("kotyan2022").build(**overrides)

    @property
    def budget(self) -> float:
        if self.minimal:
            return self.max_threshold / 255
        return math.floor(self.eps * 255 + 1e-6) / 255 if self.quantize else self.eps

    def problem(self, x: Tensor, gen, eps: Tensor | None = None) -> Problem:
        """The search box of images ``x`` (N, C, H, W) at budgets ``eps`` (N,) float64 (None: ``self.eps``)."""
        n, dev = len(x), x.device
        e = torch.full((n,), float(self.eps), dtype=torch.float64, device=dev) if eps is None else eps.double()
        flat = x.flatten(1)
        if self.quantize:
            th = torch.floor(e * 255 + 1e-6)[:, None]                       # integer thresholds
            lo_q = torch.ceil(flat * 255 - th - 1e-3).clamp(0, 255).float()
            hi_q = torch.floor(flat * 255 + th + 1e-3).clamp(0, 255).float()
            lo, hi, scale = lo_q / 255 - flat, hi_q / 255 - flat, (th[:, 0] / 255 / 4).float()
        else:
            e32 = fp32_floor_t(e)[:, None]
            lo, hi, scale = torch.clamp(-flat, min=-e32), torch.clamp(1 - flat, max=e32), e32[:, 0] / 4

        def init(p: int, g) -> Tensor:
            return lo[:, None] + torch.rand(n, p, flat.shape[1], generator=g, device=dev) * (hi - lo)[:, None]

        def decode(rows: Tensor, genes: Tensor) -> Tensor:
            xr = x[rows]
            if self.quantize:
                v = ((xr.flatten(1) + genes) * 255).round()
                return (torch.minimum(torch.maximum(v, lo_q[rows]), hi_q[rows]) / 255).view_as(xr)
            return LINF.enforce(xr, (xr + genes.view_as(xr)).clamp(0, 1), e32[rows].view(-1, 1, 1, 1))

        redraw = torch.zeros(flat.shape[1], dtype=torch.bool, device=dev)
        return Problem(lo, hi, redraw, init, decode, scale)

    def search(self, clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, prob: Problem,
               gen) -> tuple[Tensor, Tensor]:
        """Best genes (N, D) and queries (N,) by the chosen optimiser."""
        if self.optimizer == "de":
            return super().search(clf, x, y, target, prob, gen)
        fb = self._fb(x)
        res = cma_es(lambda idx, genes: score_candidates(clf, x, y, target, idx, genes, prob.decode, fb),
                     torch.zeros_like(prob.lo), prob.scale, pop_size=self.pop_size, generations=self.generations,
                     lo=prob.lo, hi=prob.hi, gen=gen)
        return res.best, res.queries

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        if not self.minimal:
            return super().run(classifier, x, y, target)
        return self._minimal_run(classifier, x, y, target)

    def _attempt(self, clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, th: Tensor,
                 gen) -> tuple[Tensor, Tensor, Tensor]:
        """One search of images ``x`` (A, C, H, W) at integer thresholds ``th`` (A,): x_adv, fooled, queries."""
        prob = self.problem(x, gen, th.double() / 255)
        best, queries = self.search(clf, x, y, target, prob, gen)
        rows, fb = torch.arange(len(x), device=x.device), self._fb(x)
        x_adv = torch.cat([prob.decode(rows[i:i + fb], best[i:i + fb]) for i in range(0, len(x), fb)])
        with torch.inference_mode():
            ok = torch.cat([fooled(clf(x_adv[i:i + fb]), y[i:i + fb], None if target is None else target[i:i + fb])
                            for i in range(0, len(x), fb)])
        return x_adv, ok.clone(), queries + 1

    def _minimal_run(self, clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        """Binary search of the smallest fooling threshold in 1..max_threshold, batched over images."""
        gen, n, dev = self.generator(self.seed, x.device), len(x), x.device
        lo = torch.ones(n, dtype=torch.long, device=dev)
        hi = torch.full((n,), self.max_threshold, dtype=torch.long, device=dev)
        found = torch.full((n,), math.inf, device=dev)
        x_adv, queries = x.clone(), torch.zeros(n, dtype=torch.long, device=dev)
        while True:
            idx = (lo <= hi).nonzero()[:, 0]                 # one host sync per round (8 rounds for 1..255)
            if len(idx) == 0:
                break
            mid = (lo[idx] + hi[idx]) // 2
            xa, ok, q = self._attempt(clf, x[idx], y[idx], None if target is None else target[idx], mid, gen)
            queries[idx] += q
            x_adv[idx] = torch.where((ok | ~torch.isfinite(found[idx])).view(-1, 1, 1, 1), xa, x_adv[idx])
            found[idx] = torch.where(ok, mid.float(), found[idx])
            hi[idx] = torch.where(ok, mid - 1, hi[idx])
            lo[idx] = torch.where(ok, lo[idx], mid + 1)
        return verified(clf, x, x_adv, y, target, queries, self.metric, self._fb(x), {"threshold": found})
