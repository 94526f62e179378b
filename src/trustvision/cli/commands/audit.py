"""``trustvision audit``: audit a model on a dataset (clean accuracy, robustness curves, soundness flags, report).

The configuration is built once from ``--config audit.toml`` (optional) and the options, which override
the file: :meth:`AuditConfig.from_toml` and :func:`dataclasses.replace` (never mutated afterwards).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ...parsing import parse_numbers
from ..console import run_audit
from ..options import BatchOpt, DataArgs, DataOpt, FailUnderOpt, ModelArgs, NoResumeOpt, OutOpt, SeedOpt

if TYPE_CHECKING:
    from ...auditor import AuditConfig


def audit(model: ModelArgs, data: DataOpt, out: OutOpt = Path("trustvision-out"),
          config: Annotated[Optional[Path], typer.Option(help="audit.toml")] = None,
          batch_size: BatchOpt = 128, n: Annotated[Optional[int], typer.Option("--n", help="images to audit")] = None,
          seed: SeedOpt = 0,
          attacks: Annotated[Optional[str], typer.Option(help="comma list: fgsm,pgd,pgd-l2,cw,deepfool,...")] = None,
          eps_linf: Annotated[Optional[str], typer.Option(help="L-inf budgets, e.g. 0,2/255,4/255,8/255")] = None,
          eps_l2: Annotated[Optional[str], typer.Option(help="L2 budgets, e.g. 0,0.25,0.5,1")] = None,
          defense: Annotated[Optional[str], typer.Option(
              help="audit the model behind an input transformation: jpeg:75 | bitdepth:3 | median:3 | "
                   "resize-pad:0.8 (adaptive BPDA/EOT evaluation is automatic)")] = None,
          fail_under: FailUnderOpt = None, no_resume: NoResumeOpt = False) -> None:
    """Audit your model on your data: clean accuracy, robustness curves, soundness flags, report."""
    classifier = model.load()
    if defense:
        from ...defenses.transforms import defend
        classifier = defend(classifier, defense)
    ds = DataArgs(data).load(classifier)      # the audit samples --n of them with --seed
    cfg = audit_config(config, batch_size=batch_size, n=n, seed=seed, resume=not no_resume, gates=fail_under,
                       attacks=attacks, eps_linf=eps_linf, eps_l2=eps_l2)
    raise typer.Exit(run_audit(classifier, ds, cfg, out, data))


def audit_config(toml: Path | None, *, batch_size: int, n: int | None, seed: int, resume: bool,
                 gates: list[str] | None, attacks: str | None, eps_linf: str | None,
                 eps_l2: str | None) -> "AuditConfig":
    """The audit's configuration: ``toml`` (or the defaults) overridden by the options that were given.

    ``--batch-size``, ``--seed`` (also the robustness section's) and ``--no-resume`` always apply;
    ``--n``, ``--fail-under``, ``--attacks`` and the budgets only when given.
    """
    from ... import AuditConfig
    top = {"batch_size": batch_size, "seed": seed, "resume": resume, "n_images": n,
           "gates": list(gates) if gates else None}
    cfg = AuditConfig.from_toml(toml, **top) if toml else AuditConfig(**{k: v for k, v in top.items() if v is not None})
    rob: dict = {"seed": seed}
    if attacks:
        rob["attacks"] = [a.strip() for a in attacks.split(",") if a.strip()]
    for key, text in (("eps_linf", eps_linf), ("eps_l2", eps_l2)):
        budgets = parse_numbers(text, f"--{key.replace('_', '-')}")
        if budgets:
            rob[key] = budgets
    return replace(cfg, robustness=replace(cfg.robustness, **rob))
