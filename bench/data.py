"""Streaming data loader vs the old in-memory path (issue 16): images per second, one process, side by side.

On a generated class folder (``--files`` JPEGs of ``--side``² pixels, smooth random colour images, in
``--classes`` sub-folders; or ``--folder`` for your own), three ways to get images into memory as
(N, 3, S, S) float32 in [0, 1], with ``--workers`` 0 and 2:

* **eager** — the old path: ``load_dataset(folder, size=...)`` decodes every file, then ``.sample(n, seed)``;
* **lazy** — ``load_dataset(folder, size=..., lazy=True, workers=w)``: lists the files, ``.sample(n, seed)``
  decodes only the sampled ones through a ``torch.utils.data.DataLoader`` (trustvision.data.stream);
* **torchvision** — the peer: ``torchvision.datasets.ImageFolder`` (PIL, ``Resize`` bilinear, ``ToTensor``)
  over a ``Subset`` of the same indices, through a ``DataLoader`` with the same workers.

Two tasks: ``all`` (every file: decode throughput, the sample is the whole folder) and ``sample``
(``--n`` of the files: the time a command with ``--n`` waits for its data).  Then the memory test of the
issue: ``--n`` of ``--memory-files`` PNGs of ``--memory-side``², peak RSS of a fresh process, lazy
(``DataArgs.load``, what the commands do) against the old path.  Images/s counts the images
returned per second of wall time (listing, worker start-up and decoding included), best of ``--repeats``.
The lazy sample is checked bit-identical to the eager one before timing.

    OMP_NUM_THREADS=1 python bench/data.py                       # CPU (the committed results)
    python bench/data.py --files 5000 --side 224 --n 1000 --device cuda --workers 0,4,8   # a GPU box
        (--device cuda only pins the decoded pixels, as DataArgs does for a CUDA model)

Writes ``bench/results/data-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import device_name, load_average, write_results   # bench/common.py
from trustvision.data import load_dataset


def make_folder(root: Path, files: int, side: int, classes: int) -> Path:
    """``files`` smooth random colour JPEGs (side x side) spread over ``classes`` sub-folders."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(files):
        d = root / f"class{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BICUBIC).save(d / f"{i:06d}.jpg", quality=90)
    return root


def eager(folder: str, size, n, seed, workers, pin):
    return load_dataset(folder, size=size).conform(3, 1000).sample(n, seed).x


def lazy(folder: str, size, n, seed, workers, pin):
    return load_dataset(folder, size=size, lazy=True, workers=workers, pin_memory=pin).conform(3, 1000).sample(n, seed).x


def torchvision_peer(folder: str, size, n, seed, workers, pin):
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms
    ds = datasets.ImageFolder(folder, transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR, antialias=False),
        transforms.ToTensor()]))
    idx = range(len(ds)) if n is None or n >= len(ds) else \
        torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()
    loader = DataLoader(Subset(ds, list(idx)), batch_size=32, num_workers=workers, pin_memory=pin)
    return torch.cat([x for x, _ in loader])


def run(folder: str, args, pin: bool) -> list[dict]:
    """Time every (task, loader, workers); the repeats are interleaved so that a busy machine's noise is shared."""
    import torchvision.datasets  # noqa: F401  (imported before timing: its first import takes seconds)
    size = (args.side, args.side)
    check_e, check_l = eager(folder, size, args.n, 0, 0, False), lazy(folder, size, args.n, 0, 0, False)
    assert torch.equal(check_e, check_l), "lazy sample differs from the eager one"
    configs = [(task, n, name, fn, w) for task, n in (("all", None), ("sample", args.n)) for w in args.workers
               for name, fn in (("eager", eager), ("lazy", lazy), ("torchvision", torchvision_peer))
               if not (name == "eager" and w)]                      # the old path has no workers
    best = {c[:3] + (c[4],): (float("inf"), 0) for c in configs}
    for _ in range(args.repeats):
        for task, n, name, fn, w in configs:
            t = time.perf_counter()
            count = len(fn(folder, size, n, 0, w, pin))
            best[task, n, name, w] = min(best[task, n, name, w], (time.perf_counter() - t, count))
    rows = []
    for (task, n, name, w), (sec, count) in best.items():
        rows.append({"task": task, "loader": name, "workers": w, "images": count, "seconds": sec,
                     "images_per_s": count / sec})
        print(f"  {task:6s} {name:11s} workers {w}: {count:5d} images in {sec:6.2f} s = {count / sec:7.1f} img/s")
    return rows


MEMORY = """
import re, resource, sys, time, types
import torch
from trustvision.cli.options import DataArgs
from trustvision.data import load_dataset
def peak():      # VmHWM: this process's peak RSS (ru_maxrss survives exec: it can be the parent's)
    try:
        return int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
    except (OSError, AttributeError):
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if sys.platform == "darwin" else r * 1024
def reset_peak():  # Linux >= 4.0: the peak restarts from the current RSS (the imports' peak is not the data's)
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
folder, how, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
clf = types.SimpleNamespace(input_size=None, channels=3, num_classes=1000, device=torch.device("cpu"))
reset_peak()
base = peak()
t = time.perf_counter()
if how == "lazy":
    ds = DataArgs(folder, n=n, seed=0).load(clf)                          # what the commands do now
else:
    ds = load_dataset(folder).conform(3, 1000).sample(n, 0)               # the old path
print(len(ds), base, peak(), time.perf_counter() - t)
"""


