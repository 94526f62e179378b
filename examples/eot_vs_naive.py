"""EOT-PGD vs naive PGD behind a random resize-pad defence, judged under fresh rotations (docs/physical.md).

Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018 (EOT); the defence is
Xie et al.'s random resize-and-pad (ICLR 2018).  For each setting (transform spec, ε, EOT samples k) both attacks
run on the same correctly classified MNIST digits of the demo model; the examples are then judged by the defended
model with a fresh defence seed under 8 fresh draws of the transform.  Printed: accuracy left (naive, EOT), the
paired per-digit gap, its standard error and z.

    OMP_NUM_THREADS=1 python examples/eot_vs_naive.py --n 48     # the ±20° / k / ±30° settings of docs/physical.md
    OMP_NUM_THREADS=1 python examples/eot_vs_naive.py --n 128 --settings rotate:30@0.2@16
"""
from __future__ import annotations

import argparse
import time

import torch

from trustvision.attacks import EOT, PGD, transformed_accuracy
from trustvision.defenses.transforms import DefendedClassifier, RandomResizePad
from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model

SETTINGS = ("rotate:20@0.2@16", "rotate:20@0.2@32", "rotate:30@0.2@16", "rotate:30,scale:0.8-1.2@0.2@16",
            "rotate:20@0.15@16", "rotate:30@0.15@16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="correctly classified digits to attack")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), help="SPEC@EPS@K, e.g. rotate:30@0.2@16")
    args = ap.parse_args()
    torch.set_num_threads(1)
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, name="mnist-smallcnn")
    idx = (clf.predict(test.x).argmax(1).cpu() == test.y).nonzero()[:args.n, 0]
    x, y = test.x[idx], test.y[idx]
    for setting in args.settings:
        spec, eps, k = setting.rsplit("@", 2)
        t0 = time.perf_counter()
        defended = DefendedClassifier(clf, RandomResizePad(0.8, seed=0))
        judge = DefendedClassifier(clf, RandomResizePad(0.8, seed=99))
        pgd = PGD(eps=float(eps), steps=20, seed=0)
        naive = pgd(defended, x, y).x_adv
        eot = pgd(EOT(spec, int(k), seed=1)(defended), x, y).x_adv
        left_naive = transformed_accuracy(judge, spec, naive, y, draws=8, seed=5)
        left_eot = transformed_accuracy(judge, spec, eot, y, draws=8, seed=5)
        gap = left_naive - left_eot
        se = float(gap.std() / len(gap) ** 0.5)
        print(f"{spec:28s} eps={eps} k={k} n={len(x)}: naive {float(left_naive.mean()):.3f} "
              f"eot {float(left_eot.mean()):.3f} gap {float(gap.mean()):.3f} ± {se:.3f} "
              f"z {float(gap.mean()) / max(se, 1e-9):.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
