"""Raw Zero-Shot over several seeds: every DBM / AM reading side by side, mean ± sd over seeds, and the
correlation with attack success per seed and pooled, with Fisher-z 95 % confidence intervals.

Kotyan, Matsuki & Vargas, PLOS ONE 2022 (e0266060).  Each seed changes the train/test split, the model
initialisations and the attack's random draws; the models of one seed are the N + 1 models per
architecture of :func:`trustvision.evaluation.sections.zeroshot.run_zeroshot` (cached under ``--out``).

The run documented in docs/zeroshot.md (CPU, one thread)::

    OMP_NUM_THREADS=1 python examples/zeroshot_seeds.py --archs lenet,allconv,densenet,capsnet,mobilenet,vgg19 \\
        --classes 0,1,2,3,4 --seeds 0,1,2 --epochs 2 --train-images 1500 --attack-images 25 --out zs-seeds

It runs unchanged under ``torchrun --nproc-per-node N examples/zeroshot_seeds.py ...`` (the models of each
seed are shared among the processes; rank 0 prints).  It prints Markdown tables and writes
``OUT/seeds.json``.  Shapes: metrics are per (seed, architecture), averaged over the held-out classes.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from trustvision.data import bundled
from trustvision.evaluation import zeroshot_metrics as zm
from trustvision.evaluation.sections.zeroshot import ZeroShotConfig, run_zeroshot
from trustvision.scale import dist as distributed

READINGS = (*zm.DBM_VARIANTS, *zm.AM_VARIANTS)


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--archs", default="lenet,allconv,densenet,capsnet,mobilenet,vgg19")
    ap.add_argument("--classes", default="0,1,2,3,4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--attack-images", type=int, default=25)
    ap.add_argument("--threshold", default="eps=0.2,pop_size=20,generations=15",
                    help="threshold attack options (ignored when the kotyan2022 preset is asked for)")
    ap.add_argument("--out", default="zs-seeds")
    a = ap.parse_args()
    opts = {k: float(v) if "." in v else int(v) for k, v in (kv.split("=") for kv in a.threshold.split(","))}
    data = bundled.load("mnist")
    t0 = time.time()
    runs = {}
    dist = distributed.init()                   # under torchrun: the models are shared among the processes
    try:
        for seed in _ints(a.seeds):
            cfg = ZeroShotConfig(archs=a.archs.split(","), classes=_ints(a.classes), epochs=a.epochs,
                                 train_images=a.train_images, attack_images=a.attack_images, seed=seed,
                                 attacks={"threshold": opts})
            res = run_zeroshot(data, cfg, Path(a.out) / f"seed{seed}")
            if res is not None:                 # None on torchrun ranks other than 0
                runs[seed] = res["sections"]["zeroshot"]["metrics"]
    finally:
        distributed.shutdown()
    if not dist.main:
        return
    wall = time.time() - t0
    report = summarise(runs, a.archs.split(","))
    report.update(wall_seconds=wall, args=vars(a))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "seeds.json").write_text(json.dumps(report, indent=1, default=float))
    print_markdown(report)
    print(f"\nwall time {wall / 60:.1f} min")


def summarise(runs: dict[int, dict], archs: list[str]) -> dict:
    """Per reading and architecture: mean ± sd over seeds; per reading: correlation per seed and pooled."""
    seeds = sorted(runs)
    table = {m: {x: [runs[s][f"{m}_mean"][x] for s in seeds] for x in archs} for m in (*READINGS, "entropy")}
    success = {x: [runs[s]["attack_success"]["threshold"][x] for s in seeds] for x in archs}
    corr = {}
    for m in READINGS:
        per_seed = [runs[s]["correlation"]["threshold"][m] for s in seeds]
        xs = [v for s in seeds for v in [runs[s][f"{m}_mean"][x] for x in archs]]
        ys = [v for s in seeds for v in [runs[s]["attack_success"]["threshold"][x] for x in archs]]
        corr[m] = {"per_seed_arch_r": [c["per_architecture"]["pearson_r"] for c in per_seed],
                   "per_seed_class_r": [c["per_class"]["pearson_r"] for c in per_seed],
                   "pooled_arch": zm.correlate(xs, ys)}
    best = {m: [runs[s]["best_by_variant"][m]["best"] for s in seeds] for m in READINGS}
    caps = {m: [runs[s]["best_by_variant"][m]["rank"].get("capsnet") for s in seeds] for m in READINGS}
    acc = {x: [runs[s]["clean_accuracy"][x] for s in seeds] for x in archs}
    return {"seeds": seeds, "archs": archs, "table": table, "success": success, "correlation": corr,
            "best": best, "capsnet_rank": caps, "clean_accuracy": acc}


def _ms(v: list) -> str:
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "n/a"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0.0:.3f}"


def print_markdown(r: dict) -> None:
    archs = r["archs"]
    print("| arch | clean acc | " + " | ".join(READINGS) + " | threshold success |")
    print("|---" * (len(READINGS) + 3) + "|")
    for x in archs:
        print(f"| {x} | {_ms(r['clean_accuracy'][x])} | "
              + " | ".join(_ms(r["table"][m][x]) for m in READINGS) + f" | {_ms(r['success'][x])} |")
    print("\n| reading | densest / best per seed | CapsNet rank per seed | per-arch r per seed (mean ± sd) "
          "| per-(arch, class) r per seed | pooled per-arch r [95 % CI], n |")
    print("|---|---|---|---|---|---|")
    for m in READINGS:
        c = r["correlation"][m]
        p = c["pooled_arch"]
        ci = p.get("pearson_ci")
        pooled = "n/a" if p["pearson_r"] is None else (
            f"{p['pearson_r']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}], n = {p['n']}" if ci else f"{p['pearson_r']:.2f}")
        print(f"| {m} | {', '.join(map(str, r['best'][m]))} | {', '.join(map(str, r['capsnet_rank'][m]))} | "
              f"{_ms(c['per_seed_arch_r'])} | {_ms(c['per_seed_class_r'])} | {pooled} |")


if __name__ == "__main__":
    main()
