"""The ``robustness`` section: robust accuracy against budget, per attack and worst case.

For each attack and budget the section reports robust accuracy (the share of
*all* evaluated images that are classified correctly and stay correct under
attack), and per-example worst case across attacks of the same norm: an image
counts as robust at ε only if *every* attack failed on it (Croce & Hein 2020
report robustness the same way).  Fixed-budget attacks (FGSM, PGD) run once per
budget; minimal attacks (CW, DeepFool) run once and are thresholded at every
budget (:func:`~trustvision.attacks.runner.sweep_budgets`).  Attack names are the
presets of :mod:`trustvision.attacks.presets`.  The black-box presets ``pixel``
(L0; budgets ``eps_l0`` count pixels) and ``threshold`` (L∞) are opt-in, being
too slow for the default list.
Soundness checks from :mod:`.soundness` run alongside and their flags travel
with the numbers.  Each attack run (per budget for fixed-budget attacks) is a
resume unit (:mod:`.robustness_units`), saved as it finishes when a store is given.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...attacks import PGD
from ...attacks.presets import PRESETS
from ...attacks.runner import BudgetSweep, run_batched
from ...data.dataset import Dataset
from ...errors import TrustVisionError
from ...models.classifier import Classifier
from ...progress import Progress, Quiet
from ...results import Figure, SectionResult, Table
from . import adaptive as adaptive_eval
from . import robustness_eot
from .. import soundness
from .robustness_units import Store, attack_sweeps

BUDGET_NORMS = ("linf", "l2", "l0")     # the norms with a budget list eps_<norm> in RobustnessConfig


@dataclass
class RobustnessConfig:
    """What the robustness section runs.  Budgets are in [0, 1] pixel units."""

    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd", "pgd-l2", "cw", "deepfool"])
    eps_linf: list[float] = field(default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255])
    eps_l2: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0])
    eps_l0: list[float] = field(default_factory=lambda: [0.0, 1.0, 3.0, 5.0, 10.0])   # pixels (attack "pixel")
    attack_options: dict[str, dict] = field(default_factory=dict)
    checks: bool = True
    large_eps_linf: float = 0.5
    strong_factor: int = 5
    strong_restarts: int = 3
    check_images: int = 256
    n_examples: int = 8
    adaptive: str = "auto"        # "auto": probe for randomness / shattered gradients, re-attack with EOT / BPDA
    eot_samples: int = 16         # draws per forward of the EOT views (adaptive pass and --eot)
    eot: str | None = None        # --eot: transform spec; adds the 'under transformation' pass (robustness_eot)
    eot_draws: int = 8            # fresh transforms per image when judging the --eot pass
    seed: int = 0

    def __post_init__(self) -> None:
        presets = PRESETS.names()          # exact names (the registry itself also accepts other cases)
        unknown = [a for a in self.attacks if a not in presets]
        if unknown:
            raise TrustVisionError(f"unknown attack(s) {unknown}; choose from {sorted(presets)}")
        for norm in BUDGET_NORMS:
            eps = getattr(self, f"eps_{norm}")
            if any(e < 0 for e in eps):
                raise TrustVisionError(f"eps_{norm}: budgets must be >= 0, got {eps}")
            setattr(self, f"eps_{norm}", sorted({0.0, *map(float, eps)}))
        if self.adaptive not in ("auto", "off"):
            raise TrustVisionError(f"adaptive must be 'auto' or 'off', got {self.adaptive!r}")
        if not (isinstance(self.eot_samples, int) and self.eot_samples >= 1):
            raise TrustVisionError(f"eot_samples must be an integer >= 1, got {self.eot_samples!r}")
        if self.eot is not None:
            robustness_eot.as_distribution(self.eot)          # a bad spec fails now, naming --eot
        if not (isinstance(self.eot_draws, int) and self.eot_draws >= 1):
            raise TrustVisionError(f"eot_draws must be an integer >= 1, got {self.eot_draws!r}")
        stray = set(self.attack_options) - set(presets)
        if stray:
            raise TrustVisionError(f"attack_options: unknown attack(s) {sorted(stray)}; choose from {sorted(presets)}")
        for name in self.attacks:          # bad options fail now, not after an hour of other attacks
            self.build(name)

    def build(self, name: str):
        """The attack object for preset ``name`` with the user's options applied."""
        preset = PRESETS.get(name)
        opts = dict(self.attack_options.get(name, {}))
        if preset.takes("seed"):
            opts.setdefault("seed", self.seed)
        return preset.build(**opts)

    def budgets(self, norm: str) -> list[float]:
        """The budget list of ``norm`` (``eps_linf``, ``eps_l2`` or ``eps_l0``)."""
        return getattr(self, f"eps_{norm}")


