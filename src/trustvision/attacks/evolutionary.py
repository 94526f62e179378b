"""Black-box evolutionary attacks: few-pixel (L0) and threshold (L∞).

* :class:`PixelAttack` — Su, Vargas & Sakurai, "One Pixel Attack for Fooling Deep Neural Networks",
  IEEE Transactions on Evolutionary Computation 23(5), 2019 (and its ``th``-pixel generalisation in
  Kotyan & Vargas 2022).  A candidate is ``th`` genes ``(row, col, value per channel)``; each gene
  *replaces* all channels of one pixel.  DE/rand/1 with ``F = 0.5`` and no crossover, population 400,
  100 generations; positions start uniform, colours from ``N(128, 127)`` on 0..255, i.e.
  ``N(0.5, 127/255)`` clipped to [0, 1] here.
* :class:`~.threshold.ThresholdAttack` (in :mod:`.threshold`, re-exported here) — Kotyan & Vargas,
  "Adversarial robustness assessment: Why in evaluation both L0 and L∞ attacks are necessary",
  PLOS ONE 17(4) e0265723, 2022, by DE or CMA-ES, fixed budget or minimal threshold, 8-bit or continuous.

Fitness (minimised): the paper's soft label of the true class (untargeted) or minus that of the target
(targeted), taken as the log-odds ``±log((1 - p_c) / p_c) = ±logsumexp_{j != c}(z_j - z_c)``: a monotone
transform of ``p_c``, so the selections are the paper's wherever fp32 resolves ``p_c``, and it stays
informative where ``p_c`` rounds to exactly 1.

The engines: :mod:`.de` (batched differential evolution, the shared :class:`~.de.EvolutionaryAttack`
base) and :mod:`.cmaes` (batched CMA-ES).  Queries per image = the candidates evaluated + 1 final
verification of ``x_adv``; gradients are never used.

:func:`~.runner.minimal_budget` finds, per image, the smallest budget of a list at which an attack (for
example :class:`PixelAttack`) fools it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import ATTACKS
from .de import STRATEGIES, EvolutionaryAttack, Problem, class_log_odds, differential_evolution
from .gradient import check_number
__all__ = ["STRATEGIES", "EvolutionaryAttack", "PixelAttack", "Problem", "ThresholdAttack", "class_log_odds",
           "differential_evolution"]


@ATTACKS.register("pixel")
@dataclass
class PixelAttack(EvolutionaryAttack):
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
        quantize: 8-bit colours (``round(255 v) / 255``), as the authors' code works on integer pixels:
            every ``x_adv`` then lies on the 1/255 grid when ``x`` does.
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
    quantize: bool = False
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

        def decode(rows: Tensor, genes: Tensor) -> Tensor:
            xr, m = x[rows], len(rows)
            g = genes.view(m, k, c + 2)
            r = g[..., 0].long().clamp(0, h - 1)
            q = g[..., 1].long().clamp(0, w - 1)
            where = (r * w + q)[:, None, :].expand(m, c, k)
            vals = g[..., 2:].clamp(0, 1).transpose(1, 2)
            if self.quantize:
                vals = (vals * 255).round() / 255
            return xr.reshape(m, c, h * w).scatter_reduce(2, where, vals, "amax", include_self=False).view_as(xr)

        return Problem(torch.zeros_like(hi), hi, redraw, init, decode)


from .threshold import ThresholdAttack  # noqa: E402  (after PixelAttack: registry order pixel, threshold)
