"""The robustness section's resume units and their verification.

A *unit* is one attack run: a fixed-budget attack (FGSM, PGD, the evolutionary attacks) at one budget
(key ``pgd@0.1``), a minimal attack (CW, DeepFool) once for all budgets (key ``cw``).  Each unit is saved
as soon as it finishes through a store (``load(key, spec)`` / ``save(key, spec, payload)``, e.g.
:class:`trustvision.resume.UnitStore`), holding its per-image robust masks, gradient count, seconds and,
for the unit that supplies it, the example images.  :func:`attack_sweeps` assembles the same
:class:`~trustvision.attacks.runner.BudgetSweep` list whether every unit was computed now or some were
loaded, so a resumed section equals an uninterrupted one.

:func:`verify_units` re-runs a seeded random share of the (unit, device batch) pairs, and of the clean
predictions' batches, and compares with the stored per-image masks exactly; it also checks that the
section's robust accuracies are the means of the stored masks.  Re-running whole device batches keeps
the computation identical (same batch composition; attacks seed their generators per call).
"""
from __future__ import annotations

import contextlib
import math
import random
from typing import Any, Protocol

import torch
from torch import Tensor

from ...attacks.base import AttackResult
from ...attacks.runner import BudgetSweep, run_batched, sweep_budgets
from ...data.dataset import Dataset
from ...models.classifier import Classifier
from ...progress import Progress

_EXAMPLE_FIELDS = ("x_adv", "success", "norms", "queries", "gradients")


class Store(Protocol):
    """Where units persist: ``load(key, spec) -> payload | None`` and ``save(key, spec, payload)``."""

    def load(self, key: str, spec: Any) -> Any: ...

    def save(self, key: str, spec: Any, payload: Any) -> None: ...


def unit_plan(cfg, name: str) -> list[tuple[str, list[float], bool]]:
    """The units of attack preset ``name``: ``[(key, budgets, carries_example)]``.

    Fixed-budget attacks: one unit per nonzero budget, the middle one carrying the examples (as in
    :func:`~trustvision.attacks.runner.sweep_budgets`); minimal attacks: one unit with every budget.
    """
    attack = cfg.build(name)
    nonzero = [e for e in cfg.budgets(attack.norm) if e > 0]
    if attack.minimal or not nonzero:
        return [(name, [0.0, *nonzero], True)]
    ref = nonzero[len(nonzero) // 2]
    return [(f"{name}@{e!r}", [0.0, e], e == ref) for e in nonzero]


def _spec(cfg, name: str, budgets: list[float], example: bool) -> dict:
    attack = cfg.build(name)
    return {"attack": name, "describe": attack.describe(), "budgets": budgets, "example": example,
            "n_examples": cfg.n_examples if example else 0}


def _encode(run: BudgetSweep, example: bool) -> dict:
    from ...resume import encode_tensor
    out = {"name": run.name, "norm": run.norm, "seconds": run.seconds, "gradients": run.gradients,
           "robust": [[e, m.tolist()] for e, m in run.robust.items()], "example": None, "example_eps": None,
           "queries": run.queries, "extras": [[e, {k: v.tolist() for k, v in d.items()}]
                                              for e, d in run.extras.items()]}
    if example and run.example is not None:
        ex = run.example
        out["example"] = {**{k: encode_tensor(getattr(ex, k)) for k in _EXAMPLE_FIELDS},
                          "index": encode_tensor(ex.extras["index"])}
        out["example_eps"] = run.example_eps
    return out


def _decode(p: dict, n: int) -> BudgetSweep:
    """A stored unit back into a BudgetSweep; a malformed payload raises ``ValueError``."""
    from ...resume import decode_tensor
    try:
        robust = {float(e): torch.tensor(m, dtype=torch.bool) for e, m in p["robust"]}
        if any(m.shape != (n,) for m in robust.values()):
            raise ValueError(f"robust masks are not ({n},)")
        run = BudgetSweep(str(p["name"]), str(p["norm"]), robust, seconds=float(p["seconds"]),
                          gradients=int(p["gradients"]), queries=int(p.get("queries", 0)),
                          extras={float(e): {k: torch.tensor(v) for k, v in d.items()} for e, d in p.get("extras", [])})
        if p.get("example") is not None:
            ex = p["example"]
            run.example = AttackResult(*(decode_tensor(ex[k]) for k in _EXAMPLE_FIELDS),
                                       {"index": decode_tensor(ex["index"])})
            run.example_eps = p["example_eps"]
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"malformed unit ({e})") from None
    return run


def _merge(name: str, parts: list[BudgetSweep]) -> BudgetSweep:
    """One sweep from its units (budget order kept, examples from the unit that carries them)."""
    out = BudgetSweep(name, parts[0].norm, {})
    for p in parts:
        out.robust.update(p.robust)
        out.seconds += p.seconds
        out.gradients += p.gradients
        out.queries += p.queries
        out.extras.update(p.extras)
        if p.example is not None:
            out.example, out.example_eps = p.example, p.example_eps
    out.robust = dict(sorted(out.robust.items()))
    return out


