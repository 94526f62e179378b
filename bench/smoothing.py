"""Benchmark: randomized-smoothing CERTIFY (Cohen et al. 2019) against a plain per-image loop and the forward floor.

Contenders, on the same model and images, one process, interleaved rounds (best of ``--repeats``):

* **per-image loop** — the structure of the paper's reference code: for each image, ``n0`` then ``n``
  noisy copies in batches of ``--loop-batch`` (1 000, their default), ``x.repeat`` + ``randn_like``,
  argmax, counts gathered on the host with ``np.bincount``, the Clopper-Pearson bound from statsmodels
  (written here independently; run at the paper's batch and at ours);
* **trustvision CERTIFY** — ``Smoothed.certify`` with its default batch
  (``trustvision.batching.forward_batch``: 256 MNIST digits, 64 CIFAR images on a CPU) and with the
  former default 1 000;
* **forward floor** (``bench/floor.py``) — the model's raw forward rate at the same batch under
  ``torch.inference_mode``; "x % of the floor" = noisy images/s over that rate.

``ratio vs loop`` = the loop's seconds / trustvision's (> 1: trustvision is faster).  Images (N, C, H, W)
in [0, 1]; n0 = 100, n = ``--n`` noise samples per image.

    OMP_NUM_THREADS=1 python bench/smoothing.py                           # CPU, one thread, MNIST CNN
    OMP_NUM_THREADS=1 python bench/smoothing.py --models mnist,resnet18 --images 4
    python bench/smoothing.py --device cuda --n 100000 --images 64 --loop-batch 1000 --precision bf16

Writes ``bench/results/smoothing-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch

from common import device_name, load_average, write_results   # bench/common.py
from floor import floor_rates, share                            # bench/floor.py
from trustvision.defenses import Smoothed
from trustvision.models.classifier import Classifier
from trustvision.training import noise_trained_mnist


def build(name: str, device: torch.device, precision: str) -> tuple[Classifier, torch.Tensor]:
    """(classifier, 64 images (64, C, H, W) in [0, 1] on the CPU)."""
    if name == "mnist":
        module, _, test, _, _ = noise_trained_mnist(0.25)
        return Classifier(module, num_classes=10, channels=1, device=device, precision=precision,
                          name="mnist-smallcnn-noise"), test.x[:64]
    import torchvision
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(num_classes=10).eval()         # random weights: timing only
    clf = Classifier(module, num_classes=10, channels=3, device=device, precision=precision, name=f"{name}-random",
                     mean=[0.4914, 0.4822, 0.4465], std=[0.2470, 0.2435, 0.2616])
    return clf, torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def timed(fns: list, device: torch.device, repeats: int) -> list[float]:
    """Best wall time of each ``fn()`` over ``repeats`` interleaved rounds (device synchronised).

    Interleaving puts every contender through the same moments of a shared machine's load.
    """
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def loop_certify(clf: Classifier, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float,
                 batch: int) -> tuple[np.ndarray, np.ndarray]:
    """A plain per-image CERTIFY loop (the reference code's structure): (predictions, lower bounds) per image."""
    from statsmodels.stats.proportion import proportion_confint

    def counts(xi: torch.Tensor, num: int) -> np.ndarray:
        c = np.zeros(clf.num_classes, dtype=np.int64)
        with torch.no_grad():
            for left in range(num, 0, -batch):
                b = xi.repeat((min(batch, left), 1, 1, 1))
                votes = clf(b + torch.randn_like(b) * sigma).argmax(1)
                c += np.bincount(votes.cpu().numpy(), minlength=clf.num_classes)
        return c

    preds, bounds = [], []
    for xi in x:
        guess = int(counts(xi, n0).argmax())
        n_a = int(counts(xi, n)[guess])
        lo = proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]
        preds.append(guess if lo >= 0.5 else -1)
        bounds.append(lo)
    return np.array(preds), np.array(bounds)


