"""``trustvision demo``: train (or reuse) the small MNIST CNN on the bundled digits and audit it.

The network is the cached demo model of :func:`trustvision.training.mnist_demo_model`; the audit
runs the ``clean`` and ``robustness`` sections with Madry et al.'s MNIST attack settings (PGD, 40 steps)
and writes ``results.json`` and ``report.html`` into ``--out``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import note, progress_bars, run_audit
from ..options import DeviceOpt, FailUnderOpt, OutOpt, OutputArgs, SeedOpt

AUDIT_AGAIN = ("trustvision audit --model {path} --arch trustvision:smallcnn --num-classes 10 --channels 1 "
               "--data mnist")


def demo(out: OutOpt = Path("trustvision-demo"),
         n: Annotated[int, typer.Option("--n", help="test images to audit")] = 200,
         device: DeviceOpt = "cpu", seed: SeedOpt = 0, fail_under: FailUnderOpt = None,
         output: OutputArgs = OutputArgs()) -> None:
    """Train (or reuse) a small CNN on the bundled MNIST digits, audit it, write results.json + report.html."""
    from ... import AuditConfig, RobustnessConfig
    from ...models import Classifier
    from ...training import mnist_demo_model
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
    rob = RobustnessConfig(eps_linf=[0, 0.05, 0.1, 0.15, 0.2, 0.3], eps_l2=[0, 0.5, 1.0, 1.5, 2.0, 3.0],
                           attack_options={"pgd": {"steps": 40}, "pgd-l2": {"steps": 40},   # Madry et al.'s MNIST setting
                                           "cw": {"binary_search_steps": 5, "steps": 100, "lr": 0.05}}, seed=seed)
    cfg = AuditConfig(n_images=n, seed=seed, robustness=rob, gates=list(fail_under or []))
    cfg.check_gates()
    raise typer.Exit(run_audit(classifier, test, cfg, out, "mnist (bundled, held-out 20 % split)", output=output))
