"""Study: why a U-Net (Ronneberger et al. 2015) stays near 0.10 mIoU on ``bundled:digit-scenes``, and what fixes it.

``bundled:digit-scenes`` has 11 classes: background (about 92 % of the pixels) and ten digit classes on the
stroke pixels.  A test mIoU of 0.10 is what a network gets that finds the strokes but cannot say which
digit they belong to (IoU ~0.95 for the background, ~0 for the digits).  This script separates the two
tasks on the test split and measures, for each training setting (training images, epochs, class weights of
the loss, :func:`trustvision.segmentation.train.class_weights`):

* ``stroke IoU``: IoU of "any digit" vs background (does the network find the strokes?);
* ``digit accuracy``: fraction of true stroke pixels given the right digit class (does it name them?
  chance = 0.1);
* test mIoU and the CPU seconds of training (user + sys of this process).

Every setting trains a U-Net (depth 3, width ``--width``, seed 0, Adam + cosine, batch ``--batch-size``) with
the project's trainer (:func:`~trustvision.segmentation.train.train_segmenter`) on the first N training scenes
and scores it on ``--test`` test scenes (no digit is shared between the splits).

    OMP_NUM_THREADS=1 python bench/segment_digits.py --settings 96:8:none,320:20:none
    OMP_NUM_THREADS=1 python bench/segment_digits.py --settings 96:8:sqrt-median,320:20:sqrt-median --tag weighted
    python bench/segment_digits.py --device cuda --settings 320:20:none,320:60:none,1000:60:none   # GPU

Writes ``bench/results/segment-digits[-TAG]-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import torch

from common import device_name, load_average, write_results   # bench/common.py
from trustvision.segmentation import Segmenter, build_network, evaluate_segmentation, load_segmentation
from trustvision.segmentation.train import train_segmenter


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def run_setting(setting: str, test, args, device: torch.device) -> dict:
    """Train one U-Net for ``N:EPOCHS:WEIGHTING`` and score it: stroke IoU, digit accuracy, mIoU, CPU seconds."""
    n, epochs, weighting = setting.split(":")
    train = load_segmentation("bundled:digit-scenes", "train", n=int(n), seed=0)
    torch.manual_seed(0)
    net = build_network("unet", 1, 11, depth=3, width=args.width)
    cpu0, t0 = _cpu(), time.perf_counter()
    res = train_segmenter(net, train, epochs=int(epochs), batch_size=args.batch_size, lr=args.lr, seed=0,
                          device=str(device), class_weighting=weighting)
    cpu, wall = _cpu() - cpu0, time.perf_counter() - t0
    seg = Segmenter(res.module, num_classes=11, channels=1, labels=test.labels, device=device)
    ev = evaluate_segmentation(seg, test, batch_size=64)
    pred, masks = seg.predict(test.x).cpu(), test.masks
    stroke, found = masks > 0, pred > 0
    row = {"setting": setting, "n_train": int(n), "epochs": int(epochs), "class_weights": weighting,
           "steps": int(epochs) * -(-int(n) // args.batch_size), "final_loss": res.history[-1]["loss"],
           "miou": ev["miou"], "stroke_iou": float((stroke & found).sum() / (stroke | found).sum()),
           "digit_accuracy": float((pred[stroke] == masks[stroke]).float().mean()),
           "digit_iou_mean": sum(v or 0.0 for v in list(ev["per_class_iou"].values())[1:]) / 10,
           "boundary_f1": ev["boundary_f1"], "train_cpu_s": cpu, "train_wall_s": wall}
    print(f"{setting:22s} mIoU {row['miou']:.3f}  stroke IoU {row['stroke_iou']:.3f}  digit acc "
          f"{row['digit_accuracy']:.3f}  loss {row['final_loss']:.3f}  CPU {cpu:.0f} s  wall {wall:.0f} s", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| training images | epochs | Adam steps | class weights | final loss | test mIoU | stroke IoU | "
             "digit accuracy on strokes | mean digit IoU | train CPU s |", "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n_train']} | {r['epochs']} | {r['steps']} | {r['class_weights']} | {r['final_loss']:.3f} | "
                     f"{r['miou']:.3f} | {r['stroke_iou']:.3f} | {r['digit_accuracy']:.3f} | {r['digit_iou_mean']:.3f} | "
                     f"{r['train_cpu_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", default="96:8:none,320:20:none", help="comma list of N:EPOCHS:WEIGHTS")
    ap.add_argument("--test", type=int, default=64, help="test scenes")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "load_average": load_average(), "torch": torch.__version__,
            "command": "python bench/segment_digits.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v != "")}
    test = load_segmentation("bundled:digit-scenes", "test", n=args.test, seed=0)
    rows = [run_setting(s.strip(), test, args, device) for s in args.settings.split(",")]
    md = (f"# digit-scenes: finding strokes vs naming digits, {meta['date']}\n\n"
          f"- device: {meta['device_name']} ({device}, {meta['threads']} thread(s), load average "
          f"{meta['load_average']} at start: a shared machine); torch {meta['torch']}\n"
          f"- command: `{meta['command']}`\n"
          f"- U-Net depth 3, width {args.width}, batch {args.batch_size}, Adam lr {args.lr} (cosine), seed 0; "
          f"{args.test} test scenes of `bundled:digit-scenes`; digit accuracy chance level 0.1\n\n"
          + table(rows) + "\n")
    write_results(args.out, "segment-digits" + (f"-{args.tag}" if args.tag else ""), meta, device, md, rows)


if __name__ == "__main__":
    main()
