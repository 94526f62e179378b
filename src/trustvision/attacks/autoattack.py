"""AutoAttack — Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020: a fixed sequence of complementary attacks with a per-image worst case,
the protocol behind RobustBench.

* ``version="standard"``: APGD-CE -> APGD-T (targeted DLR, top-9 classes) -> FAB-T (top-9 classes) ->
  Square (5 000 queries); each attack runs only on the images every earlier one failed on, and an image
  counts as robust only if all four failed.
* ``version="rand"`` (randomised defences): APGD-CE and APGD-DLR, each with gradients averaged over
  ``eot_iter = 20`` passes of the randomised model (Expectation over Transformation, Athalye et al. 2018).

The members are built by registry name (:data:`~.base.ATTACKS`: ``apgd``, ``fab``, ``square``) with the
reference settings (fra31/auto-attack, ``AutoAttack(version=...)``): 100 APGD iterations and 1 restart
(also per target), 9 target classes for APGD-T and FAB-T, 100 FAB iterations, 5 000 Square queries.
Budget fields (``steps``, ``fab_steps``, ``n_queries``, ``targets``, ``eot_iter``) may be lowered for quick
looks; the soundness checks then warn that the budget is below the paper's.

The result carries per image which member broke it first (``extras["broken_by"]``: its position in
``extras["members"]``, -1 still robust, -2 misclassified before any attack) and, summed, the
contributions of every member (``extras["contributions"]``: how many images each broke first), the
per-image queries and gradient evaluations of all members together (``queries``/``gradients``) and the
wall time of each member (``extras["member_seconds"]``).

Shapes: ``x`` (N, C, H, W) in [0, 1], ``y`` (N,), ``target`` (N,) or None.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .base import ATTACKS, Attack, AttackResult, FixedBudgetAttack, fooled, make_attack
from .gradient import DEFAULT_EPS, check_number
from .norms import BALL_NORMS, as_norm

VERSIONS = ("standard", "rand")
PAPER_BUDGET = {"steps": 100, "fab_steps": 100, "n_queries": 5000, "targets": 9, "eot_iter": 20}
ROBUST, CLEAN_WRONG = -1, -2


@ATTACKS.register("autoattack")
@dataclass
class AutoAttack(FixedBudgetAttack):
    """The AutoAttack ensemble (Croce & Hein, ICML 2020), L∞ or L2, as one fixed-budget attack.

    Args:
        eps: budget in [0, 1] pixel units (None: 8/255 for L∞, 0.5 for L2); exact in fp32 for every member.
        norm: ``"linf"`` or ``"l2"``.
        version: ``"standard"`` (APGD-CE, APGD-T, FAB-T, Square) or ``"rand"`` (APGD-CE and APGD-DLR with EOT).
        steps: APGD iterations (100).  targets: target classes of APGD-T and FAB-T (9; K - 1 on smaller models).
        fab_steps: FAB-T iterations (100).  n_queries: Square's queries per image (5 000).
        eot_iter: gradient draws per APGD step in the ``rand`` version (20).
        seed: seeds every member (None: global RNG).

    Shapes: ``x`` (N, C, H, W), ``y`` (N,), ``target`` (N,) or None -> :class:`AttackResult` with ``x_adv``
    (N, C, H, W) (the first member's adversarial, else ``x``), ``success``/``norms`` (N,), ``queries`` and
    ``gradients`` (N,) summed over members, ``extras``: ``broken_by`` (N,) int64, ``members`` (labels),
    ``contributions`` {label: images broken first}, ``member_seconds`` {label: s}, ``rising`` (N,) bool
    (still robust, an APGD member's loss still climbing at its end), ``notes`` (members' adaptation notes).

    Example::

        res = AutoAttack(eps=8 / 255)(clf, x, y)
        res.extras["contributions"]        # {'apgd-ce': 41, 'apgd-t': 3, 'fab-t': 0, 'square': 0}
    """

    name: ClassVar[str] = "autoattack"
    family: ClassVar[str] = "ensemble"
    uses_gradients: ClassVar[bool] = True
    per_image_extras: ClassVar[tuple[str, ...]] = ("broken_by", "rising")
    eps: float | None = None
    norm: str = "linf"
    version: str = "standard"
    steps: int = 100
    targets: int = 9
    fab_steps: int = 100
    n_queries: int = 5000
    eot_iter: int = 20
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise TrustVisionError(f"autoattack: unknown version {self.version!r}; choose from {', '.join(VERSIONS)}")
        if self.norm not in BALL_NORMS:
            raise TrustVisionError(f"autoattack: norm must be one of {BALL_NORMS}, got {self.norm!r}")
        if self.eps is None:
            self.eps = DEFAULT_EPS[self.norm]
        check_number(self, "eps")
        for name in ("steps", "targets", "fab_steps", "eot_iter"):
            check_number(self, name, low=1, integer=True)
        check_number(self, "n_queries", low=2, integer=True)
        check_number(self, "seed", integer=True, none_ok=True)

    def members(self) -> list[tuple[str, Attack]]:
        """The ensemble's attacks in order, as ``(label, attack)``, built by registry name."""
        common = {"eps": self.eps, "norm": self.norm, "seed": self.seed}
        if self.version == "rand":
            return [(f"apgd-{loss}", make_attack("apgd", loss=loss, steps=self.steps, eot_iter=self.eot_iter, **common))
                    for loss in ("ce", "dlr")]
        return [("apgd-ce", make_attack("apgd", loss="ce", steps=self.steps, **common)),
                ("apgd-t", make_attack("apgd", loss="dlr", targets=self.targets, steps=self.steps, **common)),
                ("fab-t", make_attack("fab", targets=self.targets, steps=self.fab_steps, **common)),
                ("square", make_attack("square", n_queries=self.n_queries, **common))]

    @property
    def paper_budget(self) -> dict:
        """The reference budget of the fields this version uses (what :func:`budget_flags` compares with)."""
        used = ("steps", "eot_iter") if self.version == "rand" else ("steps", "targets", "fab_steps", "n_queries")
        return {k: PAPER_BUDGET[k] for k in used}

    def for_random_model(self) -> "AutoAttack":
        """The version for a randomised model (``rand``: APGD with EOT), same budget and seed (a copy)."""
        return dataclasses.replace(self, version="rand")

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        n, dev = len(x), x.device
        with torch.no_grad():
            wrong = fooled(classifier(x), y, target)
        broken_by = torch.where(wrong, CLEAN_WRONG, ROBUST).long()
        x_adv, queries = x.clone(), torch.ones(n, dtype=torch.long, device=dev)
        gradients, rising = torch.zeros_like(queries), torch.zeros(n, dtype=torch.bool, device=dev)
        labels, seconds, notes = [], {}, {}
        for j, (label, attack) in enumerate(self.members()):
            labels.append(label)
            idx = (broken_by == ROBUST).nonzero()[:, 0]               # one host sync per member
            if len(idx) == 0:
                seconds[label] = 0.0
                continue
            t0 = time.perf_counter()
            r = attack(classifier, x[idx], y[idx], target=None if target is None else target[idx])
            ok = r.success
            x_adv[idx] = torch.where(ok.view(-1, *[1] * (x.ndim - 1)), r.x_adv, x_adv[idx])
            broken_by[idx] = torch.where(ok, j, ROBUST)
            queries[idx] += r.queries
            gradients[idx] += r.gradients
            if "rising" in r.extras:
                rising[idx] |= r.extras["rising"] & ~ok
            if "note" in r.extras:
                notes[label] = r.extras["note"]
            seconds[label] = time.perf_counter() - t0
        rising &= broken_by == ROBUST
        contributions = {label: int((broken_by == j).sum()) for j, label in enumerate(labels)}
        success = broken_by != ROBUST
        return AttackResult(x_adv, success, as_norm(self.norm).distance(x_adv - x), queries, gradients,
                            {"broken_by": broken_by, "members": labels, "contributions": contributions,
                             "member_seconds": seconds, "rising": rising, "notes": notes})
