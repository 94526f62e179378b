"""Square Attack — Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020.

A random search that only reads the model's logits.  It keeps, per image, the best point ``x_best``
(lowest loss: the margin ``z_y - max_{j != y} z_j``, or for a target ``max_{j != t} z_j - z_t``) and
each iteration proposes a change confined to a random square window of side ``s``; the proposal is
kept when it lowers the loss or fools the model.  The side follows the paper's schedule: the share
``p`` of changed pixels starts at ``p_init`` (0.8) and is halved at iterations 10, 50, 200, 500,
1000, 2000, 4000, 6000 and 8000 of 10 000 (rescaled to ``n_queries`` as AutoAttack does);
``s = round(sqrt(p · H · W))``.

* L∞ (Algorithm 2): start from vertical stripes, ``x + eps · (±1)`` per channel and column; a proposal
  sets the window to ``x ± eps`` with one random sign per channel (the vertices of the ball are where
  the search lives); signs that would leave the image unchanged are flipped, so no query is wasted
  (the paper's code redraws them).
* L2 (Algorithm 3): start from a grid of ``H // 5``-sided tiles holding the centre-weighted pattern
  ``eta`` (two halves of opposite sign, nested squares weighted ``1 / (k + 1)^2``), scaled to norm
  ``eps``.  A proposal moves the perturbation mass of two random windows ``W1 ∪ W2`` into ``W1`` with a
  new pattern (per channel: ``||·|| = sqrt(||delta_{W1 ∪ W2}||^2 + (eps^2 - ||delta||^2) / C)``) and
  zeroes ``W2``, so the total stays at ``eps`` before clipping to the image box.

Batched on the device: every image draws its own window and signs (from a per-image stream: the
draws for the whole batch are made every iteration, so an image's result does not depend on which
of its batch-mates are already fooled), all images advance together, and fooled images stop
spending queries — they are masked at once and dropped from the working set every ``check_every``
iterations (the only host synchronisation).  ``queries`` counts model queries per image: the clean prediction, the start
point, and each proposal that differs from ``x_best`` (an unchanged proposal's answer is known), so it
never exceeds ``n_queries`` per restart.  Budgets are exact in fp32 (:meth:`~.norms.Norm.enforce`).

Deviations from the reference code (fra31/auto-attack ``square.py``, which torchattacks follows): the
window position and the pattern's orientation are drawn per image (the reference shares one position
per batch; the paper's NumPy code draws per image); the L2 window mass is per channel as in the
paper's Algorithm 3 (the reference pools channels and rescales to ``eps``); no query is counted for a
proposal equal to the current point.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .base import ATTACKS, AttackResult, FixedBudgetAttack, fooled, margin_loss
from .gradient import check_common, check_number
from .norms import Norm, as_norm, fp32_floor

_MARKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)       # of 10 000 iterations (the paper's schedule)


def p_schedule(it: int, n_queries: int, p_init: float, rescale: bool = True) -> float:
    """The share of pixels changed at iteration ``it``: ``p_init`` halved at each of the paper's marks passed."""
    i = int(it / n_queries * 10000) if rescale else it
    return p_init / 2 ** sum(i > m for m in _MARKS)


