"""Norm strategies: one object per threat-model norm, so attacks never branch on ``if norm == "linf"``.

After the template of Foolbox 3's ``gradient_descent_base`` (Rauber, Zimmermann, Bethge & Brendel,
"Foolbox Native", JOSS 2020), where a subclass per norm fills in ``get_random_start``, ``normalize``
and ``project``.  Here a :class:`Norm` carries every norm-specific operation the attacks need:

* :meth:`Norm.distance` — ``||delta||`` per image: (N, ...) -> (N,);
* :meth:`Norm.project` — onto the ``eps``-ball: (N, ...) -> (N, ...);
* :meth:`Norm.normalize` — the unit steepest-ascent direction of a gradient (FGSM/PGD steps:
  ``sign(g)`` for L∞ [Goodfellow et al. 2015], ``g / ||g||_2`` for L2 [Madry et al. 2018]);
* :meth:`Norm.random_start` — a uniform draw from the ``eps``-ball (PGD's random start);
* :meth:`Norm.enforce` / :meth:`Norm.fit` — exact budgets in fp32 (last-ulp corrections);
* :meth:`Norm.dual` / :meth:`Norm.dual_step` — DeepFool's dual norm and step direction
  (Moosavi-Dezfooli et al., CVPR 2016, sec. 3.3: L2 is self-dual, the dual of L∞ is L1).

``NORMS`` is the registry of all norms (``linf``, ``l2``, ``l0``); :data:`BALL_NORMS` names those
with a ball to project on and step in (``linf``, ``l2``).  L0 (changed pixels) only measures: the
few-pixel attack searches its space by differential evolution, not by projection.

Every operation is written exactly as the attacks computed it before this module existed (same ops
in the same order), so results are bit-identical.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..registry import Registry


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) broadcastable against ``like`` (N, ...)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def fp32_floor(eps: float) -> float:
    """``eps`` rounded *down* to the nearest fp32 value, so a bound checked in fp32 also holds for the float."""
    e32 = torch.tensor(eps, dtype=torch.float32)          # on the host: no device sync
    if float(e32) > eps:
        e32 = torch.nextafter(e32, torch.zeros_like(e32))
    return float(e32)


class Norm:
    """A threat-model norm.  Subclasses implement what is meaningful for them (see the module doc).

    Shapes: ``delta``/``grad``/``x`` are (N, ...) with one image per row; ``eps`` is a Python float.
    """

    name: ClassVar[str] = "norm"
    ball: ClassVar[bool] = False          # True where project / normalize / random_start are defined

    def distance(self, delta: Tensor) -> Tensor:
        """(N,) size of each perturbation in ``delta`` (N, ...)."""
        raise NotImplementedError

    def _no_ball(self, what: str):
        raise NotImplementedError(f"the {self.name} norm has no {what}: it only measures perturbations")

    def project(self, delta: Tensor, eps: float) -> Tensor:
        """``delta`` (N, ...) projected onto ``{||d|| <= eps}`` (per image)."""
        self._no_ball("projection")

    def normalize(self, grad: Tensor) -> Tensor:
        """Unit-norm steepest-ascent direction (N, ...) for ``grad`` (N, ...)."""
        self._no_ball("steepest-ascent direction")

    def random_start(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        """(N, ...) noise drawn uniformly from the ``eps``-ball, shaped like ``x``, on ``x``'s device."""
        self._no_ball("random start")

    def enforce(self, x: Tensor, x_adv: Tensor, eps: float) -> Tensor:
        """``x_adv`` (N, ...) moved by a few ulps so that ``distance(x_adv - x) <= eps`` holds exactly in fp32
        and ``x_adv`` stays in [0, 1]; ``eps`` must already be an fp32 value (see :func:`fp32_floor`)."""
        self._no_ball("budget correction")

    def fit(self, delta: Tensor, eps: float) -> Tensor:
        """A bare perturbation ``delta`` (N, ...) scaled into the ball so that ``distance <= eps`` holds exactly
        in fp32 (no [0, 1] box); ``eps`` must already be an fp32 value."""
        self._no_ball("budget fit")

    def dual(self, w: Tensor) -> Tensor:
        """Dual norm of ``w`` over its last dimension: (..., D) -> (...)."""
        self._no_ball("dual norm")

    def dual_step(self, w: Tensor, size: Tensor) -> Tensor:
        """(n, D) the step of length ``size`` (n, 1) in this norm along which ``<w, r>`` grows fastest, for
        rows ``w`` (n, D) (DeepFool's ``|f| / ||w||_* · ∂||w||_*``)."""
        self._no_ball("dual step")

    def __repr__(self) -> str:
        return f"Norm({self.name!r})"


