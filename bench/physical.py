"""Benchmark of the physical-world tools: the corruption sweep (ours vs ``imagecorruptions``) and the EOT overhead.

* **Corruption sweep**: the 11 corruption families × 5 severities on ``--images`` RGB images of ``--side`` pixels
  (skimage.data.astronaut crops); ours is batched torch (one call per corruption and severity), the peer
  ``imagecorruptions`` 1.1.2 (the authors' NumPy/OpenCV code) runs image by image as it is written.
  Images/s = images × 55 / seconds; the paper's pixel sizes (``scale=1``) on both sides.
* **EOT overhead**: seconds per PGD step on the MNIST demo CNN (``--eot-images`` digits), plain vs through
  ``EOT(spec, k)`` for k in 1, 4, 16 (the cost is about k forward/backward passes of the batch).

CPU run (1 thread, as in the results file)::

    OMP_NUM_THREADS=1 python bench/physical.py --threads 1 --date 2026-11-30

GPU (same script; the peer stays on the CPU, it is NumPy)::

    python bench/physical.py --device cuda --images 256 --side 64 --date 2026-11-30

Results: ``bench/results/physical-<date>-<device>.{md,json}``.
"""
from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_name, load_average, write_results  # noqa: E402

from trustvision.attacks import EOT, PGD  # noqa: E402
from trustvision.models.classifier import Classifier  # noqa: E402
from trustvision.physical.corruptions import CORRUPTIONS, corrupt  # noqa: E402
from trustvision.training import mnist_demo_model  # noqa: E402

MOTION = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]
SPEC = "rotate:15,scale:0.9-1.1,translate:0.1,brightness:0.2,contrast:0.2,blur:1.5,noise:0.03,jpeg:60-90"


def _peer():
    try:
        import pkg_resources  # noqa: F401
    except ImportError:                 # only the frost images need it; recent setuptools dropped it
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = lambda *a: ""
        sys.modules["pkg_resources"] = stub
    import imagecorruptions.corruptions as ic
    return ic


def _images(n: int, side: int) -> np.ndarray:
    from skimage import data
    big = data.astronaut()
    rng = np.random.default_rng(0)
    out = np.empty((n, side, side, 3), dtype=np.uint8)
    for i in range(n):
        r, c = rng.integers(0, big.shape[0] - side, 2)
        out[i] = big[r:r + side, c:c + side]
    return out


def bench_corruptions(n: int, side: int, device: torch.device) -> list[dict]:
    from PIL import Image
    ic = _peer()
    arr = _images(n, side)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).to(device)
    rows = []
    for name in CORRUPTIONS:
        g = torch.Generator(device=device).manual_seed(0)
        corrupt(x[:2], name, 1, generator=g, scale=1.0)                       # warm-up
        t0 = time.perf_counter()
        for sev in range(1, 6):
            corrupt(x, name, sev, generator=g, scale=1.0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ours = time.perf_counter() - t0
        fn = getattr(ic, name)
        t0 = time.perf_counter()
        for sev in range(1, 6):
            for img in arr:        # the package's motion_blur fails on some inputs: its kernel at the same sizes
                if name == "motion_blur":
                    ic._motion_blur(img, *MOTION[sev - 1], angle=np.random.uniform(-45, 45))
                else:
                    fn(Image.fromarray(img), sev)
        peer = time.perf_counter() - t0
        rows.append({"corruption": name, "ours_images_per_s": 5 * n / ours, "peer_images_per_s": 5 * n / peer,
                     "speedup": peer / ours})
        print(f"{name:18s} ours {5 * n / ours:9.0f} img/s   imagecorruptions {5 * n / peer:8.0f} img/s   "
              f"x{peer / ours:.1f}", flush=True)
    return rows


def bench_eot(n: int, device: torch.device, steps: int = 5) -> list[dict]:
    module, _, test, _, _ = mnist_demo_model()
    clf = Classifier(module, num_classes=10, channels=1, device=device)
    x, y = test.x[:n].to(device), test.y[:n].to(device)
    rows = []
    for k in (0, 1, 4, 16):
        view = clf if k == 0 else EOT(SPEC, k)(clf)
        PGD(eps=0.1, steps=1, seed=0)(view, x[:4], y[:4])                    # warm-up
        t0 = time.perf_counter()
        PGD(eps=0.1, steps=steps, seed=0)(view, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / steps
        rows.append({"eot_samples": k, "seconds_per_pgd_step": per_step})
        print(f"EOT k={k:2d}: {per_step * 1000:8.1f} ms per PGD step on {n} digits", flush=True)
    base = rows[0]["seconds_per_pgd_step"]
    for r in rows:
        r["overhead_vs_plain"] = r["seconds_per_pgd_step"] / base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--eot-images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    meta = {"date": a.date, "device": str(dev), "device_name": device_name(dev), "threads": torch.get_num_threads(),
            "load_average": load_average(), "images": a.images, "side": a.side, "eot_images": a.eot_images,
            "eot_spec": SPEC, "torch": torch.__version__}
    corr = bench_corruptions(a.images, a.side, dev)
    eot = bench_eot(a.eot_images, dev)
    total_ours = sum(5 * a.images / r["ours_images_per_s"] for r in corr)
    total_peer = sum(5 * a.images / r["peer_images_per_s"] for r in corr)
    md = [f"# physical — {a.date}, {meta['device_name']} ({dev}, {meta['threads']} threads, load {meta['load_average']})",
          "", f"Command: `OMP_NUM_THREADS=1 python bench/physical.py --threads 1 --date {a.date}`", "",
          f"## Corruption sweep: {a.images} RGB images of {a.side}x{a.side}, 5 severities each (scale=1)", "",
          "| corruption | ours (images/s) | imagecorruptions (images/s) | ratio |", "|---|---:|---:|---:|"]
    md += [f"| {r['corruption']} | {r['ours_images_per_s']:.0f} | {r['peer_images_per_s']:.0f} | "
           f"{r['speedup']:.1f}x |" for r in corr]
    md += [f"| **whole sweep** | {55 * a.images / total_ours:.0f} | {55 * a.images / total_peer:.0f} | "
           f"{total_peer / total_ours:.1f}x |", "",
           f"## EOT overhead: PGD step on {a.eot_images} MNIST digits, `{SPEC}`", "",
           "| EOT samples k | ms per PGD step | vs plain |", "|---:|---:|---:|"]
    md += [f"| {r['eot_samples'] or 'plain'} | {r['seconds_per_pgd_step'] * 1000:.1f} | {r['overhead_vs_plain']:.1f}x |"
           for r in eot]
    write_results(a.out, "physical", meta, dev, "\n".join(md) + "\n", {"corruptions": corr, "eot": eot})


if __name__ == "__main__":
    main()
