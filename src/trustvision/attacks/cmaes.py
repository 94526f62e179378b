"""Batched CMA-ES: one Covariance Matrix Adaptation Evolution Strategy per problem, all on the device at once.

Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772 (2016), with the default strategy
parameters of its Table 1 (positive recombination weights ``ln((λ+1)/2) - ln i`` for the best
``μ = λ // 2``; cumulation ``c_c``, ``c_σ``; rank-one ``c_1`` and rank-μ ``c_μ`` updates; damping
``d_σ``; ``h_σ`` stall of the rank-one path).  This is the ``(μ/μ_W, λ)``-CMA-ES that the ``cma``
package runs with ``CMA_active=False``; the threshold attack of Kotyan & Vargas (PLOS ONE 2022) runs it
through that package, one image at a time.

Batched: N independent problems of dimension D evolve together — means (N, D), step sizes (N,),
covariances (N, D, D) — and every generation samples (A, λ, D) candidates for the A still-active
problems, scored by one call of ``evaluate``.  The eigendecomposition ``C = B diag(d²) Bᵀ`` (batched
``torch.linalg.eigh``) is refreshed lazily, every ``max(1, ⌊1 / (10 D (c_1 + c_μ))⌋)`` generations, as
in the tutorial.  A problem stops as soon as ``evaluate`` says one of its candidates succeeded (the
attack's early stop); the only host synchronisation per generation is the count of active problems.

Box constraints (``lo``, ``hi``): candidates are *evaluated* clipped to the box (an L∞ attack's optimum
lies in its corners, which clipping reaches); the distribution is updated with the unclipped samples,
and the mean is clipped back into the box after each update so that it cannot drift away.  The ``cma``
package instead maps an unbounded search space into the box (``BoundTransform``); the difference is
measured in tests/test_evolutionary.py (success within noise on the same model and budget).

Memory: ``N·D²`` floats for the covariances (plus as much for ``B``): 16 MNIST images (D = 784) take
80 MB, 64 CIFAR images (D = 3072) 4.8 GB — lower the batch on large images.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Evaluate = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""``evaluate(idx (A,), genes (A, λ, D)) -> (fitness (A, λ) to minimise, success (A, λ) bool)``."""


@dataclass(frozen=True)
class Strategy:
    """The default strategy parameters (Hansen 2016, Table 1) for dimension ``n`` and population ``lam``."""

    n: int
    lam: int

    @property
    def mu(self) -> int:
        return self.lam // 2

    def weights(self, device) -> Tensor:
        """(μ,) positive recombination weights summing to 1."""
        w = math.log((self.lam + 1) / 2) - torch.log(torch.arange(1, self.mu + 1, device=device, dtype=torch.float64))
        return (w / w.sum()).float()

    @property
    def mueff(self) -> float:
        w = math.log((self.lam + 1) / 2) - torch.log(torch.arange(1, self.mu + 1, dtype=torch.float64))
        w = w / w.sum()
        return float(1 / (w ** 2).sum())

    @property
    def cc(self) -> float:
        n, m = self.n, self.mueff
        return (4 + m / n) / (n + 4 + 2 * m / n)

    @property
    def cs(self) -> float:
        return (self.mueff + 2) / (self.n + self.mueff + 5)

    @property
    def c1(self) -> float:
        return 2 / ((self.n + 1.3) ** 2 + self.mueff)

    @property
    def cmu(self) -> float:
        m = self.mueff
        return min(1 - self.c1, 2 * (m - 2 + 1 / m) / ((self.n + 2) ** 2 + m))

    @property
    def damps(self) -> float:
        return 1 + 2 * max(0.0, math.sqrt((self.mueff - 1) / (self.n + 1)) - 1) + self.cs

    @property
    def chi_n(self) -> float:
        """E||N(0, I)||."""
        n = self.n
        return math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))

    @property
    def eigen_every(self) -> int:
        return max(1, int(1 / (10 * self.n * (self.c1 + self.cmu))))


@dataclass
class CMAResult:
    """What :func:`cma_es` returns (leading dimension N, the problems).

    Attributes:
        best: (N, D) a successful candidate where one was found, else the fittest ever evaluated
            (clipped to the box).  best_fit: (N,) its fitness.  found: (N,) bool.
        queries: (N,) int64 candidates evaluated per problem.
        history: (N, G + 1) best fitness so far after the initial mean and each generation run
            (problems that stopped keep their last value).
    """

    best: Tensor
    best_fit: Tensor
    found: Tensor
    queries: Tensor
    history: Tensor


def _sample(mean: Tensor, sigma: Tensor, B: Tensor, d: Tensor, lam: int, gen) -> tuple[Tensor, Tensor]:
    """(A, λ, D) steps ``y = B diag(d) z`` and candidates ``m + σ y`` for means (A, D), step sizes (A,)."""
    z = torch.randn(mean.shape[0], lam, mean.shape[1], generator=gen, device=mean.device)
    y = torch.matmul(z * d[:, None, :], B.transpose(1, 2))
    return y, mean[:, None] + sigma[:, None, None] * y


