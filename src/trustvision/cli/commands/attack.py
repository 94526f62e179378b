"""``trustvision attack NAME``: one attack on a sample, saved as ``.npz`` + PNG grid + JSON summary (printed as JSON).

``NAME`` is a registered attack (``trustvision list attacks``) or a robustness preset (``pgd-l2``,
``trustvision list presets``); ``--preset NAME`` names a preset explicitly (``trustvision attack --preset
kotyan2022`` or ``trustvision attack threshold --preset kotyan2022``: the authors' settings, which the
options below still override).  Budgets take the same syntax as ``audit`` (``--eps 8/255``); every
constructor argument of the attack is reachable with ``--opt KEY=VALUE`` (repeatable, e.g. ``--opt restarts=5``;
values are read by the argument's type, fractions allowed), and the common ones have their own flags:
``--eps``, ``--norm``, ``--steps``, ``--th`` (pixels changed by ``pixel``).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import numpy as np
import torch
import typer

from ...attacks import ATTACKS
from ...errors import TrustVisionError
from ...parsing import parse_number
from ..console import console
from ..options import MAX_PIXELS, BatchOpt, DataArgs, DataOpt, MaxPixelsOpt, ModelArgs, OutOpt, SeedOpt, SkipBadOpt

if TYPE_CHECKING:
    from ...data import Dataset
    from ...models import Classifier

NAME_HELP = (f"attack: {' | '.join(ATTACKS.names())}, or a preset such as pgd-l2 (trustvision list attacks, "
             "trustvision list presets)")


def attack(name: Annotated[Optional[str], typer.Argument(help=NAME_HELP)] = None, *, model: ModelArgs,
           data: DataOpt, out: OutOpt = Path("trustvision-attack"),
           preset: Annotated[Optional[str], typer.Option(help="a named configuration (trustvision list presets), "
                                                         "e.g. kotyan2022 (Kotyan & Vargas' threshold attack); "
                                                         "NAME, if given, must be its attack")] = None,
           eps: Annotated[Optional[str], typer.Option(help="budget, e.g. 8/255 or 0.03 (fgsm, pgd, threshold, "
                                                      "square, apgd, fab, autoattack)")] = None,
           norm: Annotated[Optional[str], typer.Option(help="linf | l2")] = None,
           steps: Annotated[Optional[int], typer.Option(help="iterations")] = None,
           th: Annotated[Optional[int], typer.Option("--th", help="pixels the L0 attack 'pixel' may change")] = None,
           opt: Annotated[Optional[list[str]], typer.Option("--opt", "-O", help="KEY=VALUE constructor argument of "
                                                            "the attack (repeatable), e.g. --opt restarts=5")] = None,
           target: Annotated[Optional[int], typer.Option(help="target class (targeted attack)")] = None,
           batch_size: BatchOpt = 128, n: Annotated[int, typer.Option("--n", help="images to attack")] = 64,
           seed: SeedOpt = 0, max_pixels: MaxPixelsOpt = MAX_PIXELS, skip_bad_images: SkipBadOpt = False) -> None:
    """Run one attack; save adversarial examples (.npz) and a PNG grid (original | adversarial | perturbation);
    print the summary as JSON."""
    name = choose_attack(name, preset)
    cls, fixed = attack_class(name)
    budget = None if eps is None else _number(eps, "--eps")
    given = {"eps": budget, "norm": norm, "steps": steps, "th": th}
    opts = {**fixed, **parse_options(cls, opt or [], name), **{k: v for k, v in given.items() if v is not None}}
    if "seed" in {f.name for f in dataclasses.fields(cls)}:
        opts.setdefault("seed", seed)
    classifier = model.load()
    ds = DataArgs(data, n=n, seed=seed, max_pixels=max_pixels, skip_bad=skip_bad_images).load(classifier)
    summary = run_single_attack(name, opts, classifier, ds, out, target=target, batch_size=batch_size)
    console.print(json.dumps(summary, indent=2, default=str), markup=False, highlight=False, soft_wrap=True)


def choose_attack(name: str | None, preset: str | None) -> str:
    """The attack or preset name to run from ``NAME`` and ``--preset``; one-line errors when they disagree."""
    from ...attacks.presets import PRESETS
    if preset is None:
        if name is None:
            raise TrustVisionError("attack: give an attack NAME or --preset NAME (trustvision list attacks, "
                                   "trustvision list presets)")
        return name
    try:
        chosen = PRESETS.get(preset)
    except TrustVisionError:
        raise TrustVisionError(f"--preset {preset!r}: unknown; choose from {', '.join(PRESETS.names())}") from None
    if name is not None and (attack_class(name)[0] is not chosen.cls or
                             (name.strip().lower() not in ATTACKS and name.strip().lower() != chosen.name)):
        raise TrustVisionError(f"--preset {chosen.name} runs the attack {chosen.attack!r}, not {name!r} "
                               f"(drop NAME or give {chosen.attack})")
    return chosen.name


def attack_class(name: str) -> tuple[type, dict]:
    """The attack class for ``name`` (an attack or a preset) and the preset's fixed arguments."""
    from ...attacks.presets import PRESETS
    if name not in ATTACKS and name in PRESETS:
        preset = PRESETS.get(name)
        return preset.cls, dict(preset.fixed)
    return ATTACKS.get(name), {}


