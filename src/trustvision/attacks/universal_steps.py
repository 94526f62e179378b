"""Batched building blocks of the UAP generators (:mod:`.universal`): the in-order replay of per-image updates,
the best-of-candidates choice, and the data-parallel split of a mini-batch across torchrun ranks.

**Replay** (Hirano & Takemoto, Algorithms 2020; Moosavi-Dezfooli et al., CVPR 2017, Algorithm 1; ART's
``UniversalPerturbation``): for each accepted image ``j`` of a mini-batch, in order,
``v <- p(clip(x_j + v + r_j, 0, 1) - x_j)``.

* **L∞** — per pixel, an accepted update is the map ``v -> clamp(v + r_j, lo_j, hi_j)`` with
  ``lo_j = max(-x_j, -eps)`` and ``hi_j = min(1 - x_j, eps)`` (a rejected one is the identity:
  ``r = 0, lo = -inf, hi = inf``).  Such maps are closed under composition::

      clamp(clamp(v + a1, l1, h1) + a2, l2, h2) = clamp(v + a1 + a2, clamp(l1 + a2, l2, h2), clamp(h1 + a2, l2, h2))

  so the B sequential updates fold into one map in ``ceil(log2 B)`` vectorised steps (a tree reduction),
  the same ``v`` as B sequential steps up to float rounding (tested against the sequential loop).
* **L2** — the projection ``v * min(1, eps / ||v||)`` couples the pixels; the replay stays B sequential
  vector operations on the device, with device-side masks (no host sync).

**Data parallel** (torchrun, :mod:`trustvision.scale.dist`): a mini-batch of ``b`` images is cut into
contiguous row ranges, one per rank (:class:`Split`); each rank computes the steps of its rows, and the
ranks combine them with all-reduces only (:meth:`Split.gather` all-reduces a zero-padded ``(b, ...)``
tensor, which works on every backend and device): the sum of the steps, the rank-wise folded L∞ replay
maps (composed in rank order: exactly the in-order replay), the L2 steps (replayed on every rank), and
the candidates' success counts and cross-entropy sums.  Every rank then holds the same ``v``.

Shapes: mini-batch rows ``x`` (n, C, H, W) in [0, 1]; steps ``r`` like ``x``; masks ``ok`` (n,) bool;
``v`` (1, C, H, W).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.classifier import Classifier
from ..scale.dist import Dist
from .norms import as_norm, fp32_floor


def project_v(v: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``v`` (1, C, H, W) onto the ``eps`` ball so that ``||v|| <= eps`` holds exactly in fp32."""
    return as_norm(norm).fit(v, fp32_floor(eps))


@dataclass(frozen=True)
class Split:
    """This rank's contiguous rows ``[lo, hi)`` of a mini-batch of ``b`` images (all of them single-process)."""

    dist: Dist
    b: int

    def bounds(self, rank: int) -> tuple[int, int]:
        return self.b * rank // self.dist.world, self.b * (rank + 1) // self.dist.world

    @property
    def lo(self) -> int:
        return self.bounds(self.dist.rank)[0]

    @property
    def hi(self) -> int:
        return self.bounds(self.dist.rank)[1]

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over the ranks (all-reduce)."""
        return self.dist.sum(t)

    def gather(self, part: Tensor) -> Tensor:
        """(b, ...) every rank's rows in order, from this rank's (hi - lo, ...) ``part`` (one all-reduce)."""
        if not self.dist.active:
            return part
        full = torch.zeros(self.b, *part.shape[1:], dtype=part.dtype, device=part.device)
        full[self.lo:self.hi] = part
        return self.dist.sum(full)


# ---------------------------------------------------------------------------------------------- replay
def _fold(a: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Compose the maps ``v -> clamp(v + a_j, lo_j, hi_j)`` (rows j = 0, 1, ... applied in order) into one (1, ...)."""
    while len(a) > 1:
        if len(a) % 2:                           # pad with the identity map
            a = torch.cat([a, torch.zeros_like(a[:1])])
            lo = torch.cat([lo, torch.full_like(lo[:1], -float("inf"))])
            hi = torch.cat([hi, torch.full_like(hi[:1], float("inf"))])
        a1, a2, l1, l2, h1, h2 = a[0::2], a[1::2], lo[0::2], lo[1::2], hi[0::2], hi[1::2]
        a, lo, hi = a1 + a2, torch.clamp(l1 + a2, l2, h2), torch.clamp(h1 + a2, l2, h2)
    return a, lo, hi


def _linf_maps(x: Tensor, r: Tensor, ok: Tensor, e: float) -> tuple[Tensor, Tensor, Tensor]:
    """(a, lo, hi) of the accepted updates (rows with ``ok``); identity maps for the others; (1, ...) each."""
    if len(x) == 0:                              # an empty share of a mini-batch: the identity
        inf = torch.full((1, *x.shape[1:]), float("inf"), dtype=x.dtype, device=x.device)
        return torch.zeros_like(inf), -inf, inf
    m = ok.view(-1, *([1] * (x.dim() - 1)))
    inf = torch.full_like(x, float("inf"))
    a = torch.where(m, r, torch.zeros_like(r))
    lo = torch.where(m, torch.clamp(-x, min=-e), -inf)
    hi = torch.where(m, torch.clamp(1 - x, max=e), inf)
    return _fold(a, lo, hi)