NORMS: Registry[Norm] = Registry("norm")


class LInf(Norm):
    """L∞: the largest absolute change of any pixel-channel."""

    name = "linf"
    ball = True

    def distance(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).abs().amax(1)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)

    def normalize(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def random_start(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        return (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps

    def enforce(self, x: Tensor, x_adv: Tensor, eps: float) -> Tensor:
        d = x_adv - x
        x_adv = torch.where(d.abs() > eps, (x + d.sign() * eps).clamp(0, 1), x_adv)
        for _ in range(3):     # each pass moves still-offending pixels one ulp towards x
            x_adv = torch.where((x_adv - x).abs() > eps, torch.nextafter(x_adv, x), x_adv)
        return x_adv

    def fit(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)

    def dual(self, w: Tensor) -> Tensor:
        return w.abs().sum(-1)

    def dual_step(self, w: Tensor, size: Tensor) -> Tensor:
        return size * w.sign()


_SHRINKS = (1e-6, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)    # L2 budget passes: the first two are the historical rule


class L2(Norm):
    """L2: the Euclidean length of the perturbation."""

    name = "l2"
    ball = True

    def distance(self, delta: Tensor) -> Tensor:
        return delta.flatten(1).norm(p=2, dim=1)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        n = delta.flatten(1).norm(dim=1)
        return delta * _bcast(torch.where(n > eps, eps / n, torch.ones_like(n)), delta)

    def normalize(self, grad: Tensor) -> Tensor:
        return grad / _bcast(grad.flatten(1).norm(dim=1) + 1e-10, grad)

    def random_start(self, x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
        # uniform in the ball: Gaussian direction, radius eps * u^(1/d)
        d = torch.randn(x.shape, generator=generator, device=x.device)
        u = torch.rand(len(x), generator=generator, device=x.device) ** (1.0 / x[0].numel())
        return d * _bcast(eps * u / d.flatten(1).norm(dim=1).clamp_min(1e-12), d)

    def enforce(self, x: Tensor, x_adv: Tensor, eps: float) -> Tensor:
        # Rescaling then re-adding to x rounds every pixel (up to half an ulp of x, ~3e-8 near 1): for a tiny
        # budget that rounding alone can exceed eps.  The shrink margin grows pass by pass; an image still
        # over budget after the last pass falls back to x itself (distance 0), so the bound always holds.
        for shrink in _SHRINKS:
            n = self.distance(x_adv - x)
            scale = torch.where(n > eps, eps / n.clamp_min(1e-30) * (1 - shrink), torch.ones_like(n))
            x_adv = (x + (x_adv - x) * _bcast(scale, x)).clamp(0, 1)
        return torch.where(_bcast(self.distance(x_adv - x) > eps, x), x, x_adv)

    def fit(self, delta: Tensor, eps: float) -> Tensor:
        for shrink in _SHRINKS:
            n = _bcast(delta.flatten(1).norm(dim=1), delta)
            delta = delta * torch.where(n > eps, eps / n.clamp_min(1e-30) * (1 - shrink), torch.ones_like(n))
        return torch.where(_bcast(delta.flatten(1).norm(dim=1) > eps, delta), torch.zeros_like(delta), delta)

    def dual(self, w: Tensor) -> Tensor:
        return w.norm(dim=-1)

    def dual_step(self, w: Tensor, size: Tensor) -> Tensor:
        # not size * normalize(w): that guards with + 1e-10 and scales after dividing, which gives
        # different bits; each form matches the published numbers of its attack
        return size * w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


class L0(Norm):
    """L0: the number of pixels (all channels of one location) that changed; measures only."""

    name = "l0"

    def distance(self, delta: Tensor) -> Tensor:
        return (delta.abs().amax(1) > 0).flatten(1).sum(1).float()


for _norm in (LInf(), L2(), L0()):
    NORMS.add(_norm.name, _norm, help=type(_norm).__doc__.splitlines()[0])

LINF, L2_NORM, L0_NORM = NORMS.get("linf"), NORMS.get("l2"), NORMS.get("l0")
BALL_NORMS: tuple[str, ...] = tuple(name for name, n in NORMS.items() if n.ball)   # ("linf", "l2")


def as_norm(norm: str | Norm) -> Norm:
    """The :class:`Norm` for a name (``"linf"``, ``"l2"``, ``"l0"``) or the object itself."""
    return norm if isinstance(norm, Norm) else NORMS.get(norm)
