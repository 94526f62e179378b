"""``trustvision patch``: a printable universal adversarial patch (Brown et al. 2017), judged on held-out images.

Runs the ``clean`` and ``patch`` audit sections on images (N, C, H, W) in [0, 1]: half of them (seeded)
train the patch with EOT over location, rotation, scale (and ``--eot`` photometric transforms), the other
half judge it against a random-noise and a natural-photo patch of the same area.  Writes ``patch.png`` (at
``--print-size`` and ``--dpi``), ``patch.npy``, the figures, ``results.json`` and ``report.html`` into
``--out``.  See ``docs/patch.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ...parsing import parse_numbers
from ..console import note, run_audit
from ..options import (MAX_PIXELS, BatchOpt, DataArgs, DataOpt, MaxPixelsOpt, ModelArgs, OutOpt, OutputArgs, SeedOpt,
                       SkipBadOpt)

_Float = Annotated[float, typer.Option()]


def patch(model: ModelArgs, data: DataOpt,
          target: Annotated[Optional[int], typer.Option(help="target class (omit for an untargeted patch)")] = None,
          area: Annotated[float, typer.Option(help="share of the image the patch covers, in (0, 1)")] = 0.05,
          areas: Annotated[str, typer.Option(help="areas of the success-vs-area curve")] = "0.02,0.05,0.1,0.2",
          shape: Annotated[str, typer.Option(help="square | circle")] = "square",
          rotation: Annotated[float, typer.Option(help="placements rotated by ±ROTATION degrees")] = 22.5,
          scale: Annotated[str, typer.Option(help="patch side multiplier range LOW-HIGH")] = "0.9-1.1",
          eot: Annotated[Optional[str], typer.Option(help="photometric transforms of the patched image, e.g. "
                                                    "brightness:0.2,contrast:0.2,blur:1,noise:0.03,jpeg:60-90")] = None,
          strengths: Annotated[str, typer.Option(help="multipliers of rotation and scale jitter (curve)")]
          = "0,0.5,1,2,4",
          steps: Annotated[int, typer.Option(help="Adam steps")] = 300,
          train_batch: Annotated[int, typer.Option("--train-batch", help="images per step")] = 32,
          draws: Annotated[int, typer.Option(help="placements per image per step")] = 4,
          lr: Annotated[float, typer.Option(help="Adam learning rate (pixels in [0, 1])")] = 0.05,
          tv: Annotated[float, typer.Option(help="total-variation penalty weight")] = 0.0,
          nps: Annotated[float, typer.Option(help="non-printability penalty weight (Sharif et al. 2016)")] = 0.0,
          palette: Annotated[Optional[Path], typer.Option(help="printable colours: one R G B per line "
                                                          "(0-255 or 0-1); default: a 27-colour grid")] = None,
          print_size: Annotated[str, typer.Option("--print-size", help="printed side: 5cm | 50mm | 2in | 600px")]
          = "5cm",
          dpi: Annotated[float, typer.Option(help="print resolution of patch.png")] = 300.0,
          n: Annotated[int, typer.Option("--n", help="images (split into training and held-out)")] = 1000,
          train_fraction: Annotated[float, typer.Option("--train-fraction", help="share that trains the patch")]
          = 0.5,
          out: OutOpt = Path("trustvision-patch"), batch_size: BatchOpt = 128, seed: SeedOpt = 0,
          no_resume: Annotated[bool, typer.Option("--no-resume", help="recompute finished sections")] = False,
          max_pixels: MaxPixelsOpt = MAX_PIXELS, skip_bad_images: SkipBadOpt = False,
          output: OutputArgs = OutputArgs()) -> None:
    """Train a universal adversarial patch on part of --data, judge it on the held-out rest against
    random-noise and natural-photo patches of the same area; patch.png + results.json + report.html."""
    from ... import AuditConfig
    from ...attacks.patch import parse_scale
    from ...attacks.patch_render import check_fits
    from ...evaluation.sections.patch import PatchConfig
    cfg_patch = PatchConfig(target=target, area=area, areas=parse_numbers(areas, "--areas") or [area], shape=shape,
                            rotation=rotation, scale=list(parse_scale(scale, "--scale")), eot=eot,
                            strengths=parse_numbers(strengths, "--strengths") or [1.0], steps=steps,
                            batch_size=train_batch, draws=draws, lr=lr, tv=tv, nps=nps,
                            palette=None if palette is None else str(palette), train_fraction=train_fraction,
                            print_size=print_size, dpi=dpi, seed=seed)      # bad options: one line, before loading
    classifier = model.load()
    ds = DataArgs(data, n=n, seed=seed, max_pixels=max_pixels, skip_bad=skip_bad_images).load(classifier)
    hw = tuple(ds.x.shape[-2:])
    for a in sorted({area, *cfg_patch.areas}):           # a patch larger than the image: refused before any work
        check_fits(a, hw, shape, cfg_patch.scale[1], "--area" if a == area else "--areas")
    if target is not None and not 0 <= target < classifier.num_classes:
        from ...errors import TrustVisionError
        raise TrustVisionError(f"--target must be a class in [0, {classifier.num_classes - 1}], got {target}")
    cfg = AuditConfig(sections=["clean", "patch"], n_images=None, batch_size=batch_size, seed=seed, patch=cfg_patch,
                      resume=not no_resume)
    code = run_audit(classifier, ds, cfg, out, data, output=output)
    note(output, f"patch: {out / 'patch.png'} ({print_size} at {dpi:g} dpi), raw: {out / 'patch.npy'}")
    raise typer.Exit(code)
