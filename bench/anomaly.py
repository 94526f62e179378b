"""Benchmark of the inspection methods: training time and scoring throughput (images/s) per method.

Each method (VAE, VAE + Siamese re-judgment, PatchCore with the ``fast`` preset and the demo backbone) is
fitted on the normal training images of ``bundled:textures`` (64x64, 360 images) and scores the 126 test
images; scoring is timed as the best of ``--repeats`` runs.  The PatchCore coreset step is also timed
alone.  CPU run (1 thread, as in the results file)::

    OMP_NUM_THREADS=1 python bench/anomaly.py --threads 1 --date 2026-11-30

GPU (same script, another device)::

    python bench/anomaly.py --device cuda --date 2026-11-30

Peer comparison: anomalib's PatchCore was **not** run side by side: ``pip install anomalib`` pulls
Lightning, OpenVINO and friends (not a clean test-only install here), and its PatchCore downloads
ImageNet backbone weights by default.  Results: ``bench/results/anomaly-<date>-<device>.{md,json}``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, load_average, write_results  # noqa: E402

from trustvision.anomaly.backbone import load_backbone  # noqa: E402
from trustvision.anomaly.data import load_anomaly_data  # noqa: E402
from trustvision.anomaly.patchcore import greedy_coreset  # noqa: E402
from trustvision.anomaly.section import AnomalyConfig, build_detector  # noqa: E402


def bench_method(method: str, cfg: AnomalyConfig, data, backbone, repeats: int) -> dict:
    det = build_detector(method, cfg, backbone)
    t0 = time.perf_counter()
    det.fit(data.train.to(cfg.device))
    fit_s = time.perf_counter() - t0
    test = data.test.to(cfg.device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        det.score(test)
        if test.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return {"method": method, "fit_s": round(fit_s, 2), "score_s": round(best, 3),
            "images_per_s": round(len(test) / best, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--methods", default="vae,vae+siamese,patchcore")
    ap.add_argument("--epochs", type=int, default=None, help="VAE epochs (default: the method's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_anomaly_data("bundled:textures", seed=0)
    cfg = AnomalyConfig(methods=args.methods, epochs=args.epochs, device=args.device)
    backbone = load_backbone("demo").to(device)
    meta = {"date": args.date, "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": load_average(), "data": "bundled:textures seed 0",
            "n_train": len(data.train), "n_test": len(data.test), "image_size": list(data.test.shape[1:]),
            "epochs": args.epochs, "anomalib": "not compared (see the docstring)"}
    rows = [bench_method(m, cfg, data, backbone, args.repeats) for m in cfg.methods]
    feats = torch.randn(92160, 96, generator=torch.Generator().manual_seed(0)).to(device)
    t0 = time.perf_counter()
    greedy_coreset(feats, 922)
    rows.append({"method": "greedy coreset alone (92 160 x 96 -> 922)", "fit_s": round(time.perf_counter() - t0, 2),
                 "score_s": None, "images_per_s": None})
    md = [f"# Inspection benchmark {args.date} ({meta['device_name']}, {meta['threads']} thread(s), load "
          f"{meta['load_average']})", "", f"Command: `OMP_NUM_THREADS=1 python bench/anomaly.py --threads 1 --date "
          f"{args.date}`; data bundled:textures (seed 0), {len(data.train)} train / {len(data.test)} test images "
          "64x64.", "", "| method | fit s | score s (126 images) | images/s |", "|---|---|---|---|"]
    md += [f"| {r['method']} | {r['fit_s']} | {r['score_s'] if r['score_s'] is not None else '—'} | "
           f"{r['images_per_s'] if r['images_per_s'] is not None else '—'} |" for r in rows]
    md += ["", "anomalib: not compared (see bench/anomaly.py's docstring)."]
    print("\n".join(md))
    write_results(Path(args.out), "anomaly", meta, device, "\n".join(md) + "\n", rows)


if __name__ == "__main__":
    main()
