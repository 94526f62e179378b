"""U-Net vs Feedback U-Net (round 1 / round 2) vs U-Net with the test-time annotation leak, on both demo sets.

For every demo set (``bundled:digit-scenes``: real MNIST handwriting on 64x64 canvases, 11 classes;
``bundled:cells``: synthetic membranes, 2 classes) and every seed, trains on the same training images:

* a U-Net (Ronneberger et al. 2015);
* a Feedback U-Net (Shibuya & Hotta 2020; ConvLSTM blocks, 2 rounds, loss on both rounds), scored after
  round 1 and round 2;
* a U-Net with the leak prior (``knn:K``: the masks of the K nearest training images, retrieved with the
  first U-Net's encoder, as extra input channels; trained with the same prior, self excluded);
* with ``--ablation``: the Feedback U-Net without ConvLSTM memory (``lstm="none"``), the documented
  simplification, to measure what the ConvLSTM brings.

It prints a markdown table (mean ± sd over seeds of test mIoU and boundary F1) and paired comparisons:
per seed (how many seeds the difference is positive) and per test image (the per-image mIoU averaged over
seeds, Wilcoxon signed-rank test, scipy), and with ``--doc PATH`` writes them into a markdown file.

    OMP_NUM_THREADS=1 python examples/segmentation_table.py --doc docs/segmentation-results.md

Seeds change the initial weights and the data order; the images are the same for every seed (data seed 0).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from trustvision.segmentation import (LeakPrior, Segmenter, build_network, evaluate_segmentation,
                                      load_segmentation, train_segmenter)

ROWS = [("unet", "U-Net"), ("fb_r1", "Feedback U-Net, round 1"), ("fb_r2", "Feedback U-Net, round 2"),
        ("leak", "U-Net + leak (knn)"), ("fbnone_r2", "Feedback U-Net without ConvLSTM, round 2")]
COMPARISONS = [("fb_r2", "unet", "Feedback U-Net (round 2) vs U-Net"),
               ("fb_r2", "fb_r1", "Feedback round 2 vs round 1 (same network)"),
               ("leak", "unet", "U-Net + leak vs U-Net"),
               ("fb_r2", "fbnone_r2", "Feedback with ConvLSTM vs without (round 2)")]


def _train(kind: str, train, seed: int, args, **extra) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_network(kind, train.channels, train.num_classes, depth=args.depth, width=args.width, **extra)
    return train_segmenter(net, train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           seed=seed).module


def _score(module, test, *, rounds: int = 1, leak=None) -> dict:
    seg = Segmenter(module, num_classes=test.num_classes, channels=test.channels, rounds=rounds, leak=leak)
    return evaluate_segmentation(seg, test, batch_size=64)


def run_seed(train, test, seed: int, args) -> dict[str, dict]:
    """Train and score every model of one seed: {row key: {"miou", "boundary_f1", "per_image"}}."""
    out: dict[str, dict] = {}
    unet = _train("unet", train, seed, args)
    ev = _score(unet, test)
    out["unet"] = {"miou": ev["miou"], "boundary_f1": ev["boundary_f1"], "per_image": ev["per_image_miou"]}
    fb = _train("feedback-unet", train, seed, args, rounds=2)
    ev = _score(fb, test, rounds=2)
    for r in (0, 1):
        one = _score(fb, test, rounds=r + 1) if r == 0 else ev
        out[f"fb_r{r + 1}"] = {"miou": ev["miou_per_round"][r], "boundary_f1": one["boundary_f1"],
                               "per_image": ev["per_image_miou_per_round"][r]}
    leak = LeakPrior(unet, train.x, train.masks, train.num_classes, k=args.k, ignore_index=train.ignore_index)
    torch.manual_seed(seed)
    net = build_network("unet", train.channels, train.num_classes, depth=args.depth, width=args.width,
                        prior_channels=train.num_classes)
    net = train_segmenter(net, train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                          leak=leak).module
    ev = _score(net, test, leak=leak)
    out["leak"] = {"miou": ev["miou"], "boundary_f1": ev["boundary_f1"], "per_image": ev["per_image_miou"]}
    if args.ablation:
        fbn = _train("feedback-unet", train, seed, args, rounds=2, lstm="none")
        ev = _score(fbn, test, rounds=2)
        out["fbnone_r2"] = {"miou": ev["miou"], "boundary_f1": ev["boundary_f1"], "per_image": ev["per_image_miou"]}
    return out


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _compare(runs: list[dict], a: str, b: str) -> dict:
    """Per-seed differences and a per-image Wilcoxon signed-rank test on seed-averaged per-image mIoU."""
    from scipy.stats import wilcoxon
    diffs = [r[a]["miou"] - r[b]["miou"] for r in runs]
    pa = np.nanmean(np.array([r[a]["per_image"] for r in runs], dtype=float), 0)
    pb = np.nanmean(np.array([r[b]["per_image"] for r in runs], dtype=float), 0)
    d = pa - pb
    d = d[np.isfinite(d)]
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {"mean_diff": float(np.mean(diffs)), "seeds_better": int(sum(x > 0 for x in diffs)), "seeds": len(diffs),
            "images_better": int((d > 0).sum()), "images_worse": int((d < 0).sum()), "wilcoxon_p": p}


def _tables(name: str, runs: list[dict]) -> tuple[list[str], dict]:
    lines = [f"### {name}", "", "| model | test mIoU | boundary F1 (2 px) |", "|---|---|---|"]
    for key, label in ROWS:
        if key in runs[0]:
            lines.append(f"| {label} | {_ms([r[key]['miou'] for r in runs])} | "
                         f"{_ms([r[key]['boundary_f1'] for r in runs])} |")
    lines += ["", "| paired comparison (A vs B) | mean ΔmIoU | seeds A > B | test images A > B / A < B "
              "| Wilcoxon p (per image) |", "|---|---|---|---|---|"]
    comps = {}
    for a, b, label in COMPARISONS:
        if a in runs[0] and b in runs[0]:
            c = comps[f"{a}-{b}"] = _compare(runs, a, b)
            lines.append(f"| {label} | {c['mean_diff']:+.3f} | {c['seeds_better']}/{c['seeds']} | "
                         f"{c['images_better']} / {c['images_worse']} | {c['wilcoxon_p']:.2g} |")
    return lines + [""], comps


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["digit-scenes", "cells"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--train", type=int, default=160, help="training images per set")
    ap.add_argument("--test", type=int, default=64, help="test images per set")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--k", type=int, default=3, help="neighbours of the leak prior (knn:K)")
    ap.add_argument("--ablation", action="store_true", help="also train the Feedback U-Net without ConvLSTM")
    ap.add_argument("--json", type=Path, default=None, help="write all numbers here")
    ap.add_argument("--doc", type=Path, default=None, help="write the markdown tables into this file")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    lines, everything = [], {}
    for name in args.sets:
        train = load_segmentation(f"bundled:{name}", "train", n=args.train)
        test = load_segmentation(f"bundled:{name}", "test", n=args.test)
        runs = []
        for seed in args.seeds:
            runs.append(run_seed(train, test, seed, args))
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v['miou']:.3f}" for k, v in runs[-1].items()),
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        table, comps = _tables(f"bundled:{name} ({args.train} train / {args.test} test images, "
                               f"{len(args.seeds)} seeds)", runs)
        lines += table
        everything[name] = {"runs": runs, "comparisons": comps}
    seconds = time.perf_counter() - t0
    cmd = "OMP_NUM_THREADS=1 python examples/segmentation_table.py " + " ".join(argv if argv is not None else sys.argv[1:])
    settings = (f"Settings: width {args.width}, depth {args.depth}, {args.epochs} epochs, batch {args.batch_size}, "
                f"Adam lr {args.lr} (cosine), leak knn:{args.k}; {seconds / 60:.1f} min on {torch.get_num_threads()} "
                f"CPU thread(s).")
    print("\n".join(lines) + "\n" + settings)
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": None, "doc": None}, "seconds": seconds,
                                         "results": everything}, indent=1))
    if args.doc:
        args.doc.write_text(_doc(lines, settings, cmd))


def _doc(lines: list[str], settings: str, cmd: str) -> str:
    head = ["# Segmentation results: feedback and the annotation leak", "",
            "Produced by (date 2026-11-30, device cpu):", "", "```", cmd, "```", "", settings, "",
            "Test mIoU and boundary F1 are mean ± sd over seeds. Paired comparisons: mean ΔmIoU over seeds, "
            "the number of seeds where A beats B, and a Wilcoxon signed-rank test over test images (each "
            "image's mIoU averaged over seeds). `bundled:cells` is synthetic.", ""]
    return "\n".join(head + lines) + "\n"


if __name__ == "__main__":
    main()
