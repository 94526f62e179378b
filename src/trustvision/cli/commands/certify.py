"""``trustvision certify``: certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

Runs the ``clean`` and ``certify`` audit sections on images (N, C, H, W) in [0, 1] and writes ``results.json``,
``report.html``, ``certify_curve.png`` and ``certify_radii.png`` into ``--out``.  See ``docs/smoothing.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...errors import TrustVisionError
from ...parsing import parse_numbers
from ..console import note, run_audit
from ..options import (MAX_PIXELS, DataArgs, DataOpt, MaxPixelsOpt, ModelArgs, NoResumeOpt, OutOpt, OutputArgs, SeedOpt,
                       SkipBadOpt)


def certify(model: ModelArgs, data: DataOpt, out: OutOpt = Path("trustvision-certify"),
            sigma: Annotated[float, typer.Option(help="Gaussian noise level (pixel units)")] = 0.25,
            n: Annotated[int, typer.Option("--n", help="estimation samples per image")] = 100_000,
            n0: Annotated[int, typer.Option("--n0", help="selection samples per image")] = 100,
            alpha: Annotated[float, typer.Option(help="failure probability of each certificate")] = 0.001,
            images: Annotated[int, typer.Option("--images", help="images to certify")] = 100,
            radii: Annotated[Optional[str], typer.Option(help="radii of the curve, e.g. 0,0.25,0.5,0.75,1")] = None,
            batch_size: Annotated[Optional[int], typer.Option(
                "--batch-size", help="noisy images per forward pass (default: chosen by device "
                                     "(trustvision.batching.forward_batch))")] = None,
            seed: SeedOpt = 0,
            fail_under: Annotated[Optional[list[str]], typer.Option(
                "--fail-under", help="METRIC=VALUE gate, e.g. certified_accuracy@0.5=0.6")] = None,
            no_resume: NoResumeOpt = False, max_pixels: MaxPixelsOpt = MAX_PIXELS, skip_bad_images: SkipBadOpt = False,
            output: OutputArgs = OutputArgs()) -> None:
    """Certify the Gaussian-smoothed model: certified accuracy vs L2 radius, abstentions, per-image radius."""
    from ... import AuditConfig
    from ...evaluation.sections.certify import CertifyConfig
    if images < 1:
        raise TrustVisionError(f"--images must be >= 1, got {images}")
    cert = CertifyConfig(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, max_images=None,
                         radii=parse_numbers(radii, "--radii"), seed=seed)
    classifier = model.load()
    ds = DataArgs(data, max_pixels=max_pixels, skip_bad=skip_bad_images).load(classifier)   # sampled by the audit
    cfg = AuditConfig(sections=["clean", "certify"], n_images=images, batch_size=min(batch_size or 256, 256), seed=seed,
                      certify=cert, gates=list(fail_under or []), resume=not no_resume)
    cfg.check_gates()
    code = run_audit(classifier, ds, cfg, out, data, output=output)
    note(output, f"certified accuracy curve and per-image radii: {out}")
    raise typer.Exit(code)