def _curves(runs: list[BudgetSweep], norm: str, budgets: list[float]) -> tuple[dict, dict[float, Tensor]]:
    curves, worst = {}, {}
    for run in runs:
        if run.norm == norm:
            curves[run.name] = (budgets, [float(run.robust[e].float().mean()) for e in budgets])
    mine = [r for r in runs if r.norm == norm]
    if mine:
        for e in budgets:
            worst[e] = torch.stack([r.robust[e] for r in mine]).all(0)
        curves["worst-case"] = (budgets, [float(worst[e].float().mean()) for e in budgets])
    return curves, worst


def _iterative_gradient(preset: str) -> bool:
    """Preset ``preset`` is a multi-step fixed-budget gradient attack (PGD), read off its capabilities."""
    p = PRESETS.get(preset)
    return p.family == "gradient" and not p.single_step


def _checks(cfg: RobustnessConfig, clf: Classifier, data: Dataset, correct: Tensor, runs: list[BudgetSweep],
            curves_by_norm: dict, batch_size: int, progress: Progress) -> tuple[list, dict]:
    flags, stats = [], {}
    n = len(data)
    for norm, curves in curves_by_norm.items():
        flags += soundness.monotonic_flags(curves, norm, n)
    flags += soundness.fgsm_vs_pgd_flags(curves_by_norm.get("linf", {}), n)
    flags += soundness.blackbox_vs_whitebox_flags(curves_by_norm.get("linf", {}), n)
    if not cfg.checks:
        return flags, stats
    idx = correct.nonzero()[:cfg.check_images, 0]
    if len(idx) == 0:
        return flags, stats
    xs, ys = data.x[idx], data.y[idx]
    advance = progress.task("soundness checks", 3)
    g_flags, stats["gradients"] = soundness.gradient_flags(clf, xs[:batch_size].to(clf.device), ys[:batch_size].to(clf.device))
    flags += g_flags
    advance(1)
    big = PGD(eps=cfg.large_eps_linf, norm="linf", steps=20, seed=cfg.seed)
    # estimated accuracy over all images: clean accuracy x share of checked correct images that survive
    survive = float((~run_batched(big, clf, xs, ys, batch_size).success).float().mean())
    acc_big = survive * float(correct.float().mean())
    stats["large_budget"] = {"eps": cfg.large_eps_linf, "norm": "linf", "accuracy": acc_big}
    flags += soundness.large_budget_flag(acc_big, cfg.large_eps_linf, "linf", 1.0 / clf.num_classes)
    advance(1)
    iterative = [r for r in runs if _iterative_gradient(r.name)]
    if iterative:          # the first iterative gradient attack (PGD) against a stronger PGD
        run = iterative[0]
        clean_acc = float(correct.float().mean())
        eps_list = [e for e in run.robust if e > 0]
        e = min(eps_list, key=lambda v: abs(float(run.robust[v].float().mean()) - clean_acc / 2))
        base = cfg.build(run.name).with_eps(e)
        strong = PGD(eps=e, norm=base.norm, steps=base.steps * cfg.strong_factor, restarts=cfg.strong_restarts,
                     seed=cfg.seed + 1)
        # the stronger attack runs on the images the base attack left robust: an image counts as robust only
        # when neither attack fools it, so the drop is exactly the images the base attack missed
        base_robust = run.robust[e][idx].to(xs.device)
        left = base_robust.nonzero()[:, 0]
        robust_strong = base_robust.clone()
        if len(left):
            robust_strong[left] = ~run_batched(strong, clf, xs[left], ys[left], batch_size).success.to(xs.device)
        base_acc = float(base_robust.float().mean())              # both on the same checked images
        strong_acc = float(robust_strong.float().mean())
        info = {"steps": strong.steps, "restarts": strong.restarts}
        stats["convergence"] = {"eps": e, "norm": base.norm, "base": base_acc, "strong": strong_acc, **info}
        flags += soundness.convergence_flag(base_acc, strong_acc, e, base.norm, len(idx), info)
    advance(1)
    return flags, stats


