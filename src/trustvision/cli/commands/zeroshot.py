"""``trustvision zeroshot``: Raw Zero-Shot feature transferability and its link to attacks.

Kotyan, Matsuki & Vargas, PLOS ONE 2022 (e0266060).  Trains, per architecture of the zoo, one full and N
held-out classifiers on images (N, C, H, W) in [0, 1], writes them to ``OUT/models/`` (a re-run
resumes), then ``results.json``, ``report.html`` and the figures into ``--out``.  See ``docs/zeroshot.md``.
Runs unchanged under ``torchrun --nproc-per-node N -m trustvision zeroshot ...``: the models are shared among
the ranks and rank 0 writes the results (``docs/distributed.md``, "Raw Zero-Shot").
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ...errors import TrustVisionError
from ...parsing import parse_number
from ..console import console, progress_bars
from ..options import MAX_PIXELS, DataOpt, DeviceOpt, MaxPixelsOpt, OutOpt, SeedOpt

if TYPE_CHECKING:
    from ...evaluation.sections.zeroshot import ZeroShotConfig


def _value(text: str) -> Any:
    """``3`` -> int, ``0.1`` / ``8/255`` -> float, ``true``/``false`` -> bool, anything else stays a string."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return parse_number(t)
    except (ValueError, ZeroDivisionError):
        return t


def parse_attack(spec: str) -> tuple[str, dict[str, Any]]:
    """``"pixel:th=3,pop_size=50"`` -> ``("pixel", {"th": 3, "pop_size": 50})``."""
    name, _, rest = spec.partition(":")
    if not name.strip():
        raise TrustVisionError(f"--attack {spec!r}: expected NAME or NAME:key=value,key=value")
    opts: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise TrustVisionError(f"--attack {spec!r}: option {item!r} is not key=value")
        opts[key.strip()] = _value(val)
    return name.strip().lower(), opts


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise TrustVisionError(f"{what}: expected comma-separated integers, got {text!r}") from None


def zeroshot(data: DataOpt, out: OutOpt = Path("trustvision-zeroshot"),
             archs: Annotated[str, typer.Option(help="zoo architectures, comma-separated")] =
             "lenet,allconv,nin,resnet,densenet,wideresnet,vgg,capsnet",
             classes: Annotated[str | None, typer.Option(help="use only these classes, e.g. 0,1,2")] = None,
             epochs: Annotated[int, typer.Option(help="training epochs of every model")] = 3,
             attack: Annotated[list[str] | None, typer.Option(
                 "--attack", help="NAME[:key=value,...] attack on each full model (repeatable); default "
                                  "pixel:th=10,pop_size=50,generations=30 and the threshold attack of the "
                                  "kotyan2022 preset (CMA-ES, minimal threshold, 8-bit)")] = None,
             attack_images: Annotated[int, typer.Option("--attack-images", help="test images attacked per "
                                                        "architecture (stratified by class)")] = 100,
             train_images: Annotated[int | None, typer.Option("--train-images", help="cap on training "
                                                                 "images (seeded sample)")] = None,
             heldout_images: Annotated[int | None, typer.Option("--heldout-images", help="cap on test "
                                                                   "images per held-out class")] = None,
             batch_size: Annotated[int, typer.Option("--batch-size", help="training batch size")] = 64,
             lr: Annotated[float, typer.Option(help="Adam learning rate (one-cycle peak)")] = 5e-3,
             device: DeviceOpt = "cpu", seed: SeedOpt = 0,
             no_resume: Annotated[bool, typer.Option("--no-resume", help="ignore models and attack results "
                                                     "already in --out")] = False,
             max_pixels: MaxPixelsOpt = MAX_PIXELS) -> None:
    """Raw Zero-Shot (Kotyan et al. 2022): train N held-out + 1 full model per architecture, score the held-out
    soft-label clusters (DBM, AM, entropy, silhouette), attack the full models, correlate; results.json + report.html."""
    from ...data import load_dataset
    from ...evaluation.sections.zeroshot import DEFAULT_ATTACKS, ZeroShotConfig, run_zeroshot
    from ...scale import dist as distributed
    attacks = dict(parse_attack(s) for s in attack) if attack else {k: dict(v) for k, v in DEFAULT_ATTACKS.items()}
    cfg = ZeroShotConfig(archs=[a.strip() for a in archs.split(",") if a.strip()], classes=_ints(classes, "--classes"),
                         epochs=epochs, batch_size=batch_size, lr=lr, train_images=train_images,
                         heldout_images=heldout_images, attacks=attacks, attack_images=attack_images, seed=seed,
                         device=device, resume=not no_resume)
    ds = load_dataset(data, max_pixels=max_pixels)
    dist = distributed.init(device)
    try:
        with progress_bars() if dist.main else nullcontext() as progress:
            results = run_zeroshot(ds, cfg, out, data_spec=data, progress=progress)
    finally:
        distributed.shutdown()
    if results is None:             # a torchrun rank other than 0: its models are in --out, rank 0 reports
        return
    _print_results(results, cfg)
    console.print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}", markup=False)


def _print_results(results: dict, cfg: "ZeroShotConfig") -> None:
    """The per-architecture table (mean ± std over held-out classes), the correlations and the flags."""
    from rich.markup import escape
    from rich.table import Table as RichTable
    m = results["sections"]["zeroshot"]["metrics"]
    attacks = cfg.attacks
    t = RichTable(title="Raw Zero-Shot (mean ± std over held-out classes)")
    for col in ("architecture", "clean acc", "DBM", "AM", *[f"{a} success" for a in attacks]):
        t.add_column(escape(col), justify="left" if col == "architecture" else "right")

    def pm(key: str, a: str) -> str:
        mu, sd = m[f"{key}_mean"][a], m[f"{key}_std"][a]
        return "—" if mu is None else f"{mu:.4f} ± {sd or 0:.4f}"

    for a in cfg.archs:
        succ = [m["attack_success"][x][a] for x in attacks]
        t.add_row(escape(a), f"{m['clean_accuracy'][a]:.1%}", pm("dbm", a), pm("am", a),
                  *["—" if s is None else f"{s:.1%}" for s in succ])
    console.print(t)
    console.print(f"densest clusters (lowest DBM): {m['densest_architecture']}; lowest AM: "
                  f"{m['lowest_am_architecture']}", markup=False)
    for x in attacks:
        for met in ("dbm", "am"):
            for level, c in m["correlation"][x][met].items():
                stat = (f"Pearson r={c['pearson_r']:.3f} (p={c['pearson_p']:.3g}), Spearman ρ={c['spearman_rho']:.3f} "
                        f"(p={c['spearman_p']:.3g})") if c["pearson_r"] is not None else c.get("note", "undefined")
                console.print(f"{met.upper()} vs {x} success, {level} (n={c['n']}): {stat}", markup=False,
                              highlight=False)
    for f in results["sections"]["zeroshot"]["flags"]:
        console.print(f"[yellow]{escape(f['severity'])}[/yellow] {escape(f['code'])}: {escape(f['message'])}",
                      highlight=False)