def _clip(x: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    if lo is None:
        return x
    return torch.minimum(torch.maximum(x, lo[:, None]), hi[:, None]) if x.ndim == 3 else \
        torch.minimum(torch.maximum(x, lo), hi)


def cma_es(evaluate: Evaluate, mean0: Tensor, sigma0: Tensor | float, *, pop_size: int, generations: int,
           lo: Tensor | None = None, hi: Tensor | None = None, gen: torch.Generator | None = None,
           early_stop: bool = True) -> CMAResult:
    """Run N CMA-ES problems of dimension D in one batch.

    Args:
        evaluate: see :data:`Evaluate`; receives candidates already clipped to ``[lo, hi]``.
        mean0: (N, D) initial means.  sigma0: (N,) or a float, initial step sizes.
        pop_size: λ, candidates per problem and generation.  generations: generations at most.
        lo, hi: (N, D) box bounds or None (unbounded).  gen: a seeded generator on the device.
        early_stop: stop a problem once one of its candidates succeeds.
    Returns: :class:`CMAResult`.  The initial mean is evaluated first (one query).
    """
    n, dim = mean0.shape
    dev = mean0.device
    st = Strategy(dim, pop_size)
    w = st.weights(dev)
    mean = _clip(mean0.float().clone(), lo, hi)
    sigma = torch.as_tensor(sigma0, dtype=torch.float32, device=dev).expand(n).clone()
    C = torch.eye(dim, device=dev).expand(n, dim, dim).clone()
    B, d = C.clone(), torch.ones(n, dim, device=dev)
    pc, ps = torch.zeros(n, dim, device=dev), torch.zeros(n, dim, device=dev)
    all_idx = torch.arange(n, device=dev)
    best_fit, ok0 = evaluate(all_idx, mean[:, None])
    best_fit, found, best = best_fit[:, 0].clone(), ok0[:, 0].clone(), mean.clone()
    queries = torch.ones(n, dtype=torch.long, device=dev)
    history = [best_fit.clone()]
    for g in range(generations):
        idx = (~found).nonzero()[:, 0] if early_stop else all_idx   # the one host sync per generation
        if len(idx) == 0:
            history.extend([best_fit.clone()] * (generations - g))
            break
        y, x = _sample(mean[idx], sigma[idx], B[idx], d[idx], pop_size, gen)
        cand = _clip(x, lo[idx] if lo is not None else None, hi[idx] if hi is not None else None)
        fit, ok = evaluate(idx, cand)
        queries[idx] += pop_size
        _keep_best(best, best_fit, found, idx, cand, fit, ok)
        order = fit.argsort(1)[:, :st.mu]                          # (A, μ) the best μ of each problem
        y_sel = y.gather(1, order[..., None].expand(-1, -1, dim))  # (A, μ, D)
        m_new, s_new, pc[idx], ps[idx], C[idx] = _update(st, w, g, mean[idx], sigma[idx], C[idx], B[idx], d[idx],
                                                         pc[idx], ps[idx], y_sel)
        mean[idx] = _clip(m_new, lo[idx] if lo is not None else None, hi[idx] if hi is not None else None)
        sigma[idx] = s_new
        if (g + 1) % st.eigen_every == 0:
            B[idx], d[idx] = _eigen(C[idx])
        history.append(best_fit.clone())
    return CMAResult(best, best_fit, found, queries, torch.stack(history, 1))


def _keep_best(best: Tensor, best_fit: Tensor, found: Tensor, idx: Tensor, cand: Tensor, fit: Tensor,
               ok: Tensor) -> None:
    """In place: per problem, the first success (its fittest successful candidate), else the fittest so far."""
    ar = torch.arange(len(idx), device=cand.device)
    hit = ok.any(1)
    k = torch.where(hit, torch.where(ok, fit, math.inf).argmin(1), fit.argmin(1))
    f_k = fit[ar, k]
    take = hit | ((f_k < best_fit[idx]) & ~found[idx])
    best[idx] = torch.where(take[:, None], cand[ar, k], best[idx])
    best_fit[idx] = torch.where(take, f_k, best_fit[idx])
    found[idx] = found[idx] | hit


def _update(st: Strategy, w: Tensor, g: int, mean: Tensor, sigma: Tensor, C: Tensor, B: Tensor, d: Tensor,
            pc: Tensor, ps: Tensor, y_sel: Tensor):
    """One CMA-ES update (Hansen 2016, eqs. 41-47) for A problems; ``y_sel`` (A, μ, D) sorted best first."""
    yw = (w[None, :, None] * y_sel).sum(1)                          # (A, D)
    mean = mean + sigma[:, None] * yw
    c_inv_half_yw = torch.matmul(B, (torch.matmul(B.transpose(1, 2), yw[..., None])[..., 0] / d)[..., None])[..., 0]
    ps = (1 - st.cs) * ps + math.sqrt(st.cs * (2 - st.cs) * st.mueff) * c_inv_half_yw
    ps_norm = ps.norm(dim=1)
    hsig = (ps_norm / math.sqrt(1 - (1 - st.cs) ** (2 * (g + 1))) / st.chi_n < 1.4 + 2 / (st.n + 1)).float()
    pc = (1 - st.cc) * pc + hsig[:, None] * math.sqrt(st.cc * (2 - st.cc) * st.mueff) * yw
    rank_mu = torch.einsum("amd,ame->ade", w[None, :, None] * y_sel, y_sel)
    decay = 1 - st.c1 - st.cmu + (1 - hsig) * st.c1 * st.cc * (2 - st.cc)
    C = decay[:, None, None] * C + st.c1 * pc[:, :, None] * pc[:, None, :] + st.cmu * rank_mu
    sigma = sigma * torch.exp((st.cs / st.damps) * (ps_norm / st.chi_n - 1))
    return mean, sigma, pc, ps, C


def _eigen(C: Tensor) -> tuple[Tensor, Tensor]:
    """``B`` (A, D, D) and ``d`` (A, D) with ``C = B diag(d²) Bᵀ`` (C symmetrised; eigenvalues floored at 1e-20)."""
    C = (C + C.transpose(1, 2)) / 2
    vals, B = torch.linalg.eigh(C)
    return B, vals.clamp_min(1e-20).sqrt()
