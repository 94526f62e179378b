"""``trustvision certify``: certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

Registered on :data:`trustvision.cli.app.app` (imported at the end of :mod:`trustvision.cli.app`).  Runs the
``clean`` and ``certify`` audit sections on images (N, C, H, W) in [0, 1] and writes ``results.json``,
``report.html``, ``certify_curve.png`` and ``certify_radii.png`` into ``--out``.  See ``docs/smoothing.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..app import (ArchOpt, ChannelsOpt, ClassesOpt, CLOpt, CompileOpt, DataOpt, DeviceOpt, LabelsOpt, MeanOpt, ModelOpt,
                  OutOpt, PickleOpt, PrecisionOpt, SeedOpt, SizeOpt, StdOpt, WeightsOpt, _load, _run_audit, app,
                  console, user_errors)
from ...errors import TrustVisionError


@app.command()
@user_errors
def certify(model: ModelOpt, data: DataOpt, out: OutOpt = Path("trustvision-certify"),
            sigma: Annotated[float, typer.Option(help="Gaussian noise level (pixel units)")] = 0.25,
            n: Annotated[int, typer.Option("--n", help="estimation samples per image")] = 100_000,
            n0: Annotated[int, typer.Option("--n0", help="selection samples per image")] = 100,
            alpha: Annotated[float, typer.Option(help="failure probability of each certificate")] = 0.001,
            images: Annotated[int, typer.Option("--images", help="images to certify")] = 100,
            radii: Annotated[Optional[str], typer.Option(help="radii of the curve, e.g. 0,0.25,0.5,0.75,1")] = None,
            weights: WeightsOpt = None, arch: ArchOpt = None, num_classes: ClassesOpt = None,
            channels: ChannelsOpt = None, input_size: SizeOpt = None, mean: MeanOpt = None, std: StdOpt = None,
            labels: LabelsOpt = None, trust_pickle: PickleOpt = False, device: DeviceOpt = "cpu",
            precision: PrecisionOpt = "fp32", channels_last: CLOpt = False, compile: CompileOpt = False,
            batch_size: Annotated[int, typer.Option("--batch-size", help="noisy images per forward pass")] = 1000,
            seed: SeedOpt = 0,
            fail_under: Annotated[Optional[list[str]], typer.Option(
                "--fail-under", help="METRIC=VALUE gate, e.g. certified_accuracy@0.5=0.6")] = None,
            no_resume: Annotated[bool, typer.Option("--no-resume", help="recompute finished sections")] = False):
    """Certify the Gaussian-smoothed model: certified accuracy vs L2 radius, abstentions, per-image radius."""
    from ...auditor import AuditConfig
    from ..app import _floats
    from ...data import load_dataset
    from ...evaluation.sections.certify import CertifyConfig
    if images < 1:
        raise TrustVisionError(f"--images must be >= 1, got {images}")
    cert = CertifyConfig(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, max_images=None,
                         radii=_floats(radii, "--radii"), seed=seed)
    clf = _load(model, weights, arch, num_classes, channels, input_size, mean, std, labels, trust_pickle, device,
                precision, channels_last, compile)
    ds = load_dataset(data, size=clf.input_size)
    cfg = AuditConfig(sections=["clean", "certify"], n_images=images, batch_size=min(batch_size, 256), seed=seed,
                      certify=cert, gates=list(fail_under or []), resume=not no_resume)
    code = _run_audit(clf, ds, cfg, out, data)
    console.print(f"certified accuracy curve and per-image radii: {out}")
    raise typer.Exit(code)
