"""``trustvision anomaly``: inspection on an MVTec-AD-style folder (or the bundled synthetic textures).

Fits the chosen methods (VAE, VAE + Siamese re-judgment, PatchCore) on ``train/good`` only, scores ``test/``,
evaluates (image/pixel AUROC, AUPRO, F1-max, per defect type), attacks the inspector (PGD: missed defects and
false alarms against the budget) and writes ``OUT/results.json`` + ``OUT/report.html``; trained models are
saved in ``OUT/models`` and reused on a rerun.  ``--data bundled:textures`` (or ``--data demo``) is the offline
demo (also ``trustvision anomaly demo``).  Exit codes: 0 ok, 2 bad input.  See ``docs/anomaly.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...parsing import parse_numbers
from ..console import console, print_summary
from ..options import DeviceOpt, NoResumeOpt, OutOpt, SeedOpt


def anomaly(what: Annotated[Optional[str], typer.Argument(help="demo: the offline synthetic demo "
                                                             "(same as --data bundled:textures)")] = None,
            data: Annotated[Optional[str], typer.Option("--data", "-d", help="MVTec AD folder (train/good, "
                                                       "test/<defect>, ground_truth/<defect>) | bundled:textures | "
                                                       "demo")] = None,
            out: OutOpt = Path("trustvision-anomaly"),
            method: Annotated[str, typer.Option(help="vae | vae+siamese | patchcore | all (or a comma list)")] = "all",
            epochs: Annotated[Optional[int], typer.Option(help="VAE / Siamese training epochs (default: theirs)")] = None,
            backbone: Annotated[str, typer.Option(help="PatchCore backbone: demo | torchvision:NAME | timm:NAME")] = "demo",
            backbone_weights: Annotated[Optional[str], typer.Option(help="state-dict file for --backbone "
                                                                   "(never downloaded)")] = None,
            patchcore_preset: Annotated[str, typer.Option(help="fast (CPU: deep grid, 1 % coreset) | paper "
                                                          "(Roth et al.: shallow grid, 10 %, reweighting)")] = "fast",
            eps_linf: Annotated[str, typer.Option("--eps-linf", help="attack budgets, e.g. 0,1/255,2/255,4/255")]
            = "0,1/255,2/255,4/255,8/255",
            attack_steps: Annotated[int, typer.Option(help="PGD steps of the attack on the inspector")] = 10,
            size: Annotated[Optional[int], typer.Option(help="resize images to SIZE x SIZE")] = None,
            device: DeviceOpt = "cpu",
            batch_size: Annotated[Optional[int], typer.Option(
                "--batch-size", help="images per forward pass and per attack batch (default: forward passes chosen "
                                     "by device (trustvision.batching.forward_batch), attack batches of 32)")] = None,
            seed: SeedOpt = 0,
            no_resume: NoResumeOpt = False) -> None:
    """Inspect: anomaly maps (VAE, VAE + Siamese, PatchCore), AUROC/AUPRO, attacks on the inspector, a report."""
    from ...anomaly.run import run_anomaly
    from ...anomaly.section import AnomalyConfig
    from ...progress import rich_progress
    from ...errors import TrustVisionError
    if what not in (None, "demo"):
        raise TrustVisionError(f"trustvision anomaly {what!r}: the only argument is 'demo'; give a folder with --data")
    if what == "demo" and data not in (None, "demo", "bundled:textures"):
        raise TrustVisionError(f"trustvision anomaly demo: --data {data!r} conflicts with 'demo'")
    if what is None and data is None:
        raise TrustVisionError("--data: give an MVTec AD folder or bundled:textures (or run 'trustvision anomaly demo')")
    spec = "bundled:textures" if what == "demo" or data in (None, "demo") else data
    cfg = AnomalyConfig(methods=method, epochs=epochs, backbone=backbone, backbone_weights=backbone_weights,
                        patchcore_preset=patchcore_preset, eps=parse_numbers(eps_linf, "--eps-linf") or [0.0],
                        attack_steps=attack_steps, batch_size=batch_size, seed=seed, device=device)
    with rich_progress(console) as progress:
        results = run_anomaly(spec, out, cfg, size=size, resume=not no_resume, progress=progress, console=console)
    raise typer.Exit(print_summary(results, Path(out)))
