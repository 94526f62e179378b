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
* ``not-converged``: more steps and restarts lower robust accuracy materially;
* ``black-box-breaks-robust``: a black-box attack (Square) fools images that every white-box run (APGD, the
  gradient members of AutoAttack) left robust, image by image (Croce & Hein 2020, sec. 5);
* ``apgd-not-converged``: APGD's loss was still rising over its last iterations on many still-robust images;
* ``attack-budget-too-small``: an attack runs with fewer iterations/restarts/queries than its paper's.
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
    """Flag when a stronger PGD (more steps and restarts) lowers accuracy by more than noise.

    ``base_acc`` / ``strong_acc`` are shares of the ``n`` checked images, which are correctly classified ones
    (not of all images, as the robustness table is): the message says so.
    """
    if base_acc - strong_acc <= tolerance(n):
        return []
    return [Flag("not-converged", "warning",
                 f"At {norm} eps={eps:g}, PGD with {strong['steps']} steps and {strong['restarts']} restarts lowers "
                 f"robust accuracy from {base_acc:.1%} to {strong_acc:.1%} of the {n} correctly classified images "
                 "checked (the table's percentages are of all images): the default attack had not converged. "
                 "Use more steps/restarts for this model; the curve above overestimates robustness.",
                 {"eps": eps, "norm": norm, "base": base_acc, "strong": strong_acc, "n_checked": n,
                  "denominator": "correctly classified images checked", **strong})]


def blackbox_breaks_flags(broken: dict[float, int], attacked: int, norm: str, blackbox: str, whitebox: str,
                          n: int) -> list[Flag]:
    """Flag images fooled by a black-box attack after every white-box attack failed on them.

    ``broken``: budget -> number of images the black-box attack (``blackbox``) fooled among those the white-box
    attacks (``whitebox``, e.g. "APGD-CE + APGD-T") left robust; ``attacked``: images attacked; ``n``: all images.
    More than noise (:func:`tolerance` of ``n``) is gradient masking: the white-box numbers are upper bounds.
    """
    bad = [(e, k) for e, k in sorted(broken.items()) if e > 0 and k / max(n, 1) > tolerance(n)]
    if not bad:
        return []
    e, k = bad[0]
    return [Flag("black-box-breaks-robust", "warning",
                 f"At {norm} eps={e:g}, the black-box {blackbox} fooled {k} images ({k / max(n, 1):.1%} of all) that "
                 f"{whitebox} left robust. A gradient-free search succeeding where gradients fail signals gradient "
                 "masking: report the ensemble's worst case, never the white-box numbers alone, and evaluate the "
                 "defence adaptively (BPDA/EOT).",
                 {"norm": norm, "eps": e, "broken": {str(b): c for b, c in broken.items()}, "attacked": attacked,
                  "blackbox": blackbox, "whitebox": whitebox})]


def apgd_convergence_flags(rising: dict[float, tuple[int, int]], name: str, norm: str, share: float = 0.1
                           ) -> list[Flag]:
    """Flag APGD runs whose loss was still rising over their last iterations on many still-robust images.

    ``rising``: budget -> (images still robust whose best loss still grew by more than 5 % of its total gain
    in the last 20 % of the iterations, images still robust).  Flags when that share exceeds ``share`` and
    at least 3 images.
    """
    bad = [(e, r, k) for e, (r, k) in sorted(rising.items()) if r >= 3 and r > share * k]
    if not bad:
        return []
    e, r, k = bad[0]
    return [Flag("apgd-not-converged", "warning",
                 f"{name} ({norm}, eps={e:g}): on {r} of the {k} images it left robust the loss was still rising "
                 "over the last iterations, so more iterations would likely fool some of them. Raise its steps "
                 "(the paper's 100) or add restarts; the robust accuracy here is an upper bound.",
                 {"attack": name, "norm": norm, "eps": e, "rising": r, "robust": k})]


def budget_flags(attack, name: str) -> list[Flag]:
    """Flag an attack configured with less than its paper's budget.

    ``attack`` declares ``paper_budget`` (``{"steps": 100, ...}``: the paper's iterations, restarts,
    queries...); every field set below it is named.
    """
    paper = getattr(attack, "paper_budget", None) or {}
    short = {k: (getattr(attack, k), v) for k, v in paper.items() if getattr(attack, k, v) < v}
    if not short:
        return []
    what = ", ".join(f"{k}={used} (paper: {v})" for k, (used, v) in short.items())
    return [Flag("attack-budget-too-small", "warning",
                 f"{name} runs with {what}: fewer than its paper's. Its robust accuracy overestimates robustness; "
                 "use the defaults for numbers you report.",
                 {"attack": name, **{k: {"used": u, "paper": v} for k, (u, v) in short.items()}})]