def bench_model(name: str, args, device: torch.device) -> list[dict]:
    clf, pool = build(name, device, args.precision)
    images = pool[:args.images].to(device)
    auto = Smoothed(clf, 0.25, n0=args.n0, n=args.n, seed=0)
    bs = auto.forward_batch(images.shape[1:])
    old = Smoothed(clf, 0.25, n0=args.n0, n=args.n, batch_size=1000, seed=0)
    floor = floor_rates(clf, pool[torch.arange(bs) % len(pool)], repeats=args.repeats, backward=False)["forward"]
    contenders = [(f"per-image loop, batch {args.loop_batch}",
                   lambda: loop_certify(clf, images, 0.25, args.n0, args.n, 0.001, args.loop_batch)),
                  (f"per-image loop, batch {bs}", lambda: loop_certify(clf, images, 0.25, args.n0, args.n, 0.001, bs)),
                  (f"trustvision CERTIFY, batch {bs} (forward_batch)", lambda: auto.certify(images)),
                  ("trustvision CERTIFY, batch 1000 (former default)", lambda: old.certify(images))]
    auto.certify(images[:1])                                                       # warm-up
    secs = timed([fn for _, fn in contenders], device, args.repeats)
    noisy = args.images * (args.n0 + args.n)
    out = []
    for (what, _), t in zip(contenders, secs):
        rate = noisy / t
        out.append({"model": name, "what": what, "images": args.images, "n0": args.n0, "n": args.n,
                    "seconds_per_image": t / args.images, "noisy_images_per_s": rate, "floor_batch": bs,
                    "floor_images_per_s": floor, "share_of_floor": rate / floor, "ratio_vs_loop": secs[0] / t,
                    "ratio_vs_loop_same_batch": secs[1] / t})
        print(f"{name:9s} {what:48s} {t / args.images:7.3f} s/img  {secs[0] / t:5.2f}x the loop "
              f"({secs[1] / t:4.2f}x at batch {bs})  {share(rate, floor)}", flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | what | images x (n0 + n) | s / image | noisy images/s | ratio vs loop (batch 1000) | "
             "ratio vs loop (same batch) | share of the forward floor |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['what']} | {r['images']} x ({r['n0']} + {r['n']}) | "
                     f"{r['seconds_per_image']:.3f} | {r['noisy_images_per_s']:.0f} | {r['ratio_vs_loop']:.2f} | "
                     f"{r['ratio_vs_loop_same_batch']:.2f} | {100 * r['share_of_floor']:.0f} % |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="mnist")
    ap.add_argument("--loop-batch", type=int, default=1000)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "load_average": load_average(), "torch": torch.__version__,
            "precision": args.precision, "repeats": args.repeats}
    results = [r for name in args.models.split(",") for r in bench_model(name.strip(), args, device)]
    md = (f"# Randomized-smoothing CERTIFY benchmark {meta['date']}\n\n"
          f"- device: {meta['device_name']} ({device}, {meta['threads']} threads, load average "
          f"{meta['load_average']} at start: a shared machine); torch {meta['torch']}; precision {args.precision}; "
          f"best of {args.repeats} interleaved rounds\n- command: `OMP_NUM_THREADS={meta['threads']} python "
          f"bench/smoothing.py --models {args.models} --images {args.images} --n {args.n}`\n"
          "- per-image loop: the reference code's structure (x.repeat + randn_like per batch, np.bincount on the host, "
          "statsmodels Clopper-Pearson); trustvision: `Smoothed.certify` (flat (image, sample) layout, counts on the "
          "device); forward floor: `bench/floor.py`'s forward rate at trustvision's batch\n"
          "- mnist: the noise-trained (sigma 0.25) smallcnn, 1x28x28; resnet18: torchvision ResNet-18, random "
          "weights, 3x32x32\n\n" + table(results) + "\n")
    write_results(args.out, "smoothing", meta, device, md, results)


if __name__ == "__main__":
    main()
