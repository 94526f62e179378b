"""Raw Zero-Shot on the bundled MNIST (28x28, 5 000 digits): the runs behind docs/zeroshot.md, as presets.

Kotyan, Matsuki & Vargas, PLOS ONE 2022 (e0266060).  Each preset fixes the architectures, classes, epochs,
training images, attacked images and one or more *attack passes*: every pass after the first reuses the
models of ``--out`` (they are stamped and loaded, not retrained) and runs only its attacks, so one preset can
report several attack budgets on the same models.  Per seed, per pass it prints the per-architecture table of
docs/zeroshot.md (clean accuracy, RZS accuracy, DBM, AM, entropy, silhouette, success of each attack) and
writes ``OUT/summary.json``.

Presets:

* ``mnist8`` — "Reproduction on the bundled MNIST": the 8 paper families, 10 classes, 3 epochs, 3 000
  training images, 60 attacked images; pass 1 few-pixel th=10 + threshold eps=0.3 (DE), pass 2 threshold
  eps=0.2.  88 models; 22.7 min on one shared CPU thread (2026-11-23)::

      OMP_NUM_THREADS=1 python examples/zeroshot_mnist.py --preset mnist8 --out zs-mnist

* ``lenet-pixels`` — the few-pixel budgets on LeNet (3 and 5 pixels, DE population 50, 30 generations,
  50 correctly classified test digits, 5 per class), same training as ``mnist8``::

      OMP_NUM_THREADS=1 python examples/zeroshot_mnist.py --preset lenet-pixels --out zs-lenet

* ``large`` — the larger run of issue 17: the 12-network zoo (``ZOO_12``), all 10 classes, all 4 000
  training digits, 5 epochs, 100 attacked images, seeds 0, 1, 2, few-pixel th=10 + threshold eps=0.2 (DE).
  132 models per seed: seed 0 took 49 min on 2 CPU processes (2026-11-30, docs/zeroshot.md "The larger
  run").  ``--estimate`` prints its projected CPU time from a timing of every architecture (a few seconds
  each) without running it.  It runs unchanged on several processes or GPUs (``docs/distributed.md``)::

      OMP_NUM_THREADS=1 python examples/zeroshot_mnist.py --preset large --estimate
      OMP_NUM_THREADS=1 torchrun --nproc-per-node 2 examples/zeroshot_mnist.py --preset large --seeds 0 --out zs-large
      torchrun --nproc-per-node 8 examples/zeroshot_mnist.py --preset large --device cuda --out zs-large

``--zoo`` prints the parameters and multiply-accumulates of each architecture (the zoo table of
docs/zeroshot.md: ``python examples/zeroshot_mnist.py --preset large --zoo``).

Any preset field can be overridden (``--archs``, ``--epochs``, ``--train-images``, ``--attack-images``,
``--seeds``).  Shapes: images (N, 1, 28, 28) in [0, 1]; metrics per architecture are means over the
held-out classes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from trustvision.data import bundled
from trustvision.evaluation.sections.zeroshot import ZeroShotConfig, run_zeroshot
from trustvision.models.zoo.paper import ZOO_12
from trustvision.scale import dist as distributed

PAPER8 = ["lenet", "allconv", "nin", "resnet", "densenet", "wideresnet", "vgg", "capsnet"]
PIXEL10 = {"th": 10, "pop_size": 50, "generations": 30}
PRESETS: dict[str, dict[str, Any]] = {
    "mnist8": {"archs": PAPER8, "epochs": 3, "train_images": 3000, "attack_images": 60, "seeds": [0],
               "passes": [{"pixel": PIXEL10, "threshold": {"eps": 0.3, "pop_size": 30, "generations": 30}},
                          {"threshold": {"eps": 0.2, "pop_size": 30, "generations": 30}}]},
    "lenet-pixels": {"archs": ["lenet"], "epochs": 3, "train_images": 3000, "attack_images": 50, "seeds": [0],
                     "passes": [{"pixel": {"th": 3, "pop_size": 50, "generations": 30}},
                                {"pixel": {"th": 5, "pop_size": 50, "generations": 30}}]},
    "large": {"archs": list(ZOO_12), "epochs": 5, "train_images": 4000, "attack_images": 100, "seeds": [0, 1, 2],
              "passes": [{"pixel": PIXEL10, "threshold": {"eps": 0.2, "pop_size": 30, "generations": 30}}]},
}


def plan(a: argparse.Namespace) -> dict[str, Any]:
    """The preset with the command line's overrides."""
    p = {**PRESETS[a.preset]}
    for key in ("epochs", "train_images", "attack_images"):
        if getattr(a, key) is not None:
            p[key] = getattr(a, key)
    if a.archs:
        p["archs"] = a.archs.split(",")
    if a.seeds:
        p["seeds"] = [int(s) for s in a.seeds.split(",")]
    return p


