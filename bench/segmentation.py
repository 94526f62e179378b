"""Benchmark: segmenters (U-Net, Ronneberger et al. 2015; Feedback U-Net, Shibuya & Hotta 2020) and attacks on them.

For each network (random weights: timing only; the same widths as the demo) on (N, 1, 64, 64) images:

* train step: images/s of one Adam step on the per-round cross-entropy (:func:`trustvision.segmentation.train.
  segmentation_loss`, the trainer's loss), forward + backward + update, batch ``--batch-size``;
* inference: images/s of :meth:`Segmenter.predict` (``torch.inference_mode``, every round);
* attack cost: seconds per image of our PGD (:class:`SegmentationAttack`, ``--steps`` steps, L∞ 8/255) next to a
  minimal hand-written PGD loop on the same loss (the reference: sign step, clamp to the ball and [0, 1], no
  bookkeeping).  ``ours / reference`` near 1 means the shared primitives (``pgd_steps``, ``enforce_budget``,
  :class:`Segmenter`'s eval-mode handling) cost next to nothing.  No peer library attacks segmenters
  (torchattacks / ART / Foolbox take (N, K) classifier logits), hence the hand-written reference.

Best of ``--repeats`` interleaved rounds.

    python bench/segmentation.py                                        # CPU, 2 threads: about 2 minutes idle
    python bench/segmentation.py --device cuda --batch-size 64 --images 256 --width 16 --repeats 5   # GPU

Writes ``bench/results/segmentation-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import device_name, load_average, write_results   # bench/common.py
from trustvision.segmentation.attacks import SegmentationAttack
from trustvision.segmentation.base import Segmenter
from trustvision.segmentation.train import build_network, segmentation_loss


def timed(fns: list, device: torch.device, repeats: int) -> list[float]:
    """Best wall time of each ``fn()`` over ``repeats`` interleaved rounds (device synchronised)."""
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


def reference_pgd(seg: Segmenter, x: torch.Tensor, masks: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """The reference: plain PGD on the mean per-pixel CE (Madry et al.), no random start, step 2.5 eps / steps."""
    alpha = 2.5 * eps / steps
    x_adv = x.clone()
    with seg.eval_mode():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(seg.module(x_adv, rounds=seg.num_rounds)[-1] if seg.feedback else
                                   seg.module(x_adv), masks)
            (g,) = torch.autograd.grad(loss, x_adv)
            x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def bench_network(kind: str, args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    k, size = 11, 64
    net = build_network(kind, 1, k, depth=3, width=args.width).to(device)
    seg = Segmenter(net, num_classes=k, channels=1, device=device, rounds=2 if kind == "feedback-unet" else 1,
                    name=kind)
    x = torch.rand(args.images, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    masks = torch.randint(0, k, (args.images, size, size), generator=torch.Generator().manual_seed(1)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    xb, mb = x[:args.batch_size], masks[:args.batch_size]
    na = args.attack_images

    def train_step() -> None:
        net.train()
        outs = net(xb)
        loss, _ = segmentation_loss(list(outs) if isinstance(outs, (list, tuple)) else [outs], mb, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        net.eval()

    ours = SegmentationAttack(eps=8 / 255, steps=args.steps, random_start=False, ignore_index=None)
    fns = [train_step, lambda: seg.predict(x, batch_size=args.batch_size),
           lambda: ours(seg, x[:na], masks[:na]), lambda: reference_pgd(seg, x[:na], masks[:na], 8 / 255, args.steps)]
    for fn in fns:
        fn()                                                                  # warm-up
    t_train, t_inf, t_ours, t_ref = timed(fns, device, args.repeats)
    row = {"network": kind, "width": args.width, "rounds": seg.num_rounds, "batch_size": args.batch_size,
           "train_images_per_s": args.batch_size / t_train, "inference_images_per_s": args.images / t_inf,
           "attack_images": na, "steps": args.steps, "ours_s_per_image": t_ours / na,
           "reference_s_per_image": t_ref / na, "ours_over_reference": t_ours / t_ref}
    print(f"{kind:14s} train {row['train_images_per_s']:8.1f} img/s  inference {row['inference_images_per_s']:8.1f} "
          f"img/s  PGD-{args.steps} {row['ours_s_per_image']:.4f} s/img (reference {row['reference_s_per_image']:.4f}, "
          f"ratio {row['ours_over_reference']:.3f})")
    return [row]


def table(results: list[dict]) -> str:
    lines = ["| network | rounds | train images/s | inference images/s | PGD s/image (ours) | PGD s/image (reference) "
             "| ours / reference |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['network']} | {r['rounds']} | {r['train_images_per_s']:.1f} | "
                     f"{r['inference_images_per_s']:.1f} | {r['ours_s_per_image']:.4f} | "
                     f"{r['reference_s_per_image']:.4f} | {r['ours_over_reference']:.3f} |")
    if len(results) == 2:
        a, b = results
        lines.append(f"\nFeedback U-Net / U-Net: train {b['train_images_per_s'] / a['train_images_per_s']:.2f}x the "
                     f"rate, inference {b['inference_images_per_s'] / a['inference_images_per_s']:.2f}x, attack cost "
                     f"{b['ours_s_per_image'] / a['ours_s_per_image']:.2f}x per image.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--networks", default="unet,feedback-unet")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--images", type=int, default=64, help="images of the inference pass")
    ap.add_argument("--attack-images", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "load_average": load_average(), "torch": torch.__version__,
            "repeats": args.repeats, "command": "python bench/segmentation.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    results = [r for kind in args.networks.split(",") for r in bench_network(kind.strip(), args, device)]
    md = (f"# Segmentation benchmark {meta['date']}\n\n"
          f"- device: {meta['device_name']} ({device}, {meta['threads']} threads, load average {meta['load_average']} "
          f"at start); torch {meta['torch']}; best of {args.repeats} interleaved rounds\n"
          f"- command: `{meta['command']}`\n"
          f"- networks: depth 3, width {args.width}, random weights (timing only), 1x64x64 images, 11 classes; "
          "Feedback U-Net with ConvLSTM blocks and 2 rounds\n"
          f"- train: one Adam step on batch {args.batch_size} (loss over every round); inference: `Segmenter.predict` "
          f"on {args.images} images; PGD: {args.steps} steps, L-inf 8/255, {args.attack_images} images, ours "
          "(`SegmentationAttack`) vs a minimal hand-written loop on the same loss\n\n" + table(results) + "\n")
    write_results(args.out, "segmentation", meta, device, md, results)


if __name__ == "__main__":
    main()
