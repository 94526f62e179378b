"""``trustvision demo``: train (or reuse) the small MNIST CNN on the bundled digits and audit it.

The network is the cached demo model of :func:`trustvision.training.mnist_demo_model`; the audit
runs the ``clean`` and ``robustness`` sections with Madry et al.'s MNIST attack settings (PGD, 40 steps)
and writes ``results.json`` and ``report.html`` into ``--out``.

Two settings (:data:`DEMO_SETTINGS`, :func:`demo_config`) differ only in Carlini-Wagner's binary search
(compare them with ``bench/demo.py --settings quick,thorough``; docs/speed.md measures both: the same robust
accuracies, 7 % fewer CW gradients):

* ``quick`` (the default): CW with 3 binary-search steps starting at ``c = 0.1``;
* ``thorough`` (``--thorough``): CW with 5 binary-search steps from ``c = 1e-3`` (Carlini & Wagner's start).

On the demo's digits no CW adversarial was found below ``c = 0.055`` with the thorough search.  The
convergence check (PGD with 5x the steps and 3 restarts) stays as the robustness section runs it in both:
2x/2, 2.5x/2 and 3x/1 (steps x / restarts) no longer raise the demo's "not-converged" warning (docs/speed.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..console import note, progress_bars, run_audit
from ..options import DeviceOpt, FailUnderOpt, OutOpt, OutputArgs, SeedOpt

AUDIT_AGAIN = ("trustvision audit --model {path} --arch trustvision:smallcnn --num-classes 10 --channels 1 "
               "--data mnist")

#: The demo's budgets (MNIST, [0, 1] pixels) and its two settings: CW's options and the convergence check's
#: ``strong_factor`` (steps x) and ``strong_restarts``.  PGD keeps Madry et al.'s 40 steps in both.
EPS_LINF = [0, 0.05, 0.1, 0.15, 0.2, 0.3]
EPS_L2 = [0, 0.5, 1.0, 1.5, 2.0, 3.0]
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "quick": {"cw": {"binary_search_steps": 3, "initial_const": 0.1, "steps": 100, "lr": 0.05},
              "strong_factor": 5, "strong_restarts": 3},
    "thorough": {"cw": {"binary_search_steps": 5, "initial_const": 1e-3, "steps": 100, "lr": 0.05},
                 "strong_factor": 5, "strong_restarts": 3},
}


def demo_config(n: int = 200, seed: int = 0, *, thorough: bool = False, gates: list[str] | None = None):
    """The demo's :class:`~trustvision.AuditConfig`: clean + robustness on ``n`` images, quick or thorough settings."""
    from ... import AuditConfig, RobustnessConfig
    s = DEMO_SETTINGS["thorough" if thorough else "quick"]
    rob = RobustnessConfig(eps_linf=list(EPS_LINF), eps_l2=list(EPS_L2), seed=seed,
                           attack_options={"pgd": {"steps": 40}, "pgd-l2": {"steps": 40},   # Madry et al.'s MNIST setting
                                           "cw": dict(s["cw"])},
                           strong_factor=s["strong_factor"], strong_restarts=s["strong_restarts"])
    cfg = AuditConfig(n_images=n, seed=seed, robustness=rob, gates=list(gates or []))
    cfg.check_gates()
    return cfg


def demo(out: OutOpt = Path("trustvision-demo"),
         n: Annotated[int, typer.Option("--n", help="test images to audit")] = 200,
         thorough: Annotated[bool, typer.Option(
             "--thorough", help="CW with 5 binary-search steps from c=1e-3 (Carlini & Wagner's start; "
                                "default: 3 steps from c=0.1, faster)")] = False,
         device: DeviceOpt = "cpu", seed: SeedOpt = 0, fail_under: FailUnderOpt = None,
         output: OutputArgs = OutputArgs()) -> None:
    """Train (or reuse) a small CNN on the bundled MNIST digits, audit it, write results.json + report.html."""
    from ...models import Classifier
    from ...training import mnist_demo_model
    cfg = demo_config(n, seed, thorough=thorough, gates=fail_under)      # a bad --fail-under fails before training
    with progress_bars(output) as progress:
        bar = {}

        def tick(done: int, total: int) -> None:
            if "t" not in bar:
                bar["t"] = progress.task("training the demo CNN on MNIST", total)
            bar["t"](1)
        module, _, test, path, cached = mnist_demo_model(seed=seed, progress=tick)
    note(output, f"demo model: {'reused' if cached else 'trained and cached'} {path}\n"
                 f"audit it again: {AUDIT_AGAIN.format(path=path)}")
    classifier = Classifier(module, num_classes=10, channels=1, labels=[str(i) for i in range(10)], device=device,
                            name="mnist-smallcnn (demo)")
    raise typer.Exit(run_audit(classifier, test, cfg, out, "mnist (bundled, held-out 20 % split)", output=output))
