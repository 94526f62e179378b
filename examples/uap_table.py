"""The measured tables of docs/universal.md: UAPs vs random controls on the demo MNIST CNN, the ART cross-checks
(the batched rule and ``step_rule="art"``), and the ``hirano2020`` preset.

Same sizes as tests/test_universal.py: the demo MNIST CNN (``mnist_demo_model``), 300 train images to build,
300 test images to evaluate; ζ relative to the mean norm of the evaluation images.  Prints markdown tables.

    OMP_NUM_THREADS=1 python examples/uap_table.py            # about 3 minutes on one CPU core
    python examples/uap_table.py --no-art                     # without the (slower) ART rows
"""
from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from trustvision.attacks.universal import UniversalPerturbation, mean_norm
from trustvision.evaluation.fooling import fooling_rates
from trustvision.evaluation.sections.uap import source_images
from trustvision.models.classifier import Classifier
from trustvision.training import mnist_demo_model


def rates(clf, xe, v, norm, target=None) -> tuple[float, float, float]:
    key = "fooling_rate" if target is None else "targeted_success"
    r = fooling_rates(clf, xe, v, norm=norm, target=target)
    return r["uap"][key], r["permuted"][key], r["random"][key]


def controls_table(clf, xb, xe) -> None:
    src = source_images("natural", n=300, size=(28, 28), channels=1, seed=0)
    rows = [("untargeted, L2 ζ = 0.3, fgsm, 2 passes, in-domain source", xb, dict(method="fgsm", norm="l2", zeta=0.3, max_passes=2, batch_size=32), None),
            ("untargeted, L2 ζ = 0.3, fgsm, 2 passes, natural-photo source", src, dict(method="fgsm", norm="l2", zeta=0.3, max_passes=2, batch_size=32), None),
            ("untargeted, L2 ζ = 0.3, deepfool, 1 pass over 200 images", xb[:200], dict(method="deepfool", norm="l2", zeta=0.3, max_passes=1, batch_size=20), None),
            ("untargeted, L∞ ζ = 0.3, deepfool, 1 pass over 200 images", xb[:200], dict(method="deepfool", norm="linf", zeta=0.3, max_passes=1, batch_size=20), None),
            ("targeted (class 3), L∞ ζ = 0.25, fgsm, 2 passes", xb, dict(method="fgsm", norm="linf", zeta=0.25, max_passes=2, batch_size=32), 3),
            ("targeted (class 3), L∞ ζ = 0.25, sgd, 2 passes", xb, dict(method="sgd", norm="linf", zeta=0.25, max_passes=2, batch_size=32), 3),
            ("untargeted, L2 ζ = 0.3, preset hirano2020 (10 passes, step 0.0015 L∞, batch 64)", xb, dict(norm="l2", zeta=0.3), None)]
    print("| setting | UAP | pixel-permuted | uniform random |\n|---|---:|---:|---:|")
    for label, src_x, kw, tgt in rows:
        gen = UniversalPerturbation.preset("hirano2020", **kw) if "preset" in label else UniversalPerturbation(seed=0, **kw)
        res = gen.generate(clf, src_x, target=tgt, reference=xe)
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in rates(clf, xe, res.v, kw["norm"], tgt)) + " |", flush=True)


def art_uap(clf, xb, eps, step, passes, targeted, seed, l2_step=True):
    """ART's (Targeted)UniversalPerturbation with attacker fgsm: an L2 step (``l2_step``) or only ``eps`` set (L∞)."""
    from art.attacks.evasion import TargetedUniversalPerturbation, UniversalPerturbation as ArtUAP
    from art.estimators.classification import PyTorchClassifier
    est = PyTorchClassifier(clf.module, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                            clip_values=(0.0, 1.0))
    random.seed(seed)                                  # ART shuffles with Python's global `random`
    if targeted:
        params = {"eps": step, "norm": 2, "targeted": True}
        peer = TargetedUniversalPerturbation(est, attacker="fgsm", attacker_params=params, eps=eps, norm=2,
                                             max_iter=passes)
        peer.generate(xb.numpy(), y=np.eye(10, dtype=np.float32)[np.full(len(xb), 3)])
    else:
        params = {"eps": step, "norm": 2} if l2_step else {"eps": step}
        peer = ArtUAP(est, attacker="fgsm", attacker_params=params, delta=1e-6, eps=eps, norm=2, max_iter=passes,
                      verbose=False)
        peer.generate(xb.numpy())
    return torch.from_numpy(np.asarray(peer.noise, dtype=np.float32))


def art_tables(clf, xb, xe) -> None:
    eps = 0.3 * mean_norm(xe, "l2")
    print("\nBatched rule vs ART (attacker fgsm, L2 step 0.5·eps), L2 ζ = 0.3, 300 build images, one pass:\n")
    print("| setting | seed | ours | ART |\n|---|---:|---:|---:|")
    for tgt in (None, 3):
        for seed in (0, 1):
            ours = UniversalPerturbation(method="fgsm", norm="l2", zeta=0.3, max_passes=1, batch_size=10,
                                         seed=seed).generate(clf, xb, target=tgt, reference=xe)
            peer = art_uap(clf, xb, eps, 0.5 * eps, 1, tgt is not None, seed)
            label = "untargeted" if tgt is None else "targeted (class 3)"
            print(f"| {label} | {seed} | {rates(clf, xe, ours.v, 'l2', tgt)[0]:.3f} | "
                  f"{rates(clf, xe, peer, 'l2', tgt)[0]:.3f} |", flush=True)
    print("\n`step_rule=\"art\"` (batch 1, ART's shuffles) vs ART (attacker fgsm with only eps = 0.1, delta 1e-6), "
          "L2 ζ = 0.3, 200 build images, two passes:\n")
    print("| seed | ours | ART |\n|---:|---:|---:|")
    for seed in (0, 1):
        ours = UniversalPerturbation(method="fgsm", norm="l2", eps=eps, step_rule="art", step=0.1, stop_rate=1.0,
                                     max_passes=2, batch_size=1, shuffle="python", seed=seed).generate(clf, xb[:200])
        peer = art_uap(clf, xb[:200], eps, 0.1, 2, False, seed, l2_step=False)
        print(f"| {seed} | {rates(clf, xe, ours.v, 'l2')[0]:.3f} | {rates(clf, xe, peer, 'l2')[0]:.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-art", action="store_true")
    args = ap.parse_args()
    module, train, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1)
    xb, xe = train.x[:300].clone(), test.x[:300].clone()
    controls_table(clf, xb, xe)
    if not args.no_art:
        art_tables(clf, xb, xe)


if __name__ == "__main__":
    main()