def memory(root: Path, files: int, side: int, n: int) -> list[dict]:
    """Peak RSS growth (VmHWM reset after the imports, else getrusage; a fresh process each) of sampling ``n``
    of ``files`` images."""
    import io
    import subprocess
    import sys
    from PIL import Image
    encoded = []
    for v in range(16):           # 16 distinct PNGs copied: the folder is written in a second; decoded like any PNG
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (16 * v, 255 - 16 * v, 7 * v)).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    for i in range(files):
        (root / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        (root / f"c{i % 4}" / f"{i:06d}.png").write_bytes(encoded[i % 16])
    rows = []
    for how in ("lazy", "eager"):
        out = subprocess.run([sys.executable, "-c", MEMORY, str(root), how, str(n)], capture_output=True,
                             text=True, check=True).stdout.split()
        got, base, peak, sec = int(out[0]), int(out[1]), int(out[2]), float(out[3])
        rows.append({"loader": how, "files": files, "side": side, "n": got, "base_mib": base / 2**20,
                     "peak_mib": peak / 2**20, "growth_mib": (peak - base) / 2**20, "seconds": sec})
        print(f"  memory {how:5s}: {files} files, n {got}: RSS {base / 2**20:.0f} -> {peak / 2**20:.0f} MiB "
              f"(+{(peak - base) / 2**20:.0f} MiB) in {sec:.1f} s")
    return rows


def markdown(meta: dict, rows: list[dict], mem: list[dict]) -> str:
    lines = [f"# Streaming data vs the in-memory path ({meta['date']}, {meta['device']})", "",
             f"`{meta['command']}` — {meta['device_name']}, torch {meta['torch']}, {meta['threads']} thread(s), "
             f"load average {meta['load_average']} at the start: a shared 2-core machine with other jobs running, "
             "so absolute rates are noisy; the ratios within one run are what counts.", "",
             f"Folder: {meta['files']} JPEGs of {meta['side']}x{meta['side']} in {meta['classes']} classes; "
             f"`sample` = --n {meta['n']} of them (seed 0). Images/s = images returned per second of wall time "
             "(listing, worker start-up and decoding included), best of "
             f"{meta['repeats']} interleaved repeats. The lazy sample was checked bit-identical to the eager one.", "",
             "| task | loader | workers | images | seconds | images/s | time vs eager |", "|---|---|---|---|---|---|---|"]
    base = {r["task"]: r["seconds"] for r in rows if r["loader"] == "eager"}
    for r in rows:
        lines.append(f"| {r['task']} | {r['loader']} | {r['workers']} | {r['images']} | {r['seconds']:.2f} | "
                     f"{r['images_per_s']:.1f} | {r['seconds'] / base[r['task']]:.2f} |")
    if mem:
        m = mem[0]
        lines += ["", f"Memory: --n {m['n']} of {m['files']} PNGs of {m['side']}x{m['side']} (decoded: "
                  f"{m['files'] * 3 * m['side'] ** 2 * 4 / 2**20:.0f} MiB as float32; the sample: "
                  f"{m['n'] * 3 * m['side'] ** 2 * 4 / 2**20:.0f} MiB), peak RSS of a fresh process (VmHWM, reset "
                  "after the imports; getrusage where /proc is missing) before and after getting the sample; the "
                  "imports (torch) are the base.", "",
                  "| loader | RSS before (MiB) | peak RSS (MiB) | growth (MiB) | seconds |", "|---|---|---|---|---|"]
        lines += [f"| {r['loader']} | {r['base_mib']:.0f} | {r['peak_mib']:.0f} | {r['growth_mib']:.0f} | "
                  f"{r['seconds']:.1f} |" for r in mem]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="an existing class folder (default: generate one)")
    p.add_argument("--files", type=int, default=600)
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--n", type=int, default=64, help="the sample of task 'sample'")
    p.add_argument("--workers", default="0,2", help="comma list of DataLoader worker counts")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cuda: decoded pixels go to pinned memory")
    p.add_argument("--memory-files", type=int, default=2000, help="files of the memory test (0: skip it)")
    p.add_argument("--memory-side", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    device = torch.device(args.device)
    command = (f"python bench/data.py --files {args.files} --side {args.side} --classes {args.classes} --n {args.n} "
               f"--workers {','.join(map(str, args.workers))} --repeats {args.repeats} "
               f"--memory-files {args.memory_files} --memory-side {args.memory_side}"
               + (f" --device {args.device}" if device.type != "cpu" else ""))
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "load_average": load_average(),
            "files": args.files, "side": args.side, "classes": args.classes, "n": args.n, "repeats": args.repeats,
            "command": command}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or str(make_folder(Path(tmp) / "folder", args.files, args.side, args.classes))
        if args.folder:
            meta["files"] = len(load_dataset(folder, lazy=True))
        rows = run(folder, args, pin=device.type == "cuda")
        mem = memory(Path(tmp) / "memory", args.memory_files, args.memory_side, args.n) if args.memory_files else []
    write_results(args.out, "data", meta, device, markdown(meta, rows, mem), rows + mem)


if __name__ == "__main__":
    main()