def _ensemble_report(cfg: RobustnessConfig, runs: list[BudgetSweep], n: int) -> tuple[list, list, dict]:
    """Ensembles' per-member contributions (AutoAttack), and the budget, APGD-convergence and black-box checks.

    Reads the runs' per-budget ``extras`` (``broken_by`` (M,): the member that fooled each attacked image
    first, -1 none; ``rising`` (M,): APGD's loss still climbing) and the attacks' ``paper_budget``.
    """
    tables, flags, metrics = [], [], {}
    for run in runs:
        attack = cfg.build(run.name)
        flags += soundness.budget_flags(attack, run.name)
        rising = {e: (int(d["rising"].sum()), int(run.robust[e].sum())) for e, d in run.extras.items() if "rising" in d}
        flags += soundness.apgd_convergence_flags(rising, run.name, run.norm)
        contrib = {e: d["broken_by"] for e, d in sorted(run.extras.items()) if "broken_by" in d}
        if not contrib or not hasattr(attack, "members"):
            continue
        members = attack.members()
        labels = [label for label, _ in members]
        counts = {e: {label: int((bb == j).sum()) for j, label in enumerate(labels)} for e, bb in contrib.items()}
        attacked = int(run.robust[0.0].sum())
        budgets = len([e for e in run.robust if e > 0]) or 1
        metrics[run.name] = {"members": labels, "contributions": {str(e): c for e, c in counts.items()},
                             "queries_per_image": run.queries / max(attacked * budgets, 1),
                             "gradients_per_image": run.gradients / max(attacked * budgets, 1)}
        rows = [[label, *[counts[e][label] for e in counts]] for label in labels]
        rows.append(["still robust", *[int((bb == -1).sum()) for bb in contrib.values()]])
        tables.append(Table(f"{run.name} ({run.norm}): images each member broke first",
                            ["member", *[f"eps={e:.4g}" for e in counts]], rows))
        black = [label for label, a in members if not a.uses_gradients]
        if black:
            white = " + ".join(label for label, a in members if a.uses_gradients)
            broken = {e: sum(c[b] for b in black) for e, c in counts.items()}
            flags += soundness.blackbox_breaks_flags(broken, attacked, run.norm, " + ".join(black), white, n)
    flags += _separate_blackbox_flags(runs, n)
    return tables, flags, metrics


def _separate_blackbox_flags(runs: list[BudgetSweep], n: int) -> list:
    """Per image: a black-box preset (Square) fooling images every white-box fixed-budget run left robust."""
    flags = []
    for norm in BUDGET_NORMS:
        mine = [(r, PRESETS.get(r.name)) for r in runs if r.norm == norm and r.name in PRESETS.names()]
        white = [r for r, p in mine if p.family == "gradient" and not p.single_step]
        black = [r for r, p in mine if p.family == "black-box"]
        if not white or not black:
            continue
        broken = {}
        for e in white[0].robust:
            if e > 0 and all(e in r.robust for r in white + black):
                w = torch.stack([r.robust[e] for r in white]).all(0)
                b = torch.stack([r.robust[e] for r in black]).all(0)
                broken[e] = int((w & ~b).sum())
        flags += soundness.blackbox_breaks_flags(broken, int(white[0].robust[0.0].sum()), norm,
                                                 " + ".join(r.name for r in black), " + ".join(r.name for r in white), n)
    return flags