def _number(text: str, what: str) -> float:
    try:
        return parse_number(text.strip())
    except (ValueError, ZeroDivisionError):
        raise TrustVisionError(f"{what}: expected a number (fractions like 8/255 allowed), got {text!r}") from None


def parse_options(cls: type, pairs: list[str], name: str) -> dict[str, Any]:
    """``["th=3", "strategy=rand1"]`` -> ``{"th": 3, "strategy": "rand1"}``, each value read by the type of the
    attack's constructor argument (int, float with fractions, bool, str); one-line errors naming ``--opt``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise TrustVisionError(f"--opt {pair!r}: expected KEY=VALUE with KEY one of {name!r}'s arguments: "
                                   f"{', '.join(fields)}")
        out[key] = _typed(hints.get(key), text.strip(), f"--opt {pair!r}")
    return out


def _typed(hint: Any, text: str, what: str) -> Any:
    """``text`` read as the type ``hint`` names (the first of int / float / bool / str in a union)."""
    kinds = typing.get_args(hint) or (hint,)
    if text.lower() in ("none", "null") and type(None) in kinds:
        return None
    for kind in (bool, int, float, str):
        if kind not in kinds:
            continue
        if kind is bool:
            if text.lower() in ("true", "1", "yes", "false", "0", "no"):
                return text.lower() in ("true", "1", "yes")
            continue
        try:
            return int(text) if kind is int else _number(text, what) if kind is float else text
        except (ValueError, TrustVisionError):
            continue
    if any(k in kinds for k in (int, float, bool)):
        raise TrustVisionError(f"{what}: {text!r} is not a valid value")
    return text


def run_single_attack(name: str, options: dict, classifier: "Classifier", data: "Dataset", out: Path, *,
                      target: int | None = None, batch_size: int = 128) -> dict:
    """Attack every image of ``data`` (N, C, H, W) and write ``OUT/NAME.npz``, ``OUT/NAME.png``, ``OUT/NAME.json``.

    The ``.npz`` holds ``x``, ``x_adv`` (N, C, H, W), ``y``, ``pred_clean``, ``pred_adv``, ``success`` and
    ``norms`` (N,).  Returns the summary dictionary (success rate, clean/robust accuracy, mean norm, queries).
    """
    from ...attacks import make_attack, run_batched
    from ...report import figures
    from ...persist import write_json_atomic
    from ...results import clean_json
    cls, fixed = attack_class(name)                                      # unknown name: a one-line error
    accepted = getattr(cls, "__dataclass_fields__", {})
    opts = {k: v for k, v in {**fixed, **options}.items() if k in accepted or k != "seed"}
    attack = make_attack(next(k for k in ATTACKS.names() if ATTACKS.get(k) is cls), **opts)
    if target is not None and not 0 <= target < classifier.num_classes:
        raise TrustVisionError(f"--target {target}: must lie in [0, {classifier.num_classes - 1}]")
    out.mkdir(parents=True, exist_ok=True)
    targets = None if target is None else torch.full_like(data.y, target)
    res = run_batched(attack, classifier, data.x, data.y, batch_size, target=targets)
    with torch.inference_mode():
        p_clean = classifier.predict(data.x).softmax(1).cpu()
        p_adv = classifier.predict(res.x_adv).softmax(1).cpu()
    pred_clean, pred_adv = p_clean.argmax(1), p_adv.argmax(1)
    np.savez_compressed(out / f"{name}.npz", x=data.x.numpy(), x_adv=res.x_adv.numpy(), y=data.y.numpy(),
                        pred_clean=pred_clean.numpy(), pred_adv=pred_adv.numpy(), success=res.success.numpy(),
                        norms=res.norms.numpy())
    figures.example_grid(data.x, res.x_adv, data.y, pred_clean, pred_adv, p_clean.amax(1), p_adv.amax(1),
                         classifier.labels, out / f"{name}.png")
    correct = pred_clean == data.y
    summary = {"attack": attack.describe(), "target": target, "n": len(data),
               "clean_accuracy": float(correct.float().mean()),
               "robust_accuracy": float((correct & (pred_adv == data.y)).float().mean()),
               "success_rate": float(res.success.float().mean()),
               "mean_norm_successful": float(res.norms[res.success].mean()) if bool(res.success.any()) else None,
               "queries_per_image": float(res.queries.float().mean()),
               "files": [f"{name}.npz", f"{name}.png", f"{name}.json"]}
    summary = clean_json(summary)
    write_json_atomic(out / f"{name}.json", summary)
    return summary