def replay(split: Split, x: Tensor, v: Tensor, r: Tensor, ok: Tensor, eps: float, norm: str) -> Tensor:
    """The per-image rule ``v <- p(clip(x_j + v + r_j) - x_j)`` for every row ``j`` with ``ok[j]``, in order over
    the whole mini-batch (all ranks' rows: rank 0's first), from ``v`` (1, C, H, W); then the exact budget."""
    e = float(torch.tensor(eps, dtype=torch.float32))
    if norm == "linf":
        a, lo, hi = _linf_maps(x, r, ok, e)
        if split.dist.active:                    # fold the ranks' maps in rank order
            maps = Split(split.dist, split.dist.world)
            a, lo, hi = (maps.gather(t) for t in (a, lo, hi))
            a, lo, hi = _fold(a, lo, hi)
        return project_v(torch.clamp(v + a, lo, hi), eps, norm)
    x, r, ok = split.gather(x), split.gather(r), split.gather(ok.to(torch.uint8)).bool()
    ball = as_norm(norm)
    lo, hi = -x, 1 - x
    for j in range(len(x)):      # sequential by definition (each update starts from the last): B vector ops
        u = ball.project(torch.clamp(v + r[j:j + 1], lo[j:j + 1], hi[j:j + 1]), e)
        v = torch.where(ok[j], u, v)                             # device-side mask: no host sync
    return project_v(v, eps, norm)                               # exact budget (fp32 rounding) once at the end


def replay_sequential(x: Tensor, v: Tensor, r: Tensor, ok: Tensor, eps: float, norm: str) -> Tensor:
    """Reference: the replay as B plain sequential updates (the papers' loop), for tests."""
    e = float(torch.tensor(eps, dtype=torch.float32))
    ball = as_norm(norm)
    for j in range(len(x)):
        u = ball.project((x[j:j + 1] + v + r[j:j + 1]).clamp(0, 1) - x[j:j + 1], e)
        v = torch.where(ok[j], u, v)
    return project_v(v, eps, norm)


def masked_sum(split: Split, v: Tensor, r: Tensor, ok: Tensor, eps: float, norm: str) -> Tensor:
    """``p(v + Σ_j ok_j r_j)`` over the whole mini-batch (the ranks' partial sums all-reduced)."""
    part = (r * ok.to(r.dtype).view(-1, *([1] * (r.dim() - 1)))).sum(0, keepdim=True)
    return project_v(v + split.sum(part), eps, norm)


# ---------------------------------------------------------------------------------------------- choice
def choose(split: Split, cands: list[Tensor], logits: list[Tensor], lab: Tensor, t: Tensor | None) -> Tensor:
    """The candidate with the highest success on the whole mini-batch; ties: the best mean cross-entropy
    (untargeted: highest, targeted: lowest), then the earlier candidate.  ``cands`` (1, C, H, W) each,
    ``logits`` (n, classes) of this rank's rows under each candidate; success counts and cross-entropy sums
    are all-reduced, so every rank picks the same one."""
    la = torch.stack(logits)                                     # (K, n, classes)
    y = t if t is not None else lab
    pred = la.argmax(2)
    hits = ((pred == t) if t is not None else (pred != lab)).float().sum(1)
    ce = F.cross_entropy(la.flatten(0, 1), y.repeat(len(la)), reduction="none").view(len(la), -1).sum(1)
    stats = split.sum(torch.stack([hits, ce]))                   # (2, K): one all-reduce
    mean_ce = stats[1] / max(split.b, 1)
    tie = torch.atan(-mean_ce if t is not None else mean_ce) / torch.pi    # in (-1/2, 1/2): below one hit
    best = (stats[0] + tie).argmax()
    return torch.cat(cands).index_select(0, best.view(1))


def predict_rows(clf: Classifier, x: Tensor, rows: Tensor, extra: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Predicted classes (n,) of ``x`` (n, C, H, W) on the rows where ``rows`` (n,) is True (-1 on the others),
    and the logits of ``extra`` (m, C, H, W) from the same forward call (None without ``extra``).

    On the CPU only the wanted rows are evaluated: picking them needs their count on the host, which costs
    nothing there.  On an accelerator every row is evaluated (fixed shapes, no host sync) and the others are
    masked.  Same predictions either way for a model that treats images independently (eval mode)."""
    pick = x.device.type == "cpu"
    idx = rows.nonzero()[:, 0] if pick else None
    xs = x[idx] if pick else x
    logits = forward(clf, xs if extra is None else torch.cat([xs, extra]))
    part = logits[:len(xs)].argmax(1)
    if pick:
        pred = torch.full((len(x),), -1, dtype=part.dtype, device=x.device)
        pred[idx] = part
    else:
        pred = torch.where(rows, part, torch.full_like(part, -1))
    return pred, (None if extra is None else logits[len(xs):])


def forward(clf: Classifier, x: Tensor) -> Tensor:
    """Logits (n, classes) of ``x`` (n, C, H, W), forward only."""
    with torch.inference_mode():
        return clf(x)
