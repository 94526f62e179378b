"""FAB — Croce & Hein, "Minimally distorted Adversarial Examples with a Fast Adaptive Boundary Attack",
ICML 2020; FAB-T, its targeted version, as run in AutoAttack (Croce & Hein, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks", ICML 2020).

Each iteration linearises the classifier at the current point ``x1`` and picks one decision
hyperplane ``{z : <w, z> = b}`` (``f = z_s - z_y``, ``w = ∇f``, ``b = <w, x1> - f``):

* FAB (``targets=0``): among all classes ``s != y`` the closest hyperplane, ``argmin |f_s| / ||w_s||_*``
  (``||·||_*`` the dual norm: L1 for the L∞ attack, L2 for L2) — ``K`` gradients per iteration;
* FAB-T (``targets=k``, AutoAttack's ``n_target_classes``): the hyperplane of one target class, run
  once per target among the ``k`` classes with the highest clean logits after the top one (ranks
  2..k+1) — one gradient per iteration, which is why AutoAttack uses it on many-class models.

Then (Algorithm 1 of the paper) both the current point and the original ``x0`` are projected onto
the hyperplane intersected with the box ``[0, 1]^D`` (:func:`project_hyperplane`, exact and batched:
a sort and a cumulative sum per image), and the step is the *biased* convex combination

    alpha = min(||d1|| / (||d1|| + ||d0||), alpha_max)
    x1 <- clip((1 - alpha)(x1 + eta d1) + alpha (x0 + eta d0), 0, 1)

(``eta`` extrapolates past the hyperplane; ``alpha`` pulls towards ``x0`` the closer ``x0`` is to the
boundary).  When ``x1`` is adversarial it is recorded if smaller than the best so far and pulled back,
``x1 <- x0 + beta (x1 - x0)`` (the backward step).  Success is *misclassification* (the target only
chooses the hyperplane), as in AutoAttack; with an explicit ``target`` argument it is ``pred == target``.

Two registered classes share the search: :class:`FAB` (``"fab"``) is the fixed-budget attack AutoAttack
runs (an image counts when the perturbation found is within ``eps``; later targets and restarts only
attack images still robust at ``eps``; restarts start at a random point at half the budget), and
:class:`FABMinimal` (``"fab-minimal"``) keeps the smallest perturbation over every target and restart
(robust accuracy at any budget read off ``norms``).  Both belong to the ``"minimal"`` family: the soundness
checks never cast FAB in PGD's part.

Defaults are the paper's / AutoAttack's: ``steps=100``, ``alpha_max=0.1``, ``eta=1.05``, ``beta=0.9``,
``restarts=1``, ``targets=9``.  Deviations from the reference code (fra31/auto-attack ``fab_pt.py``):
the projection is our own exact water-filling (same optimum; the infeasible case returns the box corner
nearest to the hyperplane); adversarials are recorded with masks instead of host-side indexing, so the
loop never synchronises; :class:`FABMinimal` starts restarts at half the best norm found so far.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, FixedBudgetAttack, MinimalAttack, fooled
from .gradient import check_common, check_number
from .norms import Norm, as_norm, fp32_floor


def _waterfill(a: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """(n,) the smallest ``lam >= 0`` with ``h(lam) = sum_i a_i min(lam, r_i) = c`` for rows ``a``, ``r`` (n, D) >= 0.

    ``h`` is concave, piecewise linear and non-decreasing; where ``c`` exceeds ``h(inf)`` the largest
    breakpoint is returned (every coordinate at its bound).  Exact: one sort and cumulative sums per row.
    """
    rs, order = r.sort(1)
    a_s = a.gather(1, order)
    done = (a_s * rs).cumsum(1)                                        # sum_{j<=k} a_j r_j
    rest = a_s.flip(1).cumsum(1).flip(1)                               # sum_{j>=k} a_j
    rest_after = torch.cat([rest[:, 1:], torch.zeros_like(rest[:, :1])], 1)
    h = done + rs * rest_after                                         # h at each breakpoint
    k = (h < c[:, None]).sum(1, keepdim=True)                          # lam lies in [r_{k-1}, r_k]
    km1 = (k - 1).clamp_min(0)
    a_prev = torch.where(k > 0, done.gather(1, km1), torch.zeros_like(c[:, None]))
    s_prev = torch.where(k > 0, rest_after.gather(1, km1), rest[:, :1])
    lam = ((c[:, None] - a_prev) / s_prev.clamp_min(1e-30))[:, 0]
    lam = torch.where(k[:, 0] >= r.shape[1], rs[:, -1], lam)
    return torch.where(c > 0, lam, torch.zeros_like(lam))


def _proj_linf(t: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """Minimal-L∞ ``d`` with ``<w, t + d> = <w, t> - c`` and ``t + d`` in [0, 1]; ``c >= 0``; (n, D) rows."""
    room = torch.where(w > 0, t, 1 - t) * (w != 0)                    # how far each coordinate can move
    rho = _waterfill(w.abs(), room, c)
    return -w.sign() * torch.minimum(rho[:, None], room)


def _proj_l2(t: Tensor, w: Tensor, c: Tensor) -> Tensor:
    """Minimal-L2 ``d`` with ``<w, t + d> = <w, t> - c`` and ``t + d`` in [0, 1]: ``d = -w min(lam, r)``."""
    safe = torch.where(w != 0, w, torch.ones_like(w))
    r = torch.where(w > 0, t / safe, (t - 1) / safe) * (w != 0)       # lam at which coordinate i hits the box
    lam = _waterfill(w * w, r.clamp_min(0), c)
    return -w * torch.minimum(lam[:, None], r.clamp_min(0))


_PROJECTIONS = {"linf": _proj_linf, "l2": _proj_l2}


def project_hyperplane(norm: str | Norm, t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """(n, D) the smallest step ``d`` (in ``norm``, L∞ or L2) taking ``t`` onto ``{<w, z> = b} ∩ [0, 1]^D``.

    Rows are independent: ``t`` (n, D) in [0, 1], ``w`` (n, D), ``b`` (n,).  Where the hyperplane misses the
    box, ``t + d`` is the box corner closest to it.
    """
    c = (w * t).sum(1) - b
    flip = torch.where(c < 0, -1.0, 1.0).to(w.dtype)                   # orient so that <w, z> must decrease
    return _PROJECTIONS[as_norm(norm).name](t, w * flip[:, None], c * flip)


def _hyperplane(clf: Classifier, x1: Tensor, y: Tensor, tcls: Tensor | None) -> tuple[Tensor, Tensor]:
    """The linearised decision boundary at ``x1`` (n, C, H, W): ``f`` (n,) and ``w = ∇f`` (n, D).

    Targeted (``tcls`` (n,)): ``f = z_t - z_y``; untargeted: the class ``s != y`` of smallest
    ``|z_s - z_y| / ||∇z_s - ∇z_y||_*`` (chosen by the caller from the returned stacks: (n, K), (n, K, D)).
    """
    x1 = x1.detach().requires_grad_(True)
    with torch.enable_grad():
        z = clf(x1)
        if tcls is not None:
            f = z.gather(1, tcls[:, None])[:, 0] - z.gather(1, y[:, None])[:, 0]
            if not f.requires_grad:                                    # the model cut the graph
                return f.detach(), torch.zeros_like(x1).flatten(1)
            (g,) = torch.autograd.grad(f.sum(), x1, materialize_grads=True)
            return f.detach(), g.flatten(1)
        k = z.shape[1]
        if not z.requires_grad:
            grads = [torch.zeros_like(x1) for _ in range(k)]
        else:
            grads = [torch.autograd.grad(z[:, j].sum(), x1, retain_graph=j + 1 < k, materialize_grads=True)[0]
                     for j in range(k)]
    g = torch.stack(grads, 1).flatten(2)                               # (n, K, D)
    z = z.detach()
    return z - z.gather(1, y[:, None]), g - g.gather(1, y[:, None, None].expand(-1, 1, g.shape[2]))


def fab_single_run(clf: Classifier, x0: Tensor, y: Tensor, x1: Tensor, *, tcls: Tensor | None,
                   target: Tensor | None, norm: Norm, steps: int, alpha_max: float, eta: float,
                   beta: float) -> tuple[Tensor, Tensor]:
    """One FAB run from ``x1``: returns the smallest adversarial found (n, C, H, W) and its norm (n,) (inf: none).

    ``x0`` (n, C, H, W) the clean images, ``y`` (n,) labels, ``tcls`` (n,) the hyperplane's target class
    (None: FAB's closest hyperplane), ``target`` the success criterion's target (None: misclassification).
    No host synchronisation inside the loop.
    """
    n, shape = len(x0), x0.shape
    x0f, x1f = x0.flatten(1), x1.flatten(1)
    best_x, best_n = x0f.clone(), torch.full((n,), float("inf"), device=x0.device)
    rows = torch.arange(n, device=x0.device)
    for _ in range(steps):
        f, w = _hyperplane(clf, x1f.view(shape), y, tcls)
        if tcls is None:                                               # FAB: the closest linearised boundary
            dist = f.abs() / (norm.dual(w) + 1e-12)
            dist[rows, y] = float("inf")
            s = dist.argmin(1)
            f, w = f[rows, s], w[rows, s]
        with torch.no_grad():
            b = (w * x1f).sum(1) - f
            d = project_hyperplane(norm, torch.cat([x1f, x0f]), torch.cat([w, w]), torch.cat([b, b]))
            a = norm.distance(d).clamp_min(1e-8)
            alpha = (a[:n] / (a[:n] + a[n:])).clamp(0.0, alpha_max)[:, None]
            x1f = ((x1f + eta * d[:n]) * (1 - alpha) + (x0f + eta * d[n:]) * alpha).clamp(0, 1)
            with torch.inference_mode():
                logits = clf(x1f.view(shape))
            adv = fooled(logits, y, target)
            size = norm.distance(x1f - x0f)
            better = adv & (size < best_n)
            best_x = torch.where(better[:, None], x1f, best_x)
            best_n = torch.where(better, size, best_n)
            x1f = torch.where(adv[:, None], x0f + (x1f - x0f) * beta, x1f)       # the backward step
    return best_x.view(shape), best_n


@dataclass
class _FABBase:
    """Shared fields, validation and the target/restart loop of :class:`FAB` and :class:`FABMinimal`."""

    norm: str = "linf"
    steps: int = 100
    restarts: int = 1
    targets: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    seed: int | None = 0

    def _validate(self) -> None:
        check_number(self, "steps", low=1, integer=True)
        check_number(self, "restarts", low=1, integer=True)
        check_number(self, "targets", low=0, integer=True)
        check_number(self, "alpha_max")
        check_number(self, "eta", strict=True)
        check_number(self, "beta", strict=True)
        check_number(self, "seed", integer=True, none_ok=True)
        if self.alpha_max > 1 or self.beta > 1:
            raise TrustVisionError(f"{self.name}: alpha_max and beta must be in [0, 1], got "
                                   f"{self.alpha_max!r} and {self.beta!r}")

    def _plans(self, logits0: Tensor, target: Tensor | None, extras: dict) -> list[Tensor | None]:
        """The hyperplane target of each pass: the given target, FAB (None) or the ranks 2..k+1 (FAB-T)."""
        if target is not None:
            return [target]
        k = min(self.targets, logits0.shape[1] - 1)
        if k < self.targets:
            extras["note"] = f"{self.targets} target classes asked, the model has {logits0.shape[1]}: used {k}"
        extras["targets"] = k
        if k == 0:
            return [None]
        order = logits0.argsort(1, descending=True)
        return [order[:, j] for j in range(1, k + 1)]

    def _search(self, clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None,
                limit: float | None, radius: float) -> AttackResult:
        """Every target x restart pass; ``limit``: stop attacking images fooled within it (None: keep minimising)."""
        x = x.clone() if x.is_inference() else x
        ball, n, dev = as_norm(self.norm), len(x), x.device
        gen = self.generator(self.seed, dev)
        with torch.inference_mode():
            logits0 = clf(x)
        extras: dict = {}
        plans = self._plans(logits0, target, extras)
        clean = fooled(logits0, y, target)
        best_n = torch.where(clean, 0.0, float("inf"))
        best_x = x.clone()
        queries = torch.ones(n, dtype=torch.long, device=dev)
        gradients = torch.zeros_like(queries)
        per_iter = 1 if plans[0] is not None else clf.num_classes
        for tcls in plans:
            for r in range(self.restarts):
                open_ = ~clean & (best_n > limit if limit is not None else torch.ones_like(clean))
                idx = open_.nonzero()[:, 0]                            # one host sync per pass
                if len(idx) == 0:
                    break
                x0 = x[idx]
                x1 = x0
                if r > 0:                                              # random start, half the budget
                    t = ball.random_start(x0, 1.0, gen)
                    size = 0.5 * best_n[idx].clamp_max(radius)
                    x1 = (x0 + t * (size / ball.distance(t).clamp_min(1e-12)).view(-1, *[1] * (x.ndim - 1))
                          ).clamp(0, 1)
                bx, bn = fab_single_run(clf, x0, y[idx], x1, tcls=None if tcls is None else tcls[idx],
                                        target=None if target is None else target[idx], norm=ball,
                                        steps=self.steps, alpha_max=self.alpha_max, eta=self.eta, beta=self.beta)
                better = bn < best_n[idx]
                best_n[idx] = torch.where(better, bn, best_n[idx])
                best_x[idx] = torch.where(better.view(-1, *[1] * (x.ndim - 1)), bx, best_x[idx])
                queries[idx] += 2 * self.steps
                gradients[idx] += per_iter * self.steps
        ok = best_n <= limit if limit is not None else torch.isfinite(best_n)
        x_adv = torch.where(ok.view(-1, *[1] * (x.ndim - 1)), best_x, x)
        with torch.inference_mode():
            logits = clf(x_adv)
        queries += 1
        success = ok & fooled(logits, y, target)
        x_adv = torch.where(success.view(-1, *[1] * (x.ndim - 1)), x_adv, x)
        extras["logits"] = logits
        return AttackResult(x_adv, success, ball.distance(x_adv - x), queries, gradients, extras)


@ATTACKS.register("fab")
@dataclass
class FAB(_FABBase, FixedBudgetAttack):
    """FAB / FAB-T (Croce & Hein, ICML 2020) as a fixed-budget attack, L∞ or L2 — AutoAttack's use of it.

    Args:
        eps: budget in [0, 1] pixel units (None: 8/255 for L∞, 0.5 for L2); an image counts as fooled when
            the perturbation found is within ``eps`` (exactly, in fp32).
        norm: ``"linf"`` or ``"l2"``.  steps: iterations per pass (100).  restarts: passes per target (1;
            later ones start at a random point at ``eps / 2``).
        targets: FAB-T target classes, by clean-logit rank 2..targets+1 (9; fewer on models with fewer
            classes, with ``extras["note"]``); 0: untargeted FAB (every class linearised, K gradients/step).
        alpha_max, eta, beta: the paper's bias cap (0.1), extrapolation (1.05) and backward step (0.9).
        seed: seeds the random restarts (None: global RNG).

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,), ``target`` (N,) or None -> :class:`AttackResult`:
    ``x_adv`` (N, C, H, W) (``x`` where no perturbation within ``eps`` was found), ``success``/``norms`` (N,),
    ``queries`` (N,) forward passes (2 per iteration), ``gradients`` (N,) (1 per iteration for FAB-T, K for
    FAB), ``extras["logits"]`` (N, K) at ``x_adv``, ``extras["targets"]``.

    Example::

        res = FAB(eps=0.3, norm="linf")(clf, x, y)            # FAB-T, 9 targets, 100 steps
        robust_acc = (~res.success).float().mean()
    """

    name: ClassVar[str] = "fab"
    family: ClassVar[str] = "minimal"
    uses_gradients: ClassVar[bool] = True
    eps: float | None = None

    def __post_init__(self) -> None:
        check_common(self)
        self._validate()

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        return self._search(classifier, x, y, target, fp32_floor(self.eps), self.eps)


@ATTACKS.register("fab-minimal")
@dataclass
class FABMinimal(_FABBase, MinimalAttack):
    """FAB / FAB-T (Croce & Hein, ICML 2020) as a minimal-perturbation attack, L∞ or L2.

    Arguments as :class:`FAB` without ``eps``; every target and restart runs on every image and the
    smallest adversarial perturbation is kept.  ``start_eps`` caps the radius of random restarts (half
    of ``min(best norm so far, start_eps)``; None: 0.3 for L∞, 1.0 for L2, the paper's MNIST budgets).

    Shapes as :class:`FAB`; ``x_adv`` is ``x`` where no adversarial was found, ``norms`` the minimal sizes.

    Example::

        res = FABMinimal(norm="l2", targets=0)(clf, x, y)     # untargeted FAB
        res.robust_at(1.5, correct)
    """

    name: ClassVar[str] = "fab-minimal"
    family: ClassVar[str] = "minimal"
    uses_gradients: ClassVar[bool] = True
    start_eps: float | None = None

    def __post_init__(self) -> None:
        check_common(self, eps=False)
        self._validate()
        if self.start_eps is None:
            self.start_eps = {"linf": 0.3, "l2": 1.0}[self.norm]
        check_number(self, "start_eps", strict=True)

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        return self._search(classifier, x, y, target, None, self.start_eps)

