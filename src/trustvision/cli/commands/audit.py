"""``trustvision audit``: audit a model on a dataset (clean accuracy, robustness curves, soundness flags, report).

The configuration is built once from ``--config audit.toml`` (optional) and the options, which override
the file only when given: :meth:`AuditConfig.from_toml` and :func:`dataclasses.replace` (never mutated
afterwards).  It is built and validated before the model and the data are loaded.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ...errors import TrustVisionError
from ...parsing import parse_numbers
from ..console import run_audit
from ..options import (MAX_PIXELS, DataArgs, DataOpt, FailUnderOpt, MaxPixelsOpt, MaybeBatchOpt, MaybeSeedOpt, ModelArgs,
                       NoResumeOpt, OutOpt, OutputArgs, SkipBadOpt)

if TYPE_CHECKING:
    from ...auditor import AuditConfig


def audit(model: ModelArgs, data: DataOpt, out: OutOpt = Path("trustvision-out"),
          config: Annotated[Optional[Path], typer.Option(help="audit.toml")] = None,
          batch_size: MaybeBatchOpt = None,
          n: Annotated[Optional[int], typer.Option("--n", "--n-images", help="images to audit (default: the config's, else 500; "
                                                   "under torchrun write --n-images: torchrun reads --n as its own)")]
          = None,
          seed: MaybeSeedOpt = None,
          attacks: Annotated[Optional[str], typer.Option(help="comma list: fgsm,pgd,pgd-l2,cw,deepfool,...")] = None,
          eps_linf: Annotated[Optional[str], typer.Option(help="L-inf budgets, e.g. 0,2/255,4/255,8/255")] = None,
          eps_l2: Annotated[Optional[str], typer.Option(help="L2 budgets, e.g. 0,0.25,0.5,1")] = None,
          defense: Annotated[Optional[str], typer.Option(
              help="audit the model behind an input transformation: jpeg:75 | bitdepth:3 | median:3 | "
                   "resize-pad:0.8 (adaptive BPDA/EOT evaluation is automatic)")] = None,
          eot: Annotated[Optional[str], typer.Option(
              help="also judge the gradient attacks under physical transforms, re-run with EOT: e.g. "
                   "rotate:15,scale:0.9-1.1,translate:0.1,brightness:0.2,contrast:0.2,blur:1.5,noise:0.03,jpeg:60-90")]
          = None,
          eot_samples: Annotated[Optional[int], typer.Option(help="transform draws per EOT forward pass (16)")] = None,
          fail_under: FailUnderOpt = None, no_resume: NoResumeOpt = False,
          max_pixels: MaxPixelsOpt = MAX_PIXELS,
          verify: Annotated[bool, typer.Option("--verify", help="after a resumed audit, re-run a random tenth of the "
                                               "per-image results; exit 1 if they differ (docs/resume.md)")] = False,
          eps_l0: Annotated[Optional[str], typer.Option(help="L0 budgets in pixels (attack 'pixel'), e.g. 0,1,3")]
          = None,
          skip_bad_images: SkipBadOpt = False, output: OutputArgs = OutputArgs(),
          ) -> None:
    """Audit your model on your data: clean accuracy, robustness curves, soundness flags, report.

    Exit codes: 0 passed; 1 a --fail-under gate failed or a soundness flag at or above --fail-on (default:
    error) was raised; 2 bad input (one line naming it).  Under torchrun (docs/distributed.md) every rank runs
    this command, the batches are split across the ranks, rank 0 writes and prints; every rank exits alike."""
    cfg = audit_config(config, batch_size=batch_size, n=n, seed=seed, resume=not no_resume, gates=fail_under,
                       attacks=attacks, eps_linf=eps_linf, eps_l2=eps_l2, verify=0.1 if verify else None,
                       eot=eot, eot_samples=eot_samples, eps_l0=eps_l0, fail_on=output.fail_on)
    from ...scale import init, shutdown
    dist = init(model.device)                 # torchrun: join the process group (cuda -> cuda:LOCAL_RANK)
    try:
        if dist.active:
            model = replace(model, device=str(dist.device))
        classifier = _together(dist, lambda: _model(model, defense))   # a rank that fails fails every rank
        dataset = _together(dist, lambda: DataArgs(data, n=cfg.n_images, seed=cfg.seed, max_pixels=max_pixels,
                                                   skip_bad=skip_bad_images).load(classifier))
        code = run_audit(classifier, dataset, cfg, out, data, trust_code=model.trust_code, output=output)
    finally:
        shutdown()
    raise typer.Exit(code)


def _together(dist, load):
    """``load()``'s value; its TrustVisionError raised on every rank (exit 2, no hang).  The model and the data
    are agreed on one after the other: decoding the data is itself collective under torchrun, so a rank whose
    model failed must not enter it while the others do."""
    value, error = None, None
    try:
        value = load()
    except TrustVisionError as e:
        error = e
    dist.raise_together(error)
    return value


def _model(model: ModelArgs, defense: str | None):
    """The classifier, behind ``--defense`` if given.  The data is then fitted to it and sampled at load time
    (a folder decodes only the sampled files; the audit's own sampling is then a no-op)."""
    classifier = model.load()
    if defense:
        from ...defenses.transforms import defend
        classifier = defend(classifier, defense)
    return classifier


def audit_config(toml: Path | None, *, batch_size: int | None, n: int | None, seed: int | None, resume: bool,
                 gates: list[str] | None, attacks: str | None, eps_linf: str | None,
                 eps_l2: str | None, verify: float | None = None, eot: str | None = None,
                 eot_samples: int | None = None, eps_l0: str | None = None,
                 fail_on: str | None = None) -> "AuditConfig":
    """The audit's configuration: ``toml`` (or the defaults) overridden by the options that were given.

    An option overrides the file only when given (not None): ``--batch-size``, ``--n``, ``--seed`` (also the
    robustness section's), ``--fail-under``, ``--attacks``, the budgets; ``resume=False`` (``--no-resume``)
    overrides the file's ``resume``; ``--fail-on``.  Errors in the file are one line naming the file and the key.
    Gates are checked against the metrics this audit will produce, budgets against their ranges, before any
    model is loaded.
    """
    from ... import AuditConfig
    for flag, value in (("--batch-size", batch_size), ("--n", n)):
        if value is not None and value < 1:
            raise TrustVisionError(f"{flag} must be >= 1, got {value}")
    top = {"batch_size": batch_size, "seed": seed, "resume": None if resume else False, "n_images": n,
           "gates": list(gates) if gates else None}
    top["verify"] = verify                               # --verify: 0.1 (AuditConfig.verify), None: the file's
    top["fail_on"] = fail_on
    if toml:
        try:
            cfg = AuditConfig.from_toml(toml, **top)
        except TrustVisionError as e:           # name the file once, whichever check failed
            raise TrustVisionError(str(e) if str(e).startswith(f"{toml}:") else f"{toml}: {e}") from None
    else:
        cfg = AuditConfig(**{k: v for k, v in top.items() if v is not None})
    rob: dict = {} if seed is None else {"seed": seed}
    if attacks:
        rob["attacks"] = [a.strip() for a in attacks.split(",") if a.strip()]
    for key, text in (("eps_linf", eps_linf), ("eps_l2", eps_l2), ("eps_l0", eps_l0)):
        budgets = parse_numbers(text, f"--{key.replace('_', '-')}")
        if budgets:
            rob[key] = budgets
    if eot is not None:                                  # --eot SPEC, --eot-samples K (docs/physical.md)
        rob["eot"] = eot
    if eot_samples is not None:
        if eot_samples < 1:
            raise TrustVisionError(f"--eot-samples must be >= 1, got {eot_samples}")
        rob["eot_samples"] = eot_samples
    cfg = replace(cfg, robustness=replace(cfg.robustness, **rob))
    cfg.check_gates()                                    # a bad --fail-under fails now, not after the compute
    return cfg
