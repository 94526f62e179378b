"""Regenerate the naive-vs-adaptive table of docs/adaptive.md (bundled MNIST, CPU, a few minutes).

    python examples/adaptive_table.py [--n 200]

For the standard demo CNN and a PGD-AT CNN (eps 0.2), each behind no defence, JPEG (q 75), bit depth (3 bits),
median (3x3) and random resize-pad (min scale 0.8): PGD-10 robust accuracy at L∞ eps 0.1 / 0.2 / 0.3, naive
and adaptive (BPDA / EOT with 16 draws, chosen by the probe), and the reported worse-of-both.  Prints markdown.
"""
from __future__ import annotations

import argparse

from trustvision.training import adversarially_trained_mnist
from trustvision.defenses.transforms import defend
from trustvision.evaluation.sections.robustness import RobustnessConfig, robustness_section
from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model

EPS = [0.1, 0.2, 0.3]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()
    standard, _, test, _, _ = mnist_demo_model()
    robust = adversarially_trained_mnist()[0]
    data = test.subset(range(args.n))
    print("| model | defence | clean | technique | naive ε=0.1 / 0.2 / 0.3 | adaptive ε=0.1 / 0.2 / 0.3 | "
          "reported (worse of both) |\n|---|---|---|---|---|---|---|")
    for name, module in (("standard", standard), ("PGD-AT ε=0.2", robust)):
        clf = Classifier(module, num_classes=10, channels=1, name=name)
        for spec in (None, "jpeg:75", "bitdepth:3", "median:3", "resize-pad:0.8"):
            d = defend(clf, spec) if spec else clf
            cfg = RobustnessConfig(attacks=["pgd"], eps_linf=EPS, eps_l2=[], checks=False)
            sec = robustness_section(d, data, d.predict(data.x).cpu(), cfg)
            ad, final = sec.metrics["adaptive"], sec.metrics["robust_accuracy"]["linf"]["pgd"]
            fmt = lambda c: " / ".join(f"{c[str(e)]:.2f}" for e in EPS)  # noqa: E731
            tech = " + ".join(ad.get("techniques", [])) or "none needed"
            naive = fmt(ad["naive_robust_accuracy"]["pgd"]) if ad.get("naive_robust_accuracy") else fmt(final)
            adapt = fmt(ad["adaptive_robust_accuracy"]["pgd"]) if ad.get("adaptive_robust_accuracy") else "-"
            print(f"| {name} | {spec or 'none'} | {final['0.0']:.2f} | {tech} | {naive} | {adapt} | {fmt(final)} |",
                  flush=True)


if __name__ == "__main__":
    main()
