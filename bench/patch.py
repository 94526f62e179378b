"""Benchmark: time per patch-training step, trustvision's AdversarialPatch vs ART's AdversarialPatchPyTorch.

Same trained demo CNN (``mnist_demo_model``), same MNIST training images, same square patch area, rotation
(±22.5°) and scale ranges (×0.9-1.1 of the side), same batch size, same Adam learning rate and the same number
of optimisation steps; one placement per image per step for both (``draws=1``), so each step is the same
amount of model work.  ART places the patch image by image (torchvision ``affine`` in a Python loop); ours
renders all placements of a step with one ``affine_grid`` + ``grid_sample``.  A third row times ours with
its default 4 placements per image (4x the model work per step).  Both patches are judged on the same
held-out test images and draws by ``patch_success``; the printed ratio is ART's seconds per step over ours.

    python bench/patch.py                                   # CPU (bench/results/patch-<date>-cpu.*)
    python bench/patch.py --device cuda --batch-size 128    # GPU

Writes ``bench/results/patch-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import time

import numpy as np
import torch

from common import add_run_options, demo_classifier, device_name, load_average, write_results   # bench/common.py
from trustvision.attacks.patch import AdversarialPatch, patch_success
from trustvision.attacks.patch_render import shape_mask
from trustvision.models.classifier import Classifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_art(clf: Classifier, x: torch.Tensor, args, device: torch.device) -> tuple[float, torch.Tensor]:
    """(seconds per step, patch (1, 28, 28)) of ART on ``x`` (one pass = len(x) / batch steps)."""
    from art.attacks.evasion import AdversarialPatchPyTorch
    from art.estimators.classification import PyTorchClassifier
    est = PyTorchClassifier(model=clf.as_module(), loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0),
                            device_type="gpu" if device.type == "cuda" else "cpu")
    s = math.sqrt(args.area)
    y_t = np.zeros((len(x), 10), dtype=np.float32)
    y_t[:, args.target] = 1
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    art = AdversarialPatchPyTorch(est, rotation_max=22.5, scale_min=0.9 * s, scale_max=1.1 * s,
                                  learning_rate=args.lr, max_iter=args.steps * args.batch_size // len(x),
                                  batch_size=args.batch_size, patch_shape=(1, 28, 28), patch_type="square",
                                  targeted=True, verbose=False)
    _sync(device)
    t0 = time.perf_counter()
    patch, _ = art.generate(x.cpu().numpy(), y_t)
    _sync(device)
    return (time.perf_counter() - t0) / args.steps, torch.from_numpy(patch).float()


def run_ours(clf: Classifier, x: torch.Tensor, args, draws: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(seconds per step, patch, mask) of trustvision (warm-up of 3 steps first, not timed)."""
    kw = dict(area=args.area, batch_size=args.batch_size, draws=draws, lr=args.lr, seed=args.seed)
    AdversarialPatch(steps=3, **kw).generate(clf, x, target=args.target)
    res = AdversarialPatch(steps=args.steps, **kw).generate(clf, x, target=args.target)
    return res.seconds_per_step, res.patch, res.mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--area", type=float, default=0.2)
    p.add_argument("--target", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_run_options(p)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import art
    clf, train, test = demo_classifier(device)
    x = train.x[: args.batch_size * 4].float()                  # 4 batches: ART runs steps / 4 passes
    held = test.sample(args.n_eval, args.seed)
    meta = {"date": dt.date.today().isoformat(), "torch": torch.__version__, "art": art.__version__,
            "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "load_average_1min": load_average(), "steps": args.steps, "batch_size": args.batch_size,
            "area": args.area, "target": args.target, "lr": args.lr, "n_train": len(x), "n_eval": args.n_eval,
            "model": "mnist-smallcnn (mnist_demo_model)", "rotation": 22.5, "scale": [0.9, 1.1]}
    print(f"# patch benchmark {meta}", flush=True)
    judge = dict(area=args.area, y=held.y, target=args.target, rotation=22.5, scale=(0.9, 1.1), draws=4, seed=7)
    rows = []
    t_art, p_art = run_art(clf, x, args, device)
    rows.append({"method": "ART AdversarialPatchPyTorch", "draws": 1, "s_per_step": t_art,
                 "success": patch_success(clf, held.x, p_art, shape_mask("square", 28), **judge)["success"]})
    for draws in (1, 4):
        t, patch, mask = run_ours(clf, x, args, draws)
        rows.append({"method": "trustvision AdversarialPatch", "draws": draws, "s_per_step": t,
                     "success": patch_success(clf, held.x, patch, mask, **judge)["success"]})
    for r in rows:
        r["art_over_this"] = t_art / r["s_per_step"]
        print(f"{r['method']:30s} draws={r['draws']}  {1000 * r['s_per_step']:8.1f} ms/step  "
              f"ART/this = {r['art_over_this']:5.2f}x  held-out targeted success {r['success']:.3f}", flush=True)
    md = [f"# Patch training: trustvision vs ART ({meta['date']}, {meta['device_name']}, {meta['threads']} threads, "
          f"load {meta['load_average_1min']})", "",
          f"`python bench/patch.py` — {args.steps} Adam steps of {args.batch_size} MNIST images, square patch of "
          f"area {args.area}, rotation ±22.5°, scale ×0.9-1.1, target {args.target}, lr {args.lr}; success on "
          f"{args.n_eval} held-out test images × 4 fresh draws.", "",
          "| method | placements per image per step | ms per step | ART / this | held-out success |",
          "|---|---|---|---|---|"]
    md += [f"| {r['method']} | {r['draws']} | {1000 * r['s_per_step']:.1f} | {r['art_over_this']:.2f}x | "
           f"{r['success']:.3f} |" for r in rows]
    write_results(args.out, "patch", meta, device, "\n".join(md) + "\n", rows)


if __name__ == "__main__":
    main()
