"""Benchmark: trustvision's batched CAMs against pytorch-grad-cam, same model, layer, images and targets.

Reports images per second for Grad-CAM and Grad-CAM++ (maps at input resolution, normalised to
[0, 1], on the host for pytorch-grad-cam which returns NumPy; on the device for ours), the
ratio ours / peer (> 1: trustvision faster), the smallest per-image correlation between the two
libraries' maps, and a forward+backward reference (logits -> gradient of the summed target
scores w.r.t. the input) as the speed ceiling.  Best of ``--repeats`` runs.

    python bench/explain.py                                  # CPU: MNIST CNN + ResNet-18 at 112x112
    python bench/explain.py --device cuda --n 256 --size 224 --models resnet50

Writes ``bench/results/explain-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import time
from pathlib import Path

import numpy as np
import torch

from attacks import PixelModel   # bench/attacks.py (same folder)
from common import device_name, load_average, write_results   # bench/common.py
from trustvision.explain import CAM, find_layer
from trustvision.models.classifier import Classifier


def build(name: str, device: torch.device, n: int, size: int):
    """(classifier, x (n, C, H, W) on the device)."""
    if name == "mnist":
        from trustvision.training import mnist_demo_model
        module, _, test, _, _ = mnist_demo_model()
        return Classifier(module, num_classes=10, channels=1, device=device, name="mnist-smallcnn"), \
            test.x[:n].to(device)
    import torchvision
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)(num_classes=1000).eval()      # random weights: timing only
    clf = Classifier(module, num_classes=1000, channels=3, device=device, name=f"{name}-random",
                     mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    return clf, torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


def best_time(fn, device: torch.device, repeats: int):
    out, best = None, float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return out, best


def corr_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    ok = den > 0
    return float(((a * b).sum(1)[ok] / den[ok]).min()) if ok.any() else float("nan")


def bench_model(name: str, clf: Classifier, x: torch.Tensor, args) -> list[dict]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    layer_name, _ = find_layer(clf.module)
    target = clf.predict(x).argmax(1)
    peer_model = PixelModel(clf)                          # takes [0, 1] pixels: same preprocessing as ours
    peer_layer = peer_model.net.get_submodule(layer_name)
    n = len(x)

    def fwd_bwd():
        xr = x.clone().requires_grad_(True)
        return torch.autograd.grad(clf(xr).gather(1, target[:, None]).sum(), xr)[0]

    _, t_ref = best_time(fwd_bwd, clf.device, args.repeats)
    rows = [{"model": name, "layer": layer_name, "method": "forward+backward (reference)", "lib": "torch",
             "n": n, "images_per_s": n / t_ref}]
    for method, peer_cls in (("gradcam", pgc.GradCAM), ("gradcam++", pgc.GradCAMPlusPlus)):
        cam = CAM(method, layer_name)
        ours, t_ours = best_time(lambda: cam(clf, x, target).maps, clf.device, args.repeats)
        targets = [ClassifierOutputTarget(int(t)) for t in target]
        with peer_cls(model=peer_model, target_layers=[peer_layer]) as peer:
            theirs, t_peer = best_time(lambda: peer(input_tensor=x, targets=targets), clf.device, args.repeats)
        c = corr_min(ours.float().cpu().numpy(), theirs)
        rows.append({"model": name, "layer": layer_name, "method": method, "lib": "trustvision", "n": n,
                     "images_per_s": n / t_ours, "ratio": t_peer / t_ours, "min_corr": c})
        rows.append({"model": name, "layer": layer_name, "method": method, "lib": "pytorch-grad-cam", "n": n,
                     "images_per_s": n / t_peer, "ratio": 1.0, "min_corr": c})
        print(f"{name} {method}: ours {n / t_ours:.1f} img/s, pytorch-grad-cam {n / t_peer:.1f} img/s, "
              f"ratio {t_peer / t_ours:.2f}, min corr {c:.5f}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | layer | method | library | images | images/s | ours / peer | min corr |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        corr = f"{r['min_corr']:.5f}" if "min_corr" in r else ""
        lines.append(f"| {r['model']} | {r['layer']} | {r['method']} | {r['lib']} | {r['n']} "
                     f"| {r['images_per_s']:.1f} | {ratio} | {corr} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="mnist,resnet18", help="comma list: mnist and/or torchvision names")
    p.add_argument("--n", type=int, default=64, help="images per batch")
    p.add_argument("--size", type=int, default=112, help="input size for torchvision models")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import importlib.metadata as md
    device = torch.device(args.device)
    meta = {"date": dt.date.today().isoformat(), "torch": torch.__version__, "grad_cam": md.version("grad-cam"),
            "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
            "load_average_1min": load_average(), "n": args.n, "size": args.size, "repeats": args.repeats}
    print(f"# explain benchmark {meta}", flush=True)
    rows: list[dict] = []
    for name in args.models.split(","):
        clf, x = build(name, device, args.n, args.size)
        rows += bench_model(name, clf, x, args)
    md_table = table(rows)
    print("\n" + md_table)
    write_results(args.out, "explain", meta, device,
        f"# CAM benchmark {meta['date']}\n\n"
        f"- device: {meta['device_name']} ({meta['device']}, {meta['threads']} threads, load average "
        f"{meta['load_average_1min']} at start); torch {meta['torch']}, grad-cam {meta['grad_cam']}\n"
        f"- one batch of {args.n} images per run (torchvision models: random weights, {args.size}x{args.size}); "
        f"best of {args.repeats}; same model, layer (automatic choice) and target classes (predicted)\n"
        "- images/s until normalised maps at input resolution exist (ours: a tensor on the device; "
        "pytorch-grad-cam: a NumPy array); ours / peer > 1: trustvision faster; min corr: the smallest "
        "per-image Pearson correlation between the two libraries' maps\n\n" + md_table + "\n", rows)


if __name__ == "__main__":
    main()