def robustness_section(clf: Classifier, data: Dataset, clean_logits: Tensor, cfg: RobustnessConfig | None = None, *,
                       out_dir: Path | None = None, batch_size: int = 128, progress: Progress | None = None,
                       store: Store | None = None) -> SectionResult:
    """Robust accuracy curves, worst case, examples and soundness flags.

    Args:
        clf: the classifier.  data: images (N, C, H, W) and labels (N,) (CPU tensors).
        clean_logits: (N, K) logits from the clean section (avoids recomputing).
        out_dir: where figures and ``adversarial_examples.npz`` go (no files when None).
        store: persists each attack run as it finishes and resumes finished ones
            (:mod:`.robustness_units`; None: no persistence).
    """
    from ...report import figures
    cfg = cfg or RobustnessConfig()
    progress = progress or Quiet()
    t0 = time.perf_counter()
    correct = clean_logits.argmax(1) == data.y
    runs = attack_sweeps(cfg, clf, data, correct, batch_size=batch_size, progress=progress, store=store)
    adaptive_tables, adaptive_flags, adaptive_metrics = adaptive_eval.run_adaptive(
        cfg, clf, data, correct, runs, batch_size, progress)
    curves_by_norm, worst_by_norm = {}, {}
    for norm in BUDGET_NORMS:
        curves, worst = _curves(runs, norm, cfg.budgets(norm))
        if curves:
            curves_by_norm[norm], worst_by_norm[norm] = curves, worst
    flags, check_stats = _checks(cfg, clf, data, correct, runs, curves_by_norm, batch_size, progress)
    flags = adaptive_flags + flags
    ens_tables, ens_flags, ens_metrics = _ensemble_report(cfg, runs, len(data))
    flags += ens_flags
    eot_pass = robustness_eot.run_eot(cfg, clf, data, correct, curves_by_norm, batch_size, progress)
    clean_acc = float(correct.float().mean())
    metrics = {"clean_accuracy": clean_acc, "n_images": len(data),
               "robust_accuracy": {norm: {name: dict(zip(map(str, e), a)) for name, (e, a) in c.items()}
                                   for norm, c in curves_by_norm.items()},
               "worst_case_robust_accuracy": {norm: dict(zip(map(str, c["worst-case"][0]), c["worst-case"][1]))
                                              for norm, c in curves_by_norm.items()},
               "attack_seconds": {r.name: r.seconds for r in runs},
               "gradient_evaluations": {r.name: r.gradients for r in runs},
               "queries": {r.name: r.queries for r in runs}, "ensembles": ens_metrics,
               "checks": check_stats, "adaptive": adaptive_metrics}
    if eot_pass is not None:
        metrics["eot"] = eot_pass.metrics
        flags += eot_pass.flags
    tables = [Table(f"Robust accuracy ({norm})", ["attack"] + [f"eps={e:.4g}" for e in c["worst-case"][0]],
                    [[name] + list(acc) for name, (_, acc) in c.items()]) for norm, c in curves_by_norm.items()]
    tables += ens_tables + adaptive_tables + (eot_pass.tables if eot_pass is not None else [])
    section = SectionResult("robustness", "Robustness against gradient attacks", metrics, tables, flags=flags,
                            config=asdict(cfg), seconds=0.0)
    if out_dir is not None:
        _figures(section, runs, curves_by_norm, worst_by_norm, clf, data, clean_logits, correct, out_dir, figures)
        for norm, curves in (eot_pass.curves if eot_pass is not None else {}).items():
            figures.robustness_curves(curves, out_dir / f"robustness_eot_{norm}.png", norm=norm,
                                      clean_acc=float(correct.float().mean()), chance=1.0 / clf.num_classes,
                                      majority=_majority(data.y), title=f"Digital vs under transformation ({norm})")
            section.figures.append(Figure(f"Robust accuracy under transformation ({norm})", f"robustness_eot_{norm}.png",
                                          f"EOT attacks judged under fresh draws of {cfg.eot}, beside the digital worst case."))
    section.seconds = time.perf_counter() - t0
    return section