def row(m: dict, arch: str, attacks: list[str]) -> str:
    """One Markdown row of the per-architecture table (means ± std over held-out classes)."""
    def pm(key: str) -> str:
        mu, sd = m[f"{key}_mean"][arch], m[f"{key}_std"][arch]
        return "n/a" if mu is None else f"{mu:.3f} ± {sd or 0:.3f}"

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f} %"

    cells = [arch, pct(m["clean_accuracy"][arch]), pct(m["rzs_accuracy"][arch]), pm("dbm"), pm("am"),
             f"{m['entropy_mean'][arch]:.2f}", f"{m['silhouette_mean'][arch]:.2f}",
             *[pct(m["attack_success"][x][arch]) for x in attacks]]
    return "| " + " | ".join(cells) + " |"


def run(p: dict[str, Any], out: Path, device: str) -> dict[str, Any]:
    """Every seed and pass of the plan; returns (on rank 0) {seed: [{attacks, metrics, seconds}]} else {}."""
    data = bundled.load("mnist")
    summary: dict[str, Any] = {}
    for seed in p["seeds"]:
        for i, attacks in enumerate(p["passes"]):
            cfg = ZeroShotConfig(archs=p["archs"], epochs=p["epochs"], train_images=p["train_images"],
                                 attack_images=p["attack_images"], attacks=attacks, seed=seed, device=device)
            t0 = time.time()
            res = run_zeroshot(data, cfg, out / f"seed{seed}", data_spec="mnist")
            if res is None:                         # a torchrun rank other than 0
                continue
            m = res["sections"]["zeroshot"]["metrics"]
            summary.setdefault(str(seed), []).append({"attacks": attacks, "metrics": m,
                                                      "seconds": time.time() - t0})
            names = [f"{x} ({', '.join(f'{k}={v}' for k, v in o.items())})" for x, o in attacks.items()]
            print(f"\n### seed {seed}, pass {i + 1}: {time.time() - t0:.0f} s, "
                  f"{m['models_trained_this_run']} models trained\n")
            print("| arch | clean acc | RZS acc | DBM | AM | entropy | silhouette | "
                  + " | ".join(f"{n} success" for n in names) + " |")
            print("|---" * (7 + len(names)) + "|")
            for arch in p["archs"]:
                print(row(m, arch, list(attacks)))
    return summary


