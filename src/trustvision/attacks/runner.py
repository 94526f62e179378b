"""Running attacks over data sets: device batches and sweeps over a list of budgets.

* :func:`run_batched` — one attack over (N, C, H, W) host tensors, in device batches of ``batch_size``;
  results concatenated on the host.
* :func:`sweep_budgets` — robust accuracy at every budget of a list, per image: a fixed-budget attack
  (FGSM, PGD, the evolutionary attacks) runs once per nonzero budget (``attack.with_eps(eps)``); a
  minimal attack (CW, DeepFool) runs once and is thresholded at every budget (Foolbox 3's split of
  fixed-epsilon and minimisation attacks).  An image counts as robust at ``eps`` when it was
  attacked (correctly classified) and the attack failed on it; Croce & Hein (ICML 2020) report
  robustness per image the same way, and so can a caller that ANDs several sweeps.
* :func:`minimal_budget` — per image, the smallest budget of a list at which a fixed-budget attack
  fools it (a batched binary search; e.g. the few-pixel attack's L0 budget).

Only tensors go in and out: no data-set or section types, so every section, the CLI and the
examples can use the same runner.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..progress import Progress
from ..scale.shard import map_batches
from .base import Attack, AttackResult, FixedBudgetAttack


def run_batched(attack: Attack, clf: Classifier, x: Tensor, y: Tensor, batch_size: int,
                advance: Callable[[int], None] | None = None, *, target: Tensor | None = None,
                keep: tuple[str, ...] = ()) -> AttackResult:
    """Run ``attack`` over (N, C, H, W) CPU tensors in device batches; results concatenated on the CPU.

    Under torchrun (:func:`trustvision.scale.current` active) the batches are split round-robin across the
    ranks and gathered (:func:`trustvision.scale.shard.map_batches`): every rank returns the same result,
    identical to a single process's, because the batches are the same and attacks seed per call.

    Args:
        x: (N, C, H, W) images in [0, 1]; y: (N,) labels; target: (N,) target classes or None.
        advance: called with 1 after each batch (a progress bar's ``advance``).
        keep: ``extras`` keys holding (n,) per-image tensors to keep (concatenated; e.g. an ensemble's
            ``broken_by``); every other extra is dropped.
    Returns: :class:`AttackResult` with CPU tensors of leading dimension N.
    """
    def one(b: int) -> AttackResult:
        s = slice(b * batch_size, (b + 1) * batch_size)
        kw = {} if target is None else {"target": target[s].to(clf.device)}
        r = attack(clf, x[s].to(clf.device), y[s].to(clf.device), **kw)
        return AttackResult(r.x_adv.detach().cpu(), r.success.cpu(), r.norms.detach().cpu(), r.queries.cpu(),
                            r.gradients.cpu(), {k: r.extras[k].cpu() for k in keep if k in r.extras})

    parts = map_batches(one, (len(x) + batch_size - 1) // batch_size, advance)
    if not parts:
        z = torch.zeros(0)
        return AttackResult(x, z.bool(), z, z.long(), z.long())
    cat = lambda k: torch.cat([getattr(p, k) for p in parts])  # noqa: E731
    extras = {k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras}
    return AttackResult(cat("x_adv"), cat("success"), cat("norms"), cat("queries"), cat("gradients"), extras)


@dataclass
class BudgetSweep:
    """Robustness of N images against one attack at every budget of a list.

    Attributes:
        name, norm: the attack's label and its norm.
        robust: budget -> (N,) bool, robust at that budget; ``robust[0.0]`` is the attacked mask
            (budget 0 leaves every correctly classified image correct).
        example: the first ``n_examples`` attacked images' :class:`AttackResult` (minimal attacks: the
            minimal perturbations; fixed-budget attacks: at ``example_eps``, the middle nonzero budget),
            with ``extras["index"]`` (k,) their positions among the N images.
        seconds: wall time.  gradients: gradient evaluations spent, summed over images and budgets.
        queries: forward passes spent, summed likewise.
        extras: budget -> {key: (M,) tensor} for the attack's ``per_image_extras`` (e.g. an ensemble's
            ``broken_by``), M the attacked images in order (the True positions of ``robust[0.0]``).
    """

    name: str
    norm: str
    robust: dict[float, Tensor]
    example: AttackResult | None = None
    example_eps: float | None = None
    seconds: float = 0.0
    gradients: int = 0
    queries: int = 0
    extras: dict[float, dict[str, Tensor]] = field(default_factory=dict)


def judged(res: AttackResult, judge: Classifier | None, y: Tensor, batch_size: int) -> AttackResult:
    """``res`` with ``success`` re-decided by ``judge`` (untargeted: prediction != y); unchanged when None.

    Adaptive evaluation attacks a differentiable view (BPDA/EOT) and judges on the real model.
    """
    if judge is not None and len(res.x_adv):
        res.success = judge.predict(res.x_adv, batch_size).argmax(1).cpu() != y
    return res


def sweep_budgets(attack: Attack, classifier: Classifier, x: Tensor, y: Tensor, budgets: list[float], *,
                  attacked: Tensor | None = None, batch_size: int = 128, n_examples: int = 8,
                  progress: Progress | None = None, judge: Classifier | None = None,
                  name: str | None = None) -> BudgetSweep:
    """Robust masks of images ``x`` (N, C, H, W) with labels ``y`` (N,) at every budget of ``budgets``.

    Args:
        attack: a fixed-budget attack (run once per nonzero budget, ``with_eps``) or a minimal attack
            (``attack.minimal``: run once, thresholded at each budget with :meth:`AttackResult.robust_at`).
        budgets: ascending budgets in the attack's norm; 0 needs no attack.
        attacked: (N,) bool, the images to attack (the correctly classified ones); the others count as
            not robust at every budget.  None: all.
        judge: re-decide success on this classifier (adaptive evaluation; the attack runs on ``classifier``).
        progress: receives one task of (batches × runs) steps.  name: label for progress and the result.
    Returns: :class:`BudgetSweep` with ``robust[eps]`` (N,) for 0 and every nonzero budget.
    """
    attacked = torch.ones(len(x), dtype=torch.bool) if attacked is None else attacked
    name = name or attack.name
    idx = attacked.nonzero()[:, 0]
    xs, ys = x[idx], y[idx]
    nb = (len(idx) + batch_size - 1) // batch_size
    nonzero = [e for e in budgets if e > 0]
    ref = nonzero[len(nonzero) // 2] if nonzero else None
    out = BudgetSweep(name, attack.norm, {0.0: attacked.clone()})
    t0 = time.perf_counter()
    tag = f"{name} (adaptive)" if judge is not None else name
    task = progress.task if progress is not None else (lambda description, total: None)
    if attack.minimal:
        advance = task(f"{tag} (minimal, {attack.norm})", nb)
        res = judged(run_batched(attack, classifier, xs, ys, batch_size, advance), judge, ys, batch_size)
        for e in nonzero:
            out.robust[e] = _scatter(attacked, idx, res.robust_at(e, torch.ones(len(idx), dtype=torch.bool)))
        out.example, out.example_eps = res, None
        out.gradients = int(res.gradients.sum())
        out.queries = int(res.queries.sum())
    else:
        advance = task(f"{tag} ({attack.norm}, {len(nonzero)} budgets)", nb * len(nonzero))
        keep = tuple(getattr(attack, "per_image_extras", ()))
        for e in nonzero:
            res = judged(run_batched(attack.with_eps(e), classifier, xs, ys, batch_size, advance, keep=keep),
                         judge, ys, batch_size)
            out.robust[e] = _scatter(attacked, idx, ~res.success)
            out.gradients += int(res.gradients.sum())
            out.queries += int(res.queries.sum())
            if res.extras:
                out.extras[e] = res.extras
            if e == ref:
                out.example, out.example_eps = res, e
    if out.example is not None:
        k = min(n_examples, len(idx))
        ex = out.example
        out.example = AttackResult(ex.x_adv[:k], ex.success[:k], ex.norms[:k], ex.queries[:k], ex.gradients[:k],
                                   {"index": idx[:k]})
    out.seconds = time.perf_counter() - t0
    return out


def _scatter(attacked: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """(N,) copy of ``attacked`` with positions ``idx`` set to ``values``."""
    r = attacked.clone()
    r[idx] = values
    return r


def minimal_budget(attack: FixedBudgetAttack, classifier: Classifier, x: Tensor, y: Tensor, budgets: list[float],
                   target: Tensor | None = None) -> Tensor:
    """(N,) smallest budget of ``budgets`` at which ``attack`` fools each image (``inf`` where none does).

    Binary search over the sorted budget list, batched across images: each round runs
    ``attack.with_eps(b)`` once per distinct mid budget ``b`` on all unresolved images whose current
    mid is ``b`` (at most ``len(budgets)`` runs per round, ``ceil(log2(len(budgets) + 1))`` rounds).
    Like every binary search it assumes success is monotone in the budget; a stochastic attack
    can miss at a budget it would win at, so the result is the smallest fooling budget *found*.

    Args:
        attack: any :class:`FixedBudgetAttack` (e.g. :class:`~.evolutionary.PixelAttack`: budgets are pixel counts).
        x: (N, C, H, W) in [0, 1]; y, target: (N,).
    """
    if not isinstance(attack, FixedBudgetAttack):
        raise TrustVisionError("minimal_budget needs a fixed-budget attack (with_eps)")
    b = sorted({float(v) for v in budgets})
    if not b:
        raise TrustVisionError("minimal_budget: budgets must not be empty")
    x, y, target = Attack._check(classifier, x, y, target)
    n = len(x)
    lo = torch.zeros(n, dtype=torch.long, device=x.device)
    hi = torch.full_like(lo, len(b) - 1)
    found = torch.full((n,), math.inf, device=x.device)
    while True:
        open_ = lo <= hi
        if not bool(open_.any()):                    # one host sync per round, outside any attack loop
            return found
        mid = (lo + hi) // 2
        for m in mid[open_].unique().tolist():
            sel = (open_ & (mid == m)).nonzero()[:, 0]
            res = attack.with_eps(b[m])(classifier, x[sel], y[sel],
                                        target=target[sel] if target is not None else None)
            ok = res.success
            found[sel[ok]] = b[m]
            hi[sel[ok]] = m - 1
            lo[sel[~ok]] = m + 1