def _figures(section, runs, curves_by_norm, worst_by_norm, clf, data, clean_logits, correct, out_dir: Path, figures):
    out_dir.mkdir(parents=True, exist_ok=True)
    chance = 1.0 / clf.num_classes
    clean_acc = float(correct.float().mean())
    for norm, curves in curves_by_norm.items():
        path = f"robustness_{norm}.png"
        figures.robustness_curves(curves, out_dir / path, norm=norm, clean_acc=clean_acc, chance=chance,
                                  majority=_majority(data.y), title=f"Robust accuracy vs {norm} budget")
        section.figures.append(Figure(f"Robust accuracy vs budget ({norm})", path,
                                      "Each line is one attack; 'worst-case' counts an image robust only if every "
                                      "attack of this norm failed on it."))
        eps = [e for e in worst_by_norm[norm] if e > 0]
        if eps:
            e = eps[len(eps) // 2]
            pc_clean = _per_class(correct, data.y, clf.num_classes)
            pc_rob = _per_class(worst_by_norm[norm][e], data.y, clf.num_classes)
            path = f"per_class_{norm}.png"
            figures.per_class_bars(clf.labels, pc_clean, pc_rob, out_dir / path,
                                   title=f"Per-class accuracy: clean vs worst case at {norm} eps={e:.4g}")
            section.figures.append(Figure(f"Per-class accuracy ({norm}, eps={e:.4g})", path))
    saved = {}
    for run in runs:
        ex = run.example
        if ex is None or len(ex.x_adv) == 0:
            continue
        i = ex.extras["index"]
        x = data.x[i]
        with torch.inference_mode():
            adv_logits = clf.predict(ex.x_adv).cpu()
        p_clean, p_adv = clean_logits[i].softmax(1), adv_logits.softmax(1)
        path = f"examples_{run.name}.png"
        budget = f"eps={run.example_eps:.4g}" if run.example_eps is not None else "minimal perturbation"
        figures.example_grid(x, ex.x_adv, data.y[i], p_clean.argmax(1), p_adv.argmax(1), p_clean.amax(1),
                             p_adv.amax(1), clf.labels, out_dir / path, norm=run.norm)
        section.figures.append(Figure(f"Adversarial examples: {run.name} ({run.norm}, {budget})", path,
                                      "Original | adversarial | perturbation amplified to full range (grey = 0)."))
        saved[f"{run.name}_x_adv"] = ex.x_adv.numpy()
        saved[f"{run.name}_index"] = i.numpy()
        section.examples.append({"attack": run.name, "norm": run.norm, "eps": run.example_eps,
                                 "index": i.tolist(), "success": ex.success.tolist(), "norms": ex.norms.tolist(),
                                 "pred_adv": p_adv.argmax(1).tolist(), "label": data.y[i].tolist()})
    if saved:
        np.savez_compressed(out_dir / "adversarial_examples.npz", **saved)


def _majority(y: Tensor) -> float | None:
    """Share (of all images) of the most frequent class in ``y`` (N,): the majority-class baseline."""
    return float(torch.bincount(y).max()) / len(y) if len(y) else None


def _per_class(mask: Tensor, y: Tensor, k: int) -> list[float]:
    from .clean import per_class_accuracy
    return per_class_accuracy(mask, y, k).tolist()
