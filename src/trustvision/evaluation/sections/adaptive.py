"""Adaptive evaluation of defences: detect randomness and shattered gradients, attack with EOT and BPDA.

Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018, and
Tramèr, Carlini, Brendel & Madry, "On Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020:
a defence that only hides the gradient looks robust against the naive attack and falls to an adaptive one.

* **Probe** (:func:`probe`): two identical forward passes that disagree mean the model is random;
  input gradients that are exactly zero (or not finite) on most images mean they are shattered
  (a non-differentiable or piecewise-constant step such as JPEG or bit-depth reduction).
* **EOT** (expectation over transformation): :func:`eot_classifier` averages the softmax of ``k``
  stochastic passes (logits = log of the mean softmax, as for randomized smoothing), so a gradient
  step follows the expected loss rather than one draw.
* **BPDA** (backward-pass differentiable approximation): a classifier that offers a ``bpda()`` view
  (:class:`~trustvision.defenses.transforms.DefendedClassifier`) replaces the transform's gradient by
  the identity; its forward pass is unchanged.
* Every adversarial found on the adaptive view is judged on the *real* classifier (one ordinary
  forward pass), so the adaptive numbers are achievable against the deployed model.

The robustness section runs the naive and the adaptive attacks, reports both side by side, and keeps
per image the worse of the two (an image is robust only if both attacks failed on it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attacks.base import input_gradient, log_mean_softmax
from ...attacks.runner import BudgetSweep, sweep_budgets
from ...models.classifier import Classifier
from ...progress import Progress
from ...results import Flag, Table
from ..soundness import tolerance


@dataclass
class Probe:
    """What :func:`probe` found on ``images`` correctly classified images."""

    images: int
    random: bool                       # two identical passes gave different logits
    disagreement: float                # share of images whose predicted class differed between the passes
    zero_gradients: float              # share of images whose input gradient is exactly zero or not finite
    bpda_available: bool               # the classifier offers a BPDA view
    techniques: list[str] = field(default_factory=list)

    @property
    def shattered(self) -> bool:
        return self.zero_gradients >= 0.5

    def describe(self) -> dict:
        return {**asdict(self), "shattered": self.shattered}


def probe(clf: Classifier, x: Tensor, y: Tensor) -> Probe:
    """Probe ``clf`` on images ``x`` (N, C, H, W) in [0, 1] with labels ``y`` (N,)."""
    with torch.no_grad():
        a, b = clf(x), clf(x)
    random = not torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    disagreement = float((a.argmax(1) != b.argmax(1)).float().mean())
    grad, _ = input_gradient(clf, x, lambda z: F.cross_entropy(z, y, reduction="none"))
    flat = grad.flatten(1)
    dead = (flat == 0).all(1) | ~torch.isfinite(flat).all(1)
    return Probe(len(x), random, disagreement, float(dead.float().mean()), callable(getattr(clf, "bpda", None)))


class _EOT(nn.Module):
    """Log of the mean softmax over ``k`` stochastic passes of ``clf``: (N, C, H, W) -> (N, K)."""

    def __init__(self, clf: Classifier, k: int) -> None:
        super().__init__()
        self.clf, self.k = clf, k
        self.inner = clf.module                      # registered: weights_hash() sees the model

    def forward(self, x: Tensor) -> Tensor:
        logits = self.clf(x.repeat_interleave(self.k, 0))
        return log_mean_softmax(logits, self.k)


def eot_classifier(clf: Classifier, k: int) -> Classifier:
    """A Classifier whose logits average ``k`` stochastic passes of ``clf`` (EOT; one forward of N·k images)."""
    return Classifier(_EOT(clf, k), num_classes=clf.num_classes, channels=clf.channels, labels=clf.labels,
                      device=clf.device, name=f"{clf.name} [EOT k={k}]")


def adaptive_view(clf: Classifier, found: Probe, eot_samples: int) -> Classifier | None:
    """The classifier the adaptive attacks differentiate (BPDA and/or EOT), or None when none applies.

    Records the techniques used in ``found.techniques``.
    """
    view = clf
    if found.shattered and found.bpda_available:
        view = clf.bpda()
        found.techniques.append("BPDA")
    if found.random:
        view = eot_classifier(view, eot_samples)
        found.techniques.append(f"EOT(k={eot_samples})")
    return view if found.techniques else None


def flags(found: Probe, naive: dict[str, dict[float, float]], adaptive: dict[str, dict[float, float]],
          norms: dict[str, str], n: int) -> list[Flag]:
    """Flags saying what was detected, what was done, and how far the numbers moved (naive -> adaptive)."""
    out = []
    drops = []
    for name, curve in adaptive.items():
        for eps, acc in curve.items():
            if eps > 0:
                drops.append((naive[name][eps] - acc, name, eps, naive[name][eps], acc))
    worst = max(drops, default=None)
    moved = ""
    if worst is not None:
        d, name, eps, a, b = worst
        moved = (f" Largest change: {name} ({norms[name]}) at eps={eps:.4g}, robust accuracy {a:.1%} naive vs "
                 f"{b:.1%} adaptive.")
    what = []
    if found.random:
        what.append(f"the model is random (two identical passes disagreed on {found.disagreement:.0%} of images)")
    if found.shattered:
        what.append(f"input gradients are zero or not finite on {found.zero_gradients:.0%} of images "
                    "(shattered gradients)")
    if found.techniques:
        gap = worst is not None and worst[0] > tolerance(n)
        out.append(Flag("obfuscated-gradients" if gap else "adaptive-evaluation", "warning" if gap else "info",
                        f"{'; '.join(what).capitalize()}. Gradient attacks were re-run adaptively with "
                        f"{' + '.join(found.techniques)} and judged on the real model; the curves keep the worse "
                        f"of naive and adaptive per image.{moved}"
                        + (" The naive numbers overstate robustness: do not report them." if gap else ""),
                        {"probe": found.describe()}))
    elif found.shattered:
        out.append(Flag("obfuscated-gradients", "error",
                        f"{what[-1].capitalize()} and the model offers no BPDA view, so gradient attacks cannot "
                        "evaluate it: their robust accuracy is meaningless. Wrap the non-differentiable "
                        "preprocessing with trustvision.defenses.transforms (BPDA) or use black-box attacks.",
                        {"probe": found.describe()}))
    return out


PROBE_IMAGES = 64


def run_adaptive(cfg, clf: Classifier, data, correct: Tensor, runs: list[BudgetSweep], batch_size: int,
                 progress: Progress | None) -> tuple[list[Table], list[Flag], dict]:
    """The robustness section's adaptive pass: probe, re-attack on the adaptive view, merge per image.

    ``cfg`` is the section's :class:`~.robustness.RobustnessConfig` (``build(name)``, ``budgets(norm)``),
    ``data`` holds ``x`` (N, C, H, W) and ``y`` (N,), ``correct`` (N,) bool.  Only attacks that use
    gradients (``attack.uses_gradients``) are re-run, with the same budget sweep as the naive pass
    (:func:`~trustvision.attacks.runner.sweep_budgets`) on the adaptive view and judged on ``clf``.
    ``runs`` (the naive sweeps) are updated in place: ``robust[eps]`` becomes naive AND adaptive,
    the example images become the adaptive ones.  Returns (tables, flags, metrics).
    """
    idx = correct.nonzero()[:PROBE_IMAGES, 0]
    if cfg.adaptive == "off" or len(idx) == 0:
        return [], [], {}
    found = probe(clf, data.x[idx].to(clf.device), data.y[idx].to(clf.device))
    view = adaptive_view(clf, found, cfg.eot_samples)
    metrics: dict = {"probe": found.describe()}
    naive, adapt, norms = {}, {}, {}
    for run in runs if view is not None else []:
        attack, target = cfg.build(run.name), view
        if not attack.uses_gradients:
            continue
        if found.random and hasattr(attack, "for_random_model"):     # AutoAttack: its 'rand' version, own EOT
            attack, target = attack.for_random_model(), (clf.bpda() if "BPDA" in found.techniques else clf)
            metrics.setdefault("versions", {})[run.name] = attack.version
        arun = sweep_budgets(attack, target, data.x, data.y, cfg.budgets(attack.norm), attacked=correct,
                             batch_size=batch_size, n_examples=cfg.n_examples, progress=progress, judge=clf,
                             name=run.name)
        naive[run.name] = {e: float(r.float().mean()) for e, r in run.robust.items()}
        adapt[run.name] = {e: float(r.float().mean()) for e, r in arun.robust.items()}
        norms[run.name] = run.norm
        run.robust = {e: r & arun.robust[e] for e, r in run.robust.items()}
        run.seconds += arun.seconds
        run.gradients += arun.gradients
        if arun.example is not None:
            run.example, run.example_eps = arun.example, arun.example_eps
    tables = []
    for norm in dict.fromkeys(norms.values()):
        names = [k for k, v in norms.items() if v == norm]
        budgets = sorted(naive[names[0]])
        rows = [[name, label, *[curve[name][e] for e in budgets]]
                for name in names for label, curve in (("naive", naive), (" + ".join(found.techniques), adapt))]
        tables.append(Table(f"Naive vs adaptive robust accuracy ({norm})",
                            ["attack", "evaluation"] + [f"eps={e:.4g}" for e in budgets], rows))
    metrics.update(techniques=found.techniques,
                   naive_robust_accuracy={k: {str(e): a for e, a in v.items()} for k, v in naive.items()},
                   adaptive_robust_accuracy={k: {str(e): a for e, a in v.items()} for k, v in adapt.items()})
    return tables, flags(found, naive, adapt, norms, len(data)), metrics
