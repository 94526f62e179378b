"""``trustvision uap``: a universal adversarial perturbation from non-domain images, vs random controls.

Runs the ``clean`` and ``uap`` audit sections on images (N, C, H, W) in [0, 1] and writes ``uap.npy``,
``uap.png``, the figures, ``results.json`` and ``report.html`` into ``--out``.  See ``docs/universal.md``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from ...errors import TrustVisionError
from ...parsing import parse_numbers
from ..console import note, run_audit
from ..options import MAX_PIXELS, BatchOpt, DataArgs, MaxPixelsOpt, ModelArgs, OutOpt, OutputArgs, SeedOpt, SkipBadOpt


def uap(model: ModelArgs,
        eval: Annotated[str, typer.Option("--eval", help="evaluation data: class folder | file.npz | mnist | digits")],
        source: Annotated[str, typer.Option(help="images that build the UAP: natural | folder | file.npz | mnist")] = "natural",
        out: OutOpt = Path("trustvision-uap"),
        zeta: Annotated[Optional[float], typer.Option(help="budget as ||v|| / mean ||x|| of the eval images")] = 0.04,
        eps: Annotated[Optional[float], typer.Option(help="absolute budget (overrides --zeta)")] = None,
        norm: Annotated[str, typer.Option(help="l2 | linf")] = "l2",
        target: Annotated[Optional[int], typer.Option(help="target class (targeted UAP)")] = None,
        method: Annotated[str, typer.Option(help="fgsm | deepfool | sgd")] = "fgsm",
        max_passes: Annotated[int, typer.Option("--max-passes", help="passes over the source images")] = 10,
        n_source: Annotated[int, typer.Option("--n-source", help="source images")] = 1000,
        n: Annotated[int, typer.Option("--n", "--n-images", help="evaluation images (under torchrun write "
                                                    "--n-images: torchrun reads --n as its own)")] = 1000,
        sweep: Annotated[str, typer.Option(help="zeta values of the sweep figure")] = "0.01,0.02,0.04,0.08,0.16",
        also: Annotated[Optional[list[str]], typer.Option("--also", help="other model for the transfer matrix: "
                                                          "SPEC or ARCH@WEIGHTS (repeatable; a module.py:factory "
                                                          "spec runs that file: needs --trust-code)")] = None,
        batch_size: BatchOpt = 128, seed: SeedOpt = 0,
        no_resume: Annotated[bool, typer.Option("--no-resume", help="recompute finished sections/passes")] = False,
        max_pixels: MaxPixelsOpt = MAX_PIXELS, skip_bad_images: SkipBadOpt = False,
        output: OutputArgs = OutputArgs(),
        preset: Annotated[Optional[str], typer.Option(help="authors' settings: hirano2020 (ART's fixed L∞ FGSM "
                                                      "step, delta 1e-6; see docs/universal.md)")] = None) -> None:
    """Build a UAP from --source images, evaluate it on --eval against two random controls of the same norm
    (pixel-permuted, uniform random), ζ sweep, transfer to --also models; results.json + report.html.

    Under torchrun (docs/distributed.md) every rank runs this command: each computes the steps of its share of
    every mini-batch, the updates are all-reduced (every rank holds the same UAP), rank 0 writes and prints."""
    from ... import AuditConfig
    from ...evaluation.sections.uap import UAPConfig
    from ...models.architectures import require_code_trust
    for spec in also or []:                 # refused before any work, like --model
        require_code_trust(spec, model.trust_code, where="--also: ")
    cfg_uap = UAPConfig(source=source, n_source=n_source, method=method, norm=norm, zeta=zeta, eps=eps,
                        target=target, max_passes=max_passes, sweep=parse_numbers(sweep, "--sweep") or [],
                        transfer=list(also or []), seed=seed, **uap_preset_options(preset, method))
    cfg = AuditConfig(sections=["clean", "uap"], n_images=None, batch_size=batch_size, seed=seed, uap=cfg_uap,
                      resume=not no_resume)
    from ...scale import init, shutdown
    d = init(model.device)             # torchrun: join the process group (cuda -> cuda:LOCAL_RANK)
    try:
        if d.active:
            model = replace(model, device=str(d.device))
        loaded, error = None, None
        try:                                       # a rank that cannot load fails every rank (no hang), exit 2
            classifier = model.load()
            loaded = classifier, DataArgs(eval, n=n, seed=seed, max_pixels=max_pixels,
                                          skip_bad=skip_bad_images).load(classifier)
        except TrustVisionError as e:
            error = e
        d.raise_together(error)
        code = run_audit(*loaded, cfg, out, eval, trust_code=model.trust_code, output=output)
    finally:
        shutdown()
    if d.main:
        note(output, f"UAP: {out / 'uap.npy'} (amplified: {out / 'uap.png'})")
    raise typer.Exit(code)


def uap_preset_options(preset: str | None, method: str) -> dict:
    """The UAPConfig fields a ``--preset`` fixes (step rule, step, stop rate); one-line errors for a bad name."""
    if preset is None:
        return {}
    from ...attacks.universal import UAP_PRESETS
    if preset not in UAP_PRESETS:
        raise TrustVisionError(f"--preset {preset!r}: unknown; choose from {', '.join(UAP_PRESETS)}")
    p = UAP_PRESETS[preset]
    if method != p["method"]:
        raise TrustVisionError(f"--preset {preset} uses --method {p['method']}, not {method}")
    return {k: p[k] for k in ("step_rule", "step", "stop_rate")}