def attack_sweeps(cfg, clf: Classifier, data: Dataset, correct: Tensor, *, batch_size: int,
                  progress: Progress | None, store: Store | None = None) -> list[BudgetSweep]:
    """One :class:`BudgetSweep` per attack of ``cfg.attacks`` on ``data`` (x (N, C, H, W), y (N,)).

    ``correct``: (N,) bool, the images to attack.  With a ``store``, finished units are loaded and new
    ones saved as each finishes (a stored unit that cannot be decoded goes to ``store.warn`` and is recomputed).
    """
    runs = []
    for name in cfg.attacks:
        attack, parts = cfg.build(name), []
        for key, budgets, example in unit_plan(cfg, name):
            spec = _spec(cfg, name, budgets, example)
            part = _load(store, key, spec, len(data))
            if part is None:
                part = sweep_budgets(attack, clf, data.x, data.y, budgets, attacked=correct, batch_size=batch_size,
                                     n_examples=cfg.n_examples, progress=progress, name=key)
                if store is not None:
                    store.save(key, spec, _encode(part, example))
            if not example:
                part.example, part.example_eps = None, None
            parts.append(part)
        runs.append(_merge(name, parts))
    return runs


def _load(store: Store | None, key: str, spec: dict, n: int) -> BudgetSweep | None:
    payload = store.load(key, spec) if store is not None else None
    if payload is None:
        return None
    try:
        return _decode(payload, n)
    except ValueError as e:
        getattr(store, "warn", print)(f"resume unit {key!r} is unusable ({e}); recomputing it")
        with contextlib.suppress(AttributeError, ValueError):
            store.resumed.remove(key)
        return None


# ------------------------------------------------------------------ verification
def _stored_units(cfg, store: Store, n: int) -> tuple[dict, list[str]]:
    """``{key: (attack name, BudgetSweep)}`` of every unit of ``cfg`` in ``store``, and the missing keys."""
    units, missing = {}, []
    for name in cfg.attacks:
        for key, budgets, example in unit_plan(cfg, name):
            payload = store.load(key, _spec(cfg, name, budgets, example))
            try:
                run = _decode(payload, n) if payload is not None else None
            except ValueError:
                run = None
            if run is None:
                missing.append(key)
            else:
                units[key] = (name, run)
    return units, missing


def _rerun_batch(cfg, clf: Classifier, data: Dataset, name: str, run: BudgetSweep, sel: Tensor,
                 batch_size: int) -> int:
    """Re-run attack ``name`` on the images ``sel`` (one device batch); the number of differing masks."""
    attack = cfg.build(name)
    x, y = data.x[sel], data.y[sel]
    nonzero = [e for e in run.robust if e > 0]
    if attack.minimal:
        res = run_batched(attack, clf, x, y, batch_size)
        fresh = {e: res.robust_at(e, torch.ones(len(sel), dtype=torch.bool)) for e in nonzero}
    else:
        fresh = {e: ~run_batched(attack.with_eps(e), clf, x, y, batch_size).success for e in nonzero}
    return sum(int((fresh[e] != run.robust[e][sel]).sum()) for e in nonzero)


def _clean_batch(clf: Classifier, data: Dataset, attacked: Tensor, b: int, batch_size: int) -> int:
    """Re-predict clean batch ``b`` (as the clean section batches it); the number of differing images."""
    s = slice(b * batch_size, (b + 1) * batch_size)
    with torch.inference_mode():
        pred = clf(data.x[s].to(clf.device)).argmax(1).cpu()
    return int(((pred == data.y[s]) != attacked[s]).sum())


def _assembly_mismatches(units: dict, metrics: dict) -> list[str]:
    """Units whose masks do not average to the section's (naive) robust accuracies."""
    naive = (metrics.get("adaptive") or {}).get("naive_robust_accuracy", {})
    bad = []
    for key, (name, run) in units.items():
        curve = naive.get(name) or metrics.get("robust_accuracy", {}).get(run.norm, {}).get(name, {})
        for e, mask in run.robust.items():
            if curve.get(str(e)) != float(mask.float().mean()):
                bad.append(f"{key} eps={e!r}")
    return bad


def verify_units(cfg, clf: Classifier, data: Dataset, store: Store, metrics: dict, *, batch_size: int,
                 fraction: float, seed: int) -> dict:
    """Re-run a seeded random ``fraction`` of the (unit, device batch) pairs and of the clean batches.

    Args:
        cfg: the robustness configuration; data: the audited images (N, C, H, W) and labels (N,).
        store: where the units were saved; metrics: the robustness section's metrics (assembly check).
    Returns: the ``verification`` block of results.json (``passed``, ``mismatches``, what was checked).
    """
    n = len(data)
    units, missing = _stored_units(cfg, store, n)
    attacked = next(iter(units.values()))[1].robust[0.0] if units else torch.zeros(n, dtype=torch.bool)
    idx = attacked.nonzero()[:, 0]
    pairs = [("clean", b) for b in range(math.ceil(n / batch_size))]
    pairs += [(key, b) for key in units for b in range(math.ceil(len(idx) / batch_size))]
    chosen = sorted(random.Random(seed).sample(pairs, min(len(pairs), max(1, math.ceil(fraction * len(pairs))))))
    mismatches, images = [], 0
    for key, b in chosen:
        if key == "clean":
            bad, size = _clean_batch(clf, data, attacked, b, batch_size), min(batch_size, n - b * batch_size)
        else:
            sel = idx[b * batch_size:(b + 1) * batch_size]
            name, run = units[key]
            bad, size = _rerun_batch(cfg, clf, data, name, run, sel, batch_size), len(sel)
        images += size
        if bad:
            mismatches.append({"unit": key, "batch": b, "differing": bad})
    assembly = _assembly_mismatches(units, metrics)
    return {"fraction": fraction, "seed": seed, "batch_size": batch_size, "checked_batches": len(chosen),
            "total_batches": len(pairs), "checked_images": images, "mismatches": mismatches,
            "assembly_mismatches": assembly, "missing_units": missing,
            "passed": not (mismatches or assembly or missing)}
