"""Threshold attack (Kotyan & Vargas, PLOS ONE 2022): DE vs CMA-ES success against the threshold, DE crossover
variants, and the minimal threshold of the kotyan2022 preset — the tables of docs/attacks.md.

The demo MNIST CNN (``mnist_demo_model``), the first ``--n`` correctly classified test images, the same
population and generations for every row (reduced from the authors' 400 x 100 so that a 2-core CPU finishes in
minutes).  Prints markdown tables.

    OMP_NUM_THREADS=1 python examples/threshold_table.py                       # 8 images, population 40, 15 generations
    python examples/threshold_table.py --device cuda --n 256 --pop 400 --generations 100   # the authors' budget
"""
from __future__ import annotations

import argparse
import time

import torch

from trustvision.attacks import ThresholdAttack
from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--pop", type=int, default=40)
    ap.add_argument("--generations", type=int, default=15)
    ap.add_argument("--thresholds", default="0.1,0.2,0.3")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, device=torch.device(args.device))
    pred = clf.predict(test.x).argmax(1).cpu()
    idx = (pred == test.y).nonzero()[:args.n, 0]
    x, y = test.x[idx].to(clf.device), test.y[idx].to(clf.device)
    base = {"pop_size": args.pop, "generations": args.generations, "seed": 0}
    print(f"MNIST CNN, {len(x)} images, population {args.pop}, {args.generations} generations, device {args.device}\n")
    print("| L∞ threshold | DE (cr 0.1) | CMA-ES | DE, 8-bit | CMA-ES, 8-bit |\n|---:|---:|---:|---:|---:|")
    for eps in [float(t) for t in args.thresholds.split(",")]:
        row = []
        for kw in ({"optimizer": "de"}, {"optimizer": "cmaes"}, {"optimizer": "de", "quantize": True},
                   {"optimizer": "cmaes", "quantize": True}):
            t0 = time.perf_counter()
            r = ThresholdAttack(eps=eps, **kw, **base)(clf, x, y)
            row.append(f"{float(r.success.float().mean()):.3f} ({time.perf_counter() - t0:.0f} s)")
        print(f"| {eps:g} | " + " | ".join(row) + " |", flush=True)
    mid = sorted(float(t) for t in args.thresholds.split(","))[len(args.thresholds.split(",")) // 2]
    print(f"\nDE variants at L∞ {mid:g}:\n\n| DE variant | success |\n|---|---:|")
    for label, kw in (("rand1, no crossover (cr 1.0)", {"cr": 1.0}), ("rand1, cr 0.1 (default)", {}),
                      ("best1, cr 0.1", {"strategy": "best1"})):
        r = ThresholdAttack(eps=mid, optimizer="de", **kw, **base)(clf, x, y)
        print(f"| {label} | {float(r.success.float().mean()):.3f} |", flush=True)
    t0 = time.perf_counter()
    r = ThresholdAttack.kotyan2022(pop_size=args.pop, generations=args.generations)(clf, x, y)
    th = r.extras["threshold"].cpu()
    ok = torch.isfinite(th)
    med = f"{float(th[ok].median()):.0f}/255" if bool(ok.any()) else "–"
    print(f"\nkotyan2022 (CMA-ES, minimal 1..127/255, 8-bit; population {args.pop}, {args.generations} generations): "
          f"fooled {int(ok.sum())}/{len(th)} within 127/255, median minimal threshold {med}, "
          f"thresholds {[int(v) if v != float('inf') else None for v in th.tolist()]}, "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
