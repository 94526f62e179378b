"""``trustvision corruptions``: accuracy under common corruptions (Hendrycks & Dietterich, ICLR 2019).

Runs the ``clean`` and ``corruptions`` audit sections on images (N, C, H, W) in [0, 1] and writes ``results.json``,
``report.html``, ``corruptions_heatmap.png`` and ``corruptions_grid.png`` into ``--out``: the accuracy table
(corruption × severity), the mean corruption accuracy and, with ``--baseline MODEL``, the (relative) mCE.
See ``docs/physical.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...errors import TrustVisionError
from ..console import note, run_audit
from ..options import (MAX_PIXELS, DataArgs, DataOpt, FailUnderOpt, MaxPixelsOpt, ModelArgs, NoResumeOpt, OutOpt,
                       OutputArgs, SeedOpt, SkipBadOpt)


def corruptions(model: ModelArgs, data: DataOpt, out: OutOpt = Path("trustvision-corruptions"),
                baseline: Annotated[Optional[str], typer.Option(
                    help="baseline model spec for mCE (loaded with the model's classes, channels and normalisation)")]
                = None,
                baseline_arch: Annotated[Optional[str], typer.Option(
                    help="architecture of a --baseline state-dict file (default: --arch)")] = None,
                only: Annotated[Optional[str], typer.Option(
                    "--corruptions", help="comma list of corruptions (default: all), e.g. gaussian_noise,contrast")]
                = None,
                severities: Annotated[Optional[str], typer.Option(help="comma list of severities 1..5")] = None,
                scale: Annotated[Optional[float], typer.Option(
                    help="multiplier of pixel-sized parameters (blur radii); default min(1, side/224)")] = None,
                images: Annotated[int, typer.Option("--images", help="images to corrupt")] = 500,
                batch_size: Annotated[Optional[int], typer.Option(
                    "--batch-size", help="images per forward pass (default: chosen by device "
                                         "(trustvision.batching.forward_batch))")] = None,
                seed: SeedOpt = 0, fail_under: FailUnderOpt = None, no_resume: NoResumeOpt = False,
                max_pixels: MaxPixelsOpt = MAX_PIXELS, skip_bad_images: SkipBadOpt = False,
                output: OutputArgs = OutputArgs()) -> None:
    """Accuracy under common corruptions at 5 severities, mean corruption accuracy, mCE against a baseline."""
    from ... import AuditConfig
    from ...evaluation.sections.corruptions import CorruptionsConfig
    if images < 1:
        raise TrustVisionError(f"--images must be >= 1, got {images}")
    kw: dict = {"baseline": baseline, "baseline_arch": baseline_arch or (model.arch if baseline else None),
                "scale": scale, "seed": seed, "batch_size": batch_size}
    if only:
        kw["corruptions"] = [c.strip() for c in only.split(",") if c.strip()]
    if severities:
        try:
            kw["severities"] = [int(s) for s in severities.split(",") if s.strip()]
        except ValueError:
            raise TrustVisionError(f"--severities: expected integers 1..5 like 1,3,5, got {severities!r}") from None
    try:
        cfg_c = CorruptionsConfig(**kw)
    except TrustVisionError as e:
        raise TrustVisionError(f"--corruptions: {e}" if "corruption '" in str(e) else str(e)) from None
    classifier = model.load()
    ds = DataArgs(data, max_pixels=max_pixels, skip_bad=skip_bad_images).load(classifier)
    cfg = AuditConfig(sections=["clean", "corruptions"], n_images=images, batch_size=batch_size or 256, seed=seed,
                      corruptions=cfg_c, gates=list(fail_under or []), resume=not no_resume)
    cfg.check_gates()
    code = run_audit(classifier, ds, cfg, out, data, output=output)
    note(output, f"corruption heat-map and grid: {out}")
    raise typer.Exit(code)
