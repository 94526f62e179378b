"""Success-vs-area and success-vs-strength tables of the ``patch`` section on MNIST (the tables in docs/patch.md).

The cached demo CNN (``mnist_demo_model``, about 97 % test accuracy) and ``--n`` MNIST test images, split
half/half (seeded) into the images that train the patch and the held-out images that judge it; one targeted
(class ``--target``) and one untargeted patch, each trained at ``--area`` and judged at every area of
``--areas`` against a random-noise patch and a natural-photo patch of the same area and the clean baseline.

    python examples/patch_table.py                       # defaults: --n 1000 --steps 300 (a few minutes on CPU)
    python examples/patch_table.py --n 200 --steps 50    # a quick look
"""
from __future__ import annotations

import argparse
import time

import torch

from trustvision.evaluation.sections.patch import PatchConfig, patch_section
from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model


def markdown(table) -> str:
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    return f"**{table.title}**\n\n" + head + "".join(
        "| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |\n" for row in table.rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--area", type=float, default=0.1)
    p.add_argument("--areas", default="0.02,0.05,0.1,0.2,0.3")
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--eot", default=None, help="photometric transforms, e.g. brightness:0.2,blur:1")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, name="mnist-smallcnn")
    data = test.sample(args.n, args.seed)
    logits = clf.predict(data.x).cpu()
    print(f"# patch tables: mnist-smallcnn, {args.n} MNIST test images (half train the patch, half held out), "
          f"{args.steps} Adam steps of 32 images x 4 placements, area {args.area}, eot {args.eot}, "
          f"torch {torch.__version__}\n")
    for target in (args.target, None):
        cfg = PatchConfig(target=target, area=args.area, areas=[float(a) for a in args.areas.split(",")],
                          steps=args.steps, eot=args.eot, seed=args.seed)
        t0 = time.perf_counter()
        sec = patch_section(clf, data, logits, cfg)
        m = sec.metrics
        kind = f"targeted (class {target})" if target is not None else "untargeted"
        print(f"## {kind}: success {m['success']:.3f}, "
              f"noise {m['controls']['noise']:.3f}, natural {m['controls']['natural']:.3f}, clean "
              f"{m['clean_baseline']:.3f}; {m['seconds_per_step'] * 1000:.0f} ms/step, "
              f"{time.perf_counter() - t0:.0f} s in all; flags: {[f.code for f in sec.flags] or 'none'}\n")
        for table in sec.tables:
            print(markdown(table))


if __name__ == "__main__":
    main()