def square_loss(kind: str, logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) the loss Square *minimises*: the margin (positive until fooled), or -CE(y) / CE(target)."""
    if kind == "margin":
        return margin_loss(logits, y, target, kappa=None)
    if target is None:
        return -F.cross_entropy(logits, y, reduction="none")
    return F.cross_entropy(logits, target, reduction="none")


def eta_pattern(s: int, device: torch.device) -> Tensor:
    """(s, s) unit-L2 centre-weighted pattern of the L2 attack: two halves of opposite sign, each the sum of
    nested rectangles around its centre weighted ``1 / (k + 1)^2`` (Andriushchenko et al., sec. 3.2)."""
    def half(a: int) -> Tensor:
        if a == 0:
            return torch.zeros(0, s, device=device)
        r = (torch.arange(a, device=device) - a // 2).abs()
        c = (torch.arange(s, device=device) - s // 2).abs()
        dist = torch.maximum(r[:, None], c[None, :])                  # ring index of each position
        k_max = max(a // 2, s // 2) + 1
        weights = 1.0 / torch.arange(1, k_max + 1, device=device, dtype=torch.float32) ** 2
        tail = weights.flip(0).cumsum(0).flip(0)                       # tail[k] = sum_{j >= k} 1 / (j + 1)^2
        m = tail[dist]
        return m / m.norm()
    e = torch.cat([half(s // 2), -half(s - s // 2)])
    return e / e.norm()


def _window(top: Tensor, left: Tensor, s: int, h: int, w: int) -> Tensor:
    """(n, 1, h, w) bool masks of the s×s windows at ``top``, ``left`` (n,)."""
    r = torch.arange(h, device=top.device)
    c = torch.arange(w, device=top.device)
    rows = (r >= top[:, None]) & (r < top[:, None] + s)
    cols = (c >= left[:, None]) & (c < left[:, None] + s)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _draws(gen, n: int, c: int, h: int, w: int, s: int, dev) -> dict[str, Tensor]:
    """One iteration's random choices for all ``n`` images: two windows, per-channel signs, a transpose."""
    ri = lambda hi, shape: torch.randint(0, hi, shape, generator=gen, device=dev)    # noqa: E731
    return {"top": ri(h - s + 1, (n,)), "left": ri(w - s + 1, (n,)), "top2": ri(h - s + 1, (n,)),
            "left2": ri(w - s + 1, (n,)), "sign": ri(2, (n, c, 1, 1)).float() * 2 - 1, "flip": ri(2, (n,)).bool()}


class _LInfSearch:
    """L∞ proposals: pixels only ever take the values ``lo = x - eps`` or ``hi = x + eps`` (clipped, exact)."""

    def __init__(self, x: Tensor, eps: float, ball: Norm) -> None:
        self.lo = ball.enforce(x, (x - eps).clamp(0, 1), eps)
        self.hi = ball.enforce(x, (x + eps).clamp(0, 1), eps)

    @staticmethod
    def side(p: float, h: int, w: int) -> int:
        """Window side for share ``p``: ``round(sqrt(p·H·W))``, at least 1, at most the image."""
        return min(max(int(round((p * h * w) ** 0.5)), 1), h, w)

    def take(self, keep: Tensor) -> "_LInfSearch":
        new = object.__new__(_LInfSearch)
        new.lo, new.hi = self.lo[keep], self.hi[keep]
        return new

    def start(self, x: Tensor, gen) -> Tensor:
        n, c, _, w = x.shape
        stripes = torch.randint(0, 2, (n, c, 1, w), generator=gen, device=x.device).bool()
        return torch.where(stripes, self.hi, self.lo)

    def propose(self, x: Tensor, best: Tensor, d: dict, s: int) -> Tensor:
        mask = _window(d["top"], d["left"], s, x.shape[2], x.shape[3])
        cand = torch.where(mask, torch.where(d["sign"] > 0, self.hi, self.lo), best)
        same = (cand == best).flatten(1).all(1).view(-1, 1, 1, 1)    # a no-op: flip the signs (the paper's
        sign = torch.where(same, -d["sign"], d["sign"])                # code redraws until the window changes)
        return torch.where(mask, torch.where(sign > 0, self.hi, self.lo), best)


