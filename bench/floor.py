"""The forward-pass floor: a model's raw forward (and forward+backward) rate at a given batch size.

Every CPU benchmark that pushes images through a model is bounded by how fast the model itself runs on
a batch of that size.  :func:`floor_rates` measures it (images per second, best of ``repeats``) so a
bench can print "x % of the floor" beside "n× the peer":

* forward: ``classifier(x)`` under ``torch.inference_mode`` (logits only);
* forward+backward: the input gradient of the summed cross-entropy (``loss.backward()`` with
  ``x.requires_grad_()``), what one step of a gradient attack costs at least.

``python bench/floor.py --sweep`` measures the forward rate of the MNIST CNN (1x28x28) and a CIFAR-size
ResNet-18 (3x32x32, random weights) across batch sizes — the measurement behind the CPU rule of
``trustvision.batching.forward_batch`` (docs/speed.md).  Images are (B, C, H, W) in [0, 1].

    OMP_NUM_THREADS=1 python bench/floor.py --sweep                      # CPU, one thread
    python bench/floor.py --sweep --device cuda --batches 256,1024,4096,16384

Writes ``bench/results/floor-<YYYY-MM-DD>-<device>.md`` and ``.json`` (with ``--sweep``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import device_name, load_average, write_results   # bench/common.py


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_rates(classifier, x: torch.Tensor, *, repeats: int = 3, backward: bool = True,
                min_seconds: float = 0.2) -> dict:
    """Images per second of ``classifier`` on the batch ``x`` (B, C, H, W): ``forward`` and ``forward_backward``.

    Each measurement repeats the pass until ``min_seconds`` have elapsed, best of ``repeats`` rounds.
    """
    dev = torch.device(classifier.device)
    x = x.to(dev)
    y = torch.zeros(len(x), dtype=torch.long, device=dev)

    def fwd() -> None:
        with torch.inference_mode():
            classifier(x)

    def fwd_bwd() -> None:
        xr = x.clone().requires_grad_(True)
        F.cross_entropy(classifier(xr), y, reduction="sum").backward()

    out = {"batch": len(x)}
    for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd))[:2 if backward else 1]:
        fn()                                                            # warm-up
        best = float("inf")
        for _ in range(repeats):
            _sync(dev)
            t0, calls = time.perf_counter(), 0
            while True:
                fn()
                calls += 1
                _sync(dev)
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    break
            best = min(best, elapsed / calls)
        out[name] = len(x) / best
    return out


def host_speed() -> float:
    """Forward+backward images per second of an untrained demo-architecture CNN (seeded, batch 128, one
    thread, best of 3 rounds of 0.5 s): how fast this machine is right now.  Shared hosts swing by 2x within
    an hour, so each row carries the figure measured just before its run; compare rows by it."""
    from trustvision.models.classifier import Classifier
    from trustvision.models.zoo import small
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    clf = Classifier(small.ARCHS["smallcnn"](num_classes=10, channels=1), num_classes=10, channels=1)
    x = torch.rand(128, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rate = floor_rates(clf, x, min_seconds=0.5)["forward_backward"]
    torch.set_num_threads(before)
    return rate


def share(rate: float, floor: float) -> str:
    """``"x % of the floor"`` for a rate (images/s) against the floor rate at the same batch."""
    return f"{100.0 * rate / floor:.0f} % of the floor"


def _models(device: torch.device):
    from trustvision.models.classifier import Classifier
    from trustvision.training import mnist_demo_model
    import torchvision
    module, *_ = mnist_demo_model()
    yield "mnist-smallcnn", Classifier(module, num_classes=10, channels=1, device=device), (1, 28, 28)
    torch.manual_seed(0)
    res = torchvision.models.resnet18(num_classes=10).eval()                  # random weights: timing only
    yield "resnet18-cifar", Classifier(res, num_classes=10, channels=3, device=device), (3, 32, 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="forward rate across batch sizes (the batching rule)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="16,64,256,512,1024,2048,8192")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    if not args.sweep:
        ap.error("nothing to do: pass --sweep (other benches import floor_rates)")
    from trustvision.batching import forward_batch
    device = torch.device(args.device)
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "load_average": load_average(), "torch": torch.__version__,
            "repeats": args.repeats}
    rows = []
    for name, clf, shape in _models(device):
        chosen = forward_batch(clf, device, sample_shape=shape)
        for b in [int(t) for t in args.batches.split(",")]:
            x = torch.rand(b, *shape, generator=torch.Generator().manual_seed(0))
            r = floor_rates(clf, x, repeats=args.repeats, backward=False)
            rows.append({"model": name, "batch": b, "forward_per_s": r["forward"], "chosen": b == chosen})
            print(f"{name:15s} batch {b:6d} {r['forward']:10.0f} img/s{'   <- forward_batch' if b == chosen else ''}",
                  flush=True)
    best = {m: max(r["forward_per_s"] for r in rows if r["model"] == m) for m in {r["model"] for r in rows}}
    lines = ["| model | batch | forward images/s | share of the best batch | forward_batch's choice |",
             "|---|---:|---:|---:|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['forward_per_s']:.0f} | {r['forward_per_s'] / best[r['model']]:.2f} | "
              f"{'yes' if r['chosen'] else ''} |" for r in rows]
    md = (f"# Forward-pass floor by batch size {meta['date']}\n\n- device: {meta['device_name']} ({device}, "
          f"{meta['threads']} threads, load average {meta['load_average']} at start); torch {meta['torch']}; best of "
          f"{args.repeats} rounds of >= 0.2 s\n- command: `python bench/floor.py --sweep` (threads as run: see above)\n\n"
          + "\n".join(lines) + "\n")
    write_results(args.out, "floor", meta, device, md, rows)


if __name__ == "__main__":
    main()
