"""The robustness section's "under transformation" pass: EOT attacks judged under fresh physical transforms.

``trustvision audit --eot rotate:15,scale:0.9-1.1,... --eot-samples 16``: every fixed-budget gradient attack
of the section (FGSM, PGD, APGD...; minimal attacks are skipped: their thresholded norms do not carry over)
is re-run on :class:`~trustvision.attacks.eot.EOT` view of the model (Athalye et al., ICML 2018), and every
adversarial image is judged under ``judge_draws`` **freshly drawn** transforms (another seed than the
view's, JPEG through the real codec): :func:`~trustvision.attacks.eot.transformed_accuracy`.

Per image, the accuracy under transformation at budget ε is the share of fresh draws still classified
correctly; an attacker may also submit the clean image (δ = 0 is in every ball), and chooses per image the
attack that hurts most, so the reported value is ``min(clean, every attack)`` per image, averaged over the
N images (digitally misclassified images count 0).  Metrics: ``robust_accuracy_eot[norm][eps]`` (worst
case; summary keys ``robust_accuracy_eot_<norm>@<eps>``), per attack, and the digital worst case beside them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...attacks.eot import EOT, as_distribution, transformed_accuracy
from ...attacks.runner import run_batched
from ...models.classifier import Classifier
from ...progress import Progress, Quiet
from ...results import Flag, Table
from ..soundness import tolerance


@dataclass
class EOTPass:
    """What :func:`run_eot` measured: curves per norm, tables, flags and metrics for results.json."""

    curves: dict[str, dict[str, tuple[list[float], list[float]]]]
    tables: list[Table]
    flags: list[Flag]
    metrics: dict


def run_eot(cfg, clf: Classifier, data, correct: Tensor, digital: dict[str, dict], batch_size: int,
            progress: Progress | None = None) -> EOTPass | None:
    """Attack through the EOT view, judge under fresh transforms; None when ``cfg.eot`` is not set.

    ``cfg``: the section's RobustnessConfig (``eot``, ``eot_samples``, ``eot_draws``, ``build``, ``budgets``);
    ``data``: x (N, C, H, W), y (N,); ``correct`` (N,) bool (digital clean); ``digital``: norm -> curves
    (name -> (budgets, accuracies)), the section's digital curves with their ``worst-case`` entry.
    """
    if not getattr(cfg, "eot", None):
        return None
    progress = progress or Quiet()
    dist = as_distribution(cfg.eot)
    view = EOT(dist, cfg.eot_samples, seed=cfg.seed)(clf)
    idx = correct.nonzero()[:, 0]
    xs, ys, n = data.x[idx], data.y[idx], len(data)
    judge_seed = cfg.seed + 7919
    judge = lambda x: transformed_accuracy(clf, dist, x, ys, draws=cfg.eot_draws, seed=judge_seed,  # noqa: E731
                                           batch_size=batch_size)
    clean_t = judge(xs)                                              # (M,) share of fresh draws still correct
    per_norm: dict[str, dict[str, dict[float, Tensor]]] = {}
    for name in cfg.attacks:
        attack = cfg.build(name)
        if not attack.uses_gradients or attack.minimal:
            continue
        budgets = cfg.budgets(attack.norm)
        nb = (len(idx) + batch_size - 1) // batch_size
        advance = progress.task(f"{name} + EOT(k={cfg.eot_samples})", nb * max(1, len(budgets) - 1))
        curve = {0.0: clean_t}
        for e in budgets:
            if e > 0:
                res = run_batched(attack.with_eps(e), view, xs, ys, batch_size, advance)
                curve[e] = torch.minimum(judge(res.x_adv), clean_t)
        per_norm.setdefault(attack.norm, {})[name] = curve
    return _assemble(per_norm, digital, clean_t, idx, n, dist, cfg)


def _assemble(per_norm, digital, clean_t, idx, n, dist, cfg) -> EOTPass:
    curves, tables, metrics = {}, [], {"transforms": str(dist), "samples": cfg.eot_samples,
                                       "judge_draws": cfg.eot_draws, "robust_accuracy_eot": {},
                                       "per_attack": {}}
    full = lambda v: float(v.sum()) / max(n, 1)          # noqa: E731  (misclassified images count 0)
    for norm, attacks in per_norm.items():
        budgets = sorted({e for c in attacks.values() for e in c})
        worst = {e: torch.stack([c[e] for c in attacks.values() if e in c]).amin(0) for e in budgets}
        cur = {f"{a} + EOT": (budgets, [full(c[e]) for e in budgets]) for a, c in attacks.items()}
        cur["worst-case under T"] = (budgets, [full(worst[e]) for e in budgets])
        dig = digital.get(norm, {}).get("worst-case")
        if dig is not None:
            cur["digital worst-case"] = dig
        curves[norm] = cur
        metrics["robust_accuracy_eot"][norm] = {str(e): full(worst[e]) for e in budgets}
        metrics["per_attack"][norm] = {a: {str(e): full(c[e]) for e in budgets} for a, c in attacks.items()}
        rows = [[label, *acc] for label, (b, acc) in cur.items() if list(b) == budgets]
        tables.append(Table(f"Digital vs under transformation ({norm}; T = {dist}, {cfg.eot_draws} fresh draws)",
                            ["evaluation", *[f"eps={e:.4g}" for e in budgets]], rows))
    flags = []
    clean_digital = len(idx) / max(n, 1)
    clean_under_t = full(clean_t)
    metrics.update(clean_accuracy_eot=clean_under_t)
    if clean_digital - clean_under_t > 0.2:
        flags.append(Flag("transforms-break-model", "warning",
                          f"Under the transformations alone ({dist}) accuracy falls from {clean_digital:.1%} to "
                          f"{clean_under_t:.1%}: the 'under transformation' numbers mostly measure the transforms, "
                          "not the attacks. Use milder transforms or a model trained with them.",
                          {"clean_digital": clean_digital, "clean_under_transformation": clean_under_t}))
    flags.append(Flag("eot-evaluation", "info",
                      f"Gradient attacks were re-run through EOT over {dist} ({cfg.eot_samples} draws per step) and "
                      f"judged under {cfg.eot_draws} freshly drawn transformations per image (real JPEG codec), "
                      "never the draws they optimised over.", {"tolerance": tolerance(n)}))
    return EOTPass(curves, tables, flags, metrics)
