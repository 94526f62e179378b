"""Soundness checks for robustness numbers (Carlini et al. 2019, "On Evaluating
Adversarial Robustness", sec. 5; Athalye et al. 2018, "Obfuscated Gradients").

Each check returns :class:`~trustvision.results.Flag` objects with a sentence a
person can act on.  A robustness figure without these checks is not reported.

* ``non-monotonic``: robust accuracy rises as the budget grows;
* ``weaker-than-fgsm``: multi-step PGD leaves more accuracy than one-step FGSM;
* ``black-box-stronger``: a black-box attack (the threshold attack, by differential evolution) leaves
  less accuracy than white-box PGD at the same L∞ budget;

Which curve plays which part is read off the attack presets' capabilities (``family``,
``single_step``, ``uses_gradients``), never off their names.
* ``large-budget-not-chance``: an attack with a huge budget does not bring accuracy to chance;
* ``zero-gradients`` / ``nan-gradients``: input gradients vanish or are not finite;
* ``not-converged``: more steps and restarts lower robust accuracy materially.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attacks.base import input_gradient
from ..attacks.presets import PRESETS
from ..models.classifier import Classifier
from ..results import Flag


def tolerance(n: int) -> float:
    """Accuracy differences below this are noise: two images or 2 %, whichever is larger."""
    return max(0.02, 2.0 / max(n, 1))


def monotonic_flags(curves: dict[str, tuple[list[float], list[float]]], norm: str, n: int) -> list[Flag]:
    """Flag curves (attack -> (eps list ascending, accuracy list)) whose accuracy rises with eps."""
    flags = []
    tol = tolerance(n)
    for name, (eps, acc) in curves.items():
        for i in range(1, len(acc)):
            rise = acc[i] - min(acc[:i])
            if rise > tol:
                j = min(range(i), key=lambda k: acc[k])
                flags.append(Flag("non-monotonic", "warning",
                                  f"{name} ({norm}): robust accuracy rises from {acc[j]:.1%} at eps={eps[j]:g} to "
                                  f"{acc[i]:.1%} at eps={eps[i]:g}. A larger budget can never help the model: the "
                                  "attack is failing (gradient masking or too few steps); do not trust these numbers.",
                                  {"attack": name, "norm": norm, "eps": [eps[j], eps[i]], "accuracy": [acc[j], acc[i]]}))
                break
    return flags


def _first(curves: dict, role) -> str | None:
    """The first curve whose attack preset (:data:`~trustvision.attacks.presets.PRESETS`) satisfies ``role``."""
    return next((name for name in curves if name in PRESETS.names() and role(PRESETS.get(name))), None)


def _single_step(p) -> bool:
    return p.family == "gradient" and p.single_step


def _iterative(p) -> bool:
    return p.family == "gradient" and not p.single_step


def _black_box(p) -> bool:
    return p.family == "black-box"


def fgsm_vs_pgd_flags(curves: dict[str, tuple[list[float], list[float]]], n: int, single: str | None = None,
                      iterative: str | None = None) -> list[Flag]:
    """The iterative gradient attack (PGD) must be at least as strong as the single-step one (FGSM) at the same
    L-inf budget.

    ``curves``: attack -> (eps list ascending, accuracy list) for one norm.  ``single``/``iterative`` name the
    two curves; by default they are found by capability (a single-step and a multi-step gradient preset).
    """
    single = single or _first(curves, _single_step)
    iterative = iterative or _first(curves, _iterative)
    if single not in curves or iterative not in curves:
        return []
    f_eps, f_acc = curves[single]
    p = dict(zip(*curves[iterative]))
    worse = [(e, a, p[e]) for e, a in zip(f_eps, f_acc) if e in p and p[e] > a + tolerance(n)]
    if not worse:
        return []
    e, fa, pa = worse[0]
    return [Flag("weaker-than-fgsm", "warning",
                 f"At eps={e:g}, {iterative.upper()} leaves {pa:.1%} accuracy but single-step {single.upper()} only "
                 f"{fa:.1%}. An iterative attack weaker than one step signals masked or noisy gradients; raise PGD "
                 "steps/restarts or use a margin loss, and treat the PGD numbers as upper bounds.",
                 {"eps": e, single: fa, iterative: pa})]


def blackbox_vs_whitebox_flags(curves: dict[str, tuple[list[float], list[float]]], n: int,
                                blackbox: str | None = None, whitebox: str | None = None) -> list[Flag]:
    """A black-box attack must not beat white-box PGD at the same L-inf budget (curves as :func:`fgsm_vs_pgd_flags`).

    ``blackbox``/``whitebox`` name the two curves; by default they are found by capability (the first attack
    of the black-box family, the first multi-step gradient attack).  A gradient-free search that succeeds where
    gradients fail means the gradients mislead the attack: gradient masking (Athalye et al. 2018; Carlini et
    al. 2019, sec. 5).
    """
    blackbox = blackbox or _first(curves, _black_box)
    whitebox = whitebox or _first(curves, _iterative)
    if blackbox not in curves or whitebox not in curves:
        return []
    w = dict(zip(*curves[whitebox]))
    worse = [(e, a, w[e]) for e, a in zip(*curves[blackbox]) if e > 0 and e in w and a < w[e] - tolerance(n)]
    if not worse:
        return []
    e, ba, wa = worse[0]
    return [Flag("black-box-stronger", "warning",
                 f"At L-inf eps={e:g}, the black-box {blackbox} attack leaves {ba:.1%} accuracy but white-box "
                 f"{whitebox} {wa:.1%}. A search that never sees gradients beating one that follows them signals "
                 "gradient masking: treat the gradient-attack numbers as upper bounds and evaluate with "
                 "adaptive attacks (BPDA/EOT) or stronger black-box attacks.",
                 {"eps": e, blackbox: ba, whitebox: wa})]


def large_budget_flag(accuracy: float, eps: float, norm: str, chance: float) -> list[Flag]:
    """An attack allowed to change the image almost arbitrarily must reach (below) chance."""
    if accuracy <= chance + 0.05:
        return []
    return [Flag("large-budget-not-chance", "error",
                 f"With a very large budget ({norm} eps={eps:g}) PGD still leaves {accuracy:.1%} accuracy, above "
                 f"chance ({chance:.1%}). An attack that can repaint the image must succeed: the gradients are "
                 "masked or the attack is broken, so every robust-accuracy figure here is an overestimate.",
                 {"eps": eps, "norm": norm, "accuracy": accuracy, "chance": chance})]


def gradient_flags(clf: Classifier, x: Tensor, y: Tensor) -> tuple[list[Flag], dict]:
    """Check cross-entropy input gradients on images (N, C, H, W) with labels (N,).

    Returns flags and stats (share of zero and of non-finite gradients, median norm).
    """
    grad, _ = input_gradient(clf, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    norms = grad.flatten(1).norm(dim=1)
    finite = torch.isfinite(grad.flatten(1)).all(1)
    zero = finite & (norms <= 1e-12)
    stats = {"share_zero": float(zero.float().mean()), "share_nonfinite": float((~finite).float().mean()),
             "median_norm": float(norms[finite].median()) if bool(finite.any()) else None, "n": len(x)}
    flags = []
    if stats["share_nonfinite"] > 0:
        flags.append(Flag("nan-gradients", "error",
                          f"{stats['share_nonfinite']:.0%} of input gradients are NaN/Inf: gradient attacks cannot "
                          "run soundly; find the non-differentiable or overflowing operation in the model.", stats))
    if stats["share_zero"] > 0.05:
        flags.append(Flag("zero-gradients", "warning",
                          f"{stats['share_zero']:.0%} of images have an exactly zero input gradient: possible "
                          "gradient masking (quantisation, saturated softmax, non-differentiable preprocessing). "
                          "Gradient attacks will report false robustness; use BPDA/EOT or black-box attacks.", stats))
    return flags, stats


def convergence_flag(base_acc: float, strong_acc: float, eps: float, norm: str, n: int, strong: dict) -> list[Flag]:
    """Flag when a stronger PGD (more steps and restarts) lowers accuracy by more than noise."""
    if base_acc - strong_acc <= tolerance(n):
        return []
    return [Flag("not-converged", "warning",
                 f"At {norm} eps={eps:g}, PGD with {strong['steps']} steps and {strong['restarts']} restarts lowers "
                 f"robust accuracy from {base_acc:.1%} to {strong_acc:.1%}: the default attack had not converged. "
                 "Use more steps/restarts for this model; the curve above overestimates robustness.",
                 {"eps": eps, "norm": norm, "base": base_acc, "strong": strong_acc, **strong})]
