"""Benchmark: randomized-smoothing noise sampling (Cohen et al. 2019 CERTIFY) against the plain forward pass.

The floor for CERTIFY is one forward pass per noise sample, so its rate in noisy images per second
is compared with the rate of the same model on batches of the same size of plain images (no noise,
no counting) under ``torch.inference_mode``; ``sampling / forward`` near 1 means the noise draws,
the argmax and the ``scatter_add_`` counting cost next to nothing.  Images are (N, C, H, W) in
[0, 1]; best of ``--repeats`` interleaved rounds.

    python bench/smoothing.py                                   # CPU: MNIST CNN, CIFAR-size ResNet-18
    python bench/smoothing.py --device cuda --batch-size 4096 --n 20000 --precision bf16

Writes ``bench/results/smoothing-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import torch

from common import device_name, load_average, write_results   # bench/common.py
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


def bench_model(name: str, args, device: torch.device) -> list[dict]:
    clf, pool = build(name, device, args.precision)
    images = pool[:args.images].to(device)
    total = args.images * args.n
    plain = pool[torch.arange(args.batch_size) % len(pool)].to(device)           # a full batch of plain images
    batches = -(-total // args.batch_size)

    def forward() -> None:
        with torch.inference_mode():
            for _ in range(batches):
                clf(plain).argmax(1)

    sm = Smoothed(clf, 0.25, n0=args.n0, n=args.n, batch_size=args.batch_size, seed=0)
    forward()                                                                     # warm-up
    sm.sample_counts(images[:1], args.batch_size, sm.generator())
    t_fwd, t_smp, t_cert = timed([forward, lambda: sm.sample_counts(images, args.n, sm.generator()),
                                  lambda: sm.certify(images)], device, args.repeats)
    rows = [("forward pass (floor)", batches * args.batch_size / t_fwd, t_fwd),
            ("noise sampling + counting", total / t_smp, t_smp),
            ("CERTIFY end to end (n0 + n)", args.images * (args.n0 + args.n) / t_cert, t_cert)]
    floor = rows[0][1]
    out = []
    for what, rate, secs in rows:
        out.append({"model": name, "what": what, "batch_size": args.batch_size, "images": args.images, "n": args.n,
                    "noisy_images_per_s": rate, "seconds": secs, "ratio_to_forward": rate / floor})
        print(f"{name:10s} {what:30s} {rate:10.1f} img/s  ratio {rate / floor:.3f}")
    return out


def table(results: list[dict]) -> str:
    lines = ["| model | what | batch | images x n | noisy images/s | seconds | ratio to forward |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['what']} | {r['batch_size']} | {r['images']} x {r['n']} | "
                     f"{r['noisy_images_per_s']:.1f} | {r['seconds']:.2f} | {r['ratio_to_forward']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="mnist,resnet18")
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "load_average": load_average(), "torch": torch.__version__,
            "precision": args.precision, "repeats": args.repeats}
    results = [r for name in args.models.split(",") for r in bench_model(name.strip(), args, device)]
    md = (f"# Randomized-smoothing sampling benchmark {meta['date']}\n\n"
          f"- device: {meta['device_name']} ({device}, {meta['threads']} threads, load average "
          f"{meta['load_average']} at start); torch {meta['torch']}; precision {args.precision}; best of {args.repeats} interleaved rounds\n"
          "- forward pass (floor): the same model on plain batches of the same size under inference_mode "
          "(logits + argmax, nothing else); noise sampling + counting: `Smoothed.sample_counts` (Gaussian draws on the "
          "device, forward, argmax, scatter_add_ counts); CERTIFY: selection (n0) + estimation (n) samples and the "
          "Clopper-Pearson bound\n- ratio to forward: noisy images/s divided by the forward-pass rate (1 = at the floor)"
          "\n- mnist: the noise-trained (sigma 0.25) smallcnn, 1x28x28; resnet18: torchvision ResNet-18, random weights, "
          "3x32x32\n\n" + table(results) + "\n")
    write_results(args.out, "smoothing", meta, device, md, results)


if __name__ == "__main__":
    main()
