"""The tables of docs/physical.md: EOT vs plain PGD under random rotations, and common corruptions on the demo CNN.

1. **EOT keeps fooling under rotation** (Athalye et al., ICML 2018): on the first ``--n`` correctly classified test
   digits of the bundled MNIST split, L∞ PGD (20 steps) made (a) digitally and (b) through ``EOT("rotate:15", 16)``;
   every adversarial digit is judged under 16 freshly drawn rotations in ±15° (another seed than the attack's):
   accuracy left (lower = the attack survives the rotation better) and the share of rotations still fooled.
2. **Common corruptions** (Hendrycks & Dietterich, ICLR 2019): accuracy of the demo CNN on ``--corrupt-n`` test
   digits under the 11 families × 5 severities (pixel-sized parameters scaled by 28/224), mean corruption accuracy.

Run (CPU, about 3 minutes on one thread)::

    OMP_NUM_THREADS=1 python examples/physical_table.py --n 200 --corrupt-n 500
"""
from __future__ import annotations

import argparse

import torch

from trustvision.attacks import EOT, PGD, transformed_accuracy
from trustvision.evaluation.sections.corruptions import CorruptionsConfig, corruption_accuracy
from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model


def eot_table(clf: Classifier, x, y, spec: str = "rotate:15") -> list[str]:
    rows = ["| L∞ eps | digital accuracy, plain PGD | under rotation: plain PGD | under rotation: EOT-PGD |",
            "|---:|---:|---:|---:|"]
    base = float(transformed_accuracy(clf, spec, x, y, draws=16, seed=12345).mean())
    rows.append(f"| 0 (clean) | 100.0% | {base:.1%} | {base:.1%} |")
    for eps in (0.1, 0.2, 0.3):
        plain = PGD(eps=eps, steps=20, seed=0)(clf, x, y).x_adv
        eot = PGD(eps=eps, steps=20, seed=0)(EOT(spec, 16, seed=1)(clf), x, y).x_adv
        digital = float((clf.predict(plain).argmax(1).cpu() == y).float().mean())
        a_plain = float(transformed_accuracy(clf, spec, plain, y, draws=16, seed=12345).mean())
        a_eot = float(transformed_accuracy(clf, spec, eot, y, draws=16, seed=12345).mean())
        rows.append(f"| {eps:g} | {digital:.1%} | {a_plain:.1%} | {a_eot:.1%} |")
        print(rows[-1], flush=True)
    return rows


def corruption_table(clf: Classifier, x, y) -> list[str]:
    cfg = CorruptionsConfig()
    acc, _ = corruption_accuracy(clf, x, y, cfg)
    rows = ["| corruption | " + " | ".join(f"s{s}" for s in cfg.severities) + " | mean |",
            "|---|" + "---:|" * (len(cfg.severities) + 1)]
    for i, name in enumerate(cfg.corruptions):
        rows.append(f"| {name} | " + " | ".join(f"{a:.1%}" for a in acc[i].tolist()) + f" | {float(acc[i].mean()):.1%} |")
    rows.append(f"| **mean corruption accuracy** | | | | | | **{float(acc.mean()):.1%}** |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--corrupt-n", type=int, default=500)
    a = ap.parse_args()
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, name="mnist-smallcnn")
    pred = clf.predict(test.x).argmax(1).cpu()
    idx = (pred == test.y).nonzero()[:a.n, 0]
    print(f"EOT vs plain PGD on {len(idx)} correctly classified digits, judged under 16 fresh rotations in ±15°")
    print("\n".join(eot_table(clf, test.x[idx], test.y[idx])))
    xs, ys = test.x[:a.corrupt_n], test.y[:a.corrupt_n]
    clean = float((pred[:a.corrupt_n] == ys).float().mean())
    print(f"\nCommon corruptions on the first {len(xs)} test digits (clean accuracy {clean:.1%})")
    print("\n".join(corruption_table(clf, xs, ys)))


if __name__ == "__main__":
    main()