def estimate(p: dict[str, Any], device: str) -> None:
    """Projected CPU time of the plan: per architecture, one timed training epoch on 512 digits and one timed
    forward pass of 512 digits (after an untimed warm-up on 64), scaled by the plan's image-epochs and attack
    forward passes (DE: at most population x (generations + 1) per attacked image).  Timed in process CPU
    seconds (``time.process_time``), so other jobs on a shared machine do not inflate it; with one thread
    on an unshared core that is the wall time."""
    from trustvision.models.classifier import Classifier
    from trustvision.models.zoo import small as zoo
    from trustvision.training.trainer import train_classifier
    mnist = bundled.load("mnist")
    data, warm = mnist.sample(512, 0), mnist.sample(64, 1)
    n_cls = 10
    n_train = min(p["train_images"], int(0.8 * len(mnist)))
    image_epochs = p["epochs"] * n_train * n_cls            # the full model + N models without one class each
    forwards = p["attack_images"] * sum(o.get("pop_size", 1) * (o.get("generations", 0) + 1)
                                        for attacks in p["passes"] for o in attacks.values())
    total = 0.0
    print(f"{torch.get_num_threads()} thread(s), device {device}\n")
    print("| arch | CPU s / 1 000 image-epochs | CPU s / 1 000 forwards | training (h) | attacks (h) |")
    print("|---|---|---|---|---|")
    for arch in p["archs"]:
        torch.manual_seed(0)
        m = zoo.ARCHS[arch](num_classes=n_cls, channels=1)
        train_classifier(m, warm, epochs=1, batch_size=64, lr=5e-3, seed=0, device=device)
        t0 = time.process_time()
        train_classifier(m, data, epochs=1, batch_size=64, lr=5e-3, seed=0, device=device)
        t_train = (time.process_time() - t0) / len(data)
        clf = Classifier(m, num_classes=n_cls, channels=1, device=device)
        clf.predict(warm.x)
        t0 = time.process_time()
        clf.predict(data.x, batch_size=512)
        t_fwd = (time.process_time() - t0) / len(data)
        train_h, attack_h = image_epochs * t_train / 3600, forwards * t_fwd / 3600
        total += train_h + attack_h
        print(f"| {arch} | {1000 * t_train:.2f} | {1000 * t_fwd:.3f} | {train_h:.2f} | {attack_h:.2f} |")
    print(f"\nper seed: {len(p['archs']) * (n_cls + 1)} models; per architecture {image_epochs} image-epochs and "
          f"at most {forwards} attack forwards; projected {total:.1f} CPU-hours per seed, "
          f"{total * len(p['seeds']):.1f} for {len(p['seeds'])} seed(s) (divided among torchrun processes)")


def zoo_table(archs: list[str]) -> None:
    """Parameters and multiply-accumulates per 1x28x28 image of each architecture (10 classes): MACs of every
    Conv2d (output elements x in-channels / groups x kernel area) and Linear layer, counted by forward hooks;
    other operations (CapsNet's routing, pooling, normalisation) are not counted."""
    from torch import nn

    from trustvision.models.zoo import small as zoo
    print("| arch | params | MMAC / 28x28 image (conv + linear) |\n|---|---|---|")
    for arch in archs:
        torch.manual_seed(0)
        m = zoo.ARCHS[arch](num_classes=10, channels=1).eval()
        macs = [0]

        def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                macs[0] += out.numel() * k
            elif isinstance(mod, nn.Linear):
                macs[0] += out.numel() * mod.in_features

        handles = [mod.register_forward_hook(hook) for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        with torch.inference_mode():
            m(torch.zeros(1, 1, 28, 28))
        for h in handles:
            h.remove()
        params = sum(p.numel() for p in m.parameters())
        print(f"| {arch} | {params / 1000:.1f} k | {macs[0] / 1e6:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="mnist8")
    ap.add_argument("--archs")
    ap.add_argument("--seeds")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--train-images", type=int)
    ap.add_argument("--attack-images", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--estimate", action="store_true", help="print the projected time; run nothing")
    ap.add_argument("--zoo", action="store_true", help="print parameters and MACs of the preset's architectures")
    ap.add_argument("--out", default="zs-mnist")
    a = ap.parse_args()
    p = plan(a)
    if a.zoo:
        zoo_table(p["archs"])
        return
    if a.estimate:
        estimate(p, a.device)
        return
    dist = distributed.init(a.device)
    try:
        t0 = time.time()
        summary = run(p, Path(a.out), a.device)
    finally:
        distributed.shutdown()
    if dist.main:
        wall = time.time() - t0
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "summary.json").write_text(json.dumps(
            {"preset": a.preset, "plan": p, "processes": dist.world, "wall_seconds": wall, "runs": summary},
            indent=1, default=float))
        print(f"\nwall time {wall / 60:.1f} min on {dist.world} process(es)")


if __name__ == "__main__":
    main()