class _L2Search:
    """L2 proposals (Algorithm 3): move the mass of windows W1 ∪ W2 into W1 with a fresh centre-weighted pattern."""

    def __init__(self, x: Tensor, eps: float, ball: Norm) -> None:
        self.eps, self.ball = eps, ball

    @staticmethod
    def side(p: float, h: int, w: int) -> int:
        """Window side for share ``p``: odd, at least 3 (room for the pattern), at most the image."""
        s = max(int(round((p * h * w) ** 0.5)), 3) | 1
        m = min(h, w)
        return min(s, m if m % 2 else max(m - 1, 1))

    def take(self, keep: Tensor) -> "_L2Search":
        return self

    def start(self, x: Tensor, gen) -> Tensor:
        n, c, h, w = x.shape
        s = max(min(h, w) // 5, 1)
        nh, nw = h // s, w // s
        pat = eta_pattern(s, x.device)
        flip = torch.randint(0, 2, (n, 1, nh, nw, 1, 1), generator=gen, device=x.device).bool()
        sign = torch.randint(0, 2, (n, c, nh, nw, 1, 1), generator=gen, device=x.device).float() * 2 - 1
        tiles = torch.where(flip, pat.T, pat) * sign                   # (n, c, nh, nw, s, s)
        grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, nh * s, nw * s)
        delta = torch.zeros_like(x)
        oh, ow = (h - nh * s) // 2, (w - nw * s) // 2
        delta[:, :, oh:oh + nh * s, ow:ow + nw * s] = grid
        delta = delta * (self.eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
        return self.ball.enforce(x, (x + delta).clamp(0, 1), self.eps)

    def propose(self, x: Tensor, best: Tensor, d: dict, s: int) -> Tensor:
        n, c, h, w = x.shape
        delta = best - x
        m1 = _window(d["top"], d["left"], s, h, w)
        m2 = _window(d["top2"], d["left2"], s, h, w)
        unused = (self.eps ** 2 - delta.flatten(1).pow(2).sum(1)).clamp_min(0)            # (n,)
        avail = ((delta * (m1 | m2)).pow(2).sum((2, 3)) + unused[:, None] / c).sqrt()       # (n, c)
        ar = torch.arange(s, device=x.device)
        rows, cols = (d["top"][:, None] + ar)[:, None, :, None], (d["left"][:, None] + ar)[:, None, None, :]
        ni = torch.arange(n, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        old = delta[ni, ci, rows, cols]                                # (n, c, s, s) the window W1
        pat = eta_pattern(s, x.device)
        new = torch.where(d["flip"][:, None, None, None], pat.T, pat) * d["sign"]
        new = new + old / old.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * avail[:, :, None, None]
        delta = delta * ~m2
        delta[ni, ci, rows, cols] = new
        return self.ball.enforce(x, (x + delta).clamp(0, 1), self.eps)


_SEARCHES = {"linf": _LInfSearch, "l2": _L2Search}


def square_run(clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None, *, eps: float, norm: Norm,
               n_queries: int, p_init: float, rescale: bool, loss: str, check_every: int, restarts: int,
               gen: torch.Generator | None) -> AttackResult:
    """The batched random search of :class:`Square`; ``x`` (N, C, H, W), ``y``/``target`` (N,)."""
    n, (c, h, w), dev = len(x), x.shape[1:], x.device
    view = (-1, 1, 1, 1)
    with torch.inference_mode():
        logits0 = clf(x)
    done = fooled(logits0, y, target)
    best, queries = x.clone(), torch.ones(n, dtype=torch.long, device=dev)
    search = _SEARCHES[norm.name](x, eps, norm)
    for r in range(restarts):
        wi = (~done).nonzero()[:, 0]                                   # host sync once per restart
        if len(wi) == 0:
            break
        xs, ys, ts, srch = x[wi], y[wi], None if target is None else target[wi], search.take(wi)
        xb = search.start(x, gen)[wi]                                  # drawn for all: per-image streams
        with torch.inference_mode():
            logits = clf(xb)
        lb, dn, q = square_loss(loss, logits, ys, ts), fooled(logits, ys, ts), queries[wi] + 1
        iters = n_queries - (2 if r == 0 else 1)
        for i in range(iters):
            s = srch.side(p_schedule(i, n_queries, p_init, rescale), h, w)
            d = {k: v[wi] for k, v in _draws(gen, n, c, h, w, s, dev).items()}   # per-image streams
            cand = srch.propose(xs, xb, d, s)
            with torch.inference_mode():
                logits = clf(cand)
            value, ok = square_loss(loss, logits, ys, ts), fooled(logits, ys, ts)
            act = ~dn
            q += (act & (cand != xb).flatten(1).any(1)).long()
            take = act & (ok | (value < lb))
            lb = torch.where(take, value, lb)
            xb = torch.where(take.view(view), cand, xb)
            dn = dn | (act & ok)
            if (i + 1) % check_every == 0:                                 # write back; drop fooled images
                best[wi], done[wi], queries[wi] = xb, dn, q
                keep = (~dn).nonzero()[:, 0]
                if len(keep) == 0:
                    break
                if len(keep) < len(wi):
                    wi, xs, xb, lb, dn, q = wi[keep], xs[keep], xb[keep], lb[keep], dn[keep], q[keep]
                    ys, ts, srch = ys[keep], None if ts is None else ts[keep], srch.take(keep)
        best[wi], done[wi], queries[wi] = xb, dn, q
    with torch.inference_mode():
        logits = clf(best)
    success = fooled(logits, y, target)
    return AttackResult(best, success, norm.distance(best - x), queries, torch.zeros_like(queries),
                        {"logits": logits})


@ATTACKS.register("square")
@dataclass
class Square(FixedBudgetAttack):
    """Square Attack (Andriushchenko et al., ECCV 2020): score-based black-box random search, L∞ or L2.

    Args:
        eps: budget in [0, 1] pixel units (None: 8/255 for L∞, 0.5 for L2); exact in fp32.
        norm: ``"linf"`` or ``"l2"``.
        n_queries: model queries per image and restart (5000), the clean prediction included.
        p_init: initial share of changed pixels (0.8, the paper's default for L∞ and L2).
        rescale_schedule: stretch the paper's 10 000-iteration schedule of ``p`` to ``n_queries`` (AutoAttack).
        loss: ``"margin"`` (the paper's) or ``"ce"``.
        restarts: fresh random searches for images still not fooled (1).
        check_every: iterations between drops of fooled images from the working set (10).
        seed: seeds every random choice (None: global RNG).

    Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,), ``target`` (N,) or None -> :class:`AttackResult`:
    ``x_adv`` (N, C, H, W) (the best point found, always within ``eps``), ``success``/``norms`` (N,),
    ``queries`` (N,) model queries spent on each image (at most ``n_queries * restarts``),
    ``gradients`` zeros, ``extras["logits"]`` (N, K) at ``x_adv``.

    Example::

        res = Square(eps=0.3, n_queries=1000)(clf, x, y)
        res.queries[res.success].float().median()      # queries to fool a typical image
    """

    name: ClassVar[str] = "square"
    family: ClassVar[str] = "black-box"
    uses_gradients: ClassVar[bool] = False
    eps: float | None = None
    norm: str = "linf"
    n_queries: int = 5000
    p_init: float = 0.8
    rescale_schedule: bool = True
    loss: str = "margin"
    restarts: int = 1
    check_every: int = 10
    seed: int | None = 0

    def __post_init__(self) -> None:
        check_common(self)
        check_number(self, "n_queries", low=2, integer=True)
        check_number(self, "p_init", strict=True)
        check_number(self, "restarts", low=1, integer=True)
        check_number(self, "check_every", low=1, integer=True)
        check_number(self, "seed", integer=True, none_ok=True)
        if self.p_init > 1:
            raise TrustVisionError(f"square: p_init must be in (0, 1], got {self.p_init!r}")
        self.rescale_schedule = bool(self.rescale_schedule)

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        with torch.no_grad():
            return square_run(classifier, x, y, target, eps=fp32_floor(self.eps), norm=as_norm(self.norm),
                              n_queries=self.n_queries, p_init=self.p_init, rescale=self.rescale_schedule,
                              loss=self.loss, check_every=self.check_every, restarts=self.restarts,
                              gen=self.generator(self.seed, x.device))
