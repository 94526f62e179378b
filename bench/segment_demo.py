"""Benchmark: ``trustvision segment demo`` end to end — wall time, CPU time (user + sys) and what it reaches.

Issue 13 asks that the segmentation demo (train U-Net, Feedback U-Net (Shibuya & Hotta 2020) and Feedback
U-Net + the annotation leak on a bundled set, evaluate, attack with PGD/FGSM, write the report) finish in
under about 5 minutes on 2 CPU cores.  This bench runs the demo as a subprocess, cold (a fresh output
folder: every network is trained), once per ``--data`` set, and records:

* wall seconds and the child's user + system CPU seconds (``getrusage(RUSAGE_CHILDREN)``): on a shared
  machine wall time grows with the other jobs, CPU time much less, so both are written;
* the 1-minute load average at the start and at the end of each run (the machine is shared);
* the headline numbers of the run's ``results.json`` (test mIoU, robust mIoU at the largest budget per model), so the
  timing and what the demo delivers in that time are read together.

    python bench/segment_demo.py                                   # the default demo (bundled:cells)
    python bench/segment_demo.py --data bundled:cells,bundled:digit-scenes
    python bench/segment_demo.py --device cuda                     # on a GPU machine

Writes ``bench/results/segment-demo-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import device_name, load_average, write_results   # bench/common.py


def _child_cpu() -> float:
    """User + system CPU seconds of this process's reaped children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _headline(results: dict) -> dict:
    """Test mIoU (per round) and robust mIoU at the largest budget, per model, from a demo's results.json."""
    out = {}
    for name, sec in results.get("sections", {}).items():
        if not name.startswith("segment-") or name == "segment-compare":
            continue
        m = sec.get("metrics", {})
        robust = {float(k.split("@")[1]): v for k, v in m.items() if k.startswith("robust_miou_linf@")}
        top = max(robust) if robust else None
        out[name[len("segment-"):]] = {"miou": m.get("miou"), "miou_per_round": m.get("miou_per_round"),
                                       "boundary_f1": m.get("boundary_f1"), "robust_eps": top,
                                       "robust_miou": robust.get(top)}
    return out


def run_demo(data: str, args) -> dict:
    """One cold ``segment demo`` run on ``data``: wall and CPU seconds, exit status, headline metrics."""
    with tempfile.TemporaryDirectory(prefix="tv-segdemo-bench-") as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "trustvision", "segment", "demo", "--out", str(out), "--data", data,
               "--device", args.device, *args.extra.split()]
        load0, cpu0, t0 = load_average(), _child_cpu(), time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  timeout=args.timeout)
            rc, err = proc.returncode, proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
        except subprocess.TimeoutExpired:
            rc, err = None, [f"stopped after {args.timeout} s"]
        wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
        results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else \
            {"sections": {f.stem: json.loads(f.read_text())["payload"] for f in (out / "sections").glob("*.json")}
             if (out / "sections").is_dir() else {}}       # a stopped run: the sections it finished
        report = (out / "report.html").exists()
    row = {"data": data, "command": " ".join(["trustvision", *cmd[3:5], *cmd[7:]]),
           "rc": rc, "error": err, "wall_s": wall, "cpu_s": cpu, "cpu_over_wall": cpu / wall if wall else None,
           "load_start": load0, "load_end": load_average(), "report": report, "models": _headline(results)}
    print(f"{data}: rc {rc}, wall {wall:.0f} s, CPU (user+sys) {cpu:.0f} s, load {load0} -> {row['load_end']}")
    return row


def table(rows: list[dict]) -> str:
    lines = ["| data | exit | wall (s) | CPU user+sys (s) | CPU / wall | load start → end | model | test mIoU "
             "(per round) | robust mIoU (PGD) @ largest L∞ budget |", "|---|---:|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        models = r["models"] or {"—": {}}
        for i, (key, m) in enumerate(models.items()):
            head = (f"| {r['data']} | {'stopped' if r['rc'] is None else r['rc']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['cpu_over_wall']:.2f} | "
                    f"{r['load_start']} → {r['load_end']} |") if i == 0 else "| | | | | | |"
            rounds = ", ".join(f"{v:.3f}" for v in m.get("miou_per_round") or [])
            robust, eps = m.get("robust_miou"), m.get("robust_eps")
            lines.append(f"{head} {key} | {m.get('miou', float('nan')):.3f} ({rounds}) | "
                         f"{'—' if robust is None else f'{robust:.3f} @{eps * 255:.3g}/255'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default="bundled:cells", help="comma list of demo sets")
    ap.add_argument("--extra", default="", help="more segment-demo options, e.g. '--epochs 4'")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before the run is stopped")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    device = torch.device(args.device)
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "cores": os.cpu_count(), "torch": torch.__version__,
            "command": "python bench/segment_demo.py " + " ".join(
                f"--{k} {v!r}" if k == "extra" else f"--{k} {v}" for k, v in vars(args).items()
                if k != "out" and not (k == "extra" and not v))}
    rows = [run_demo(d.strip(), args) for d in args.data.split(",")]
    md = (f"# `trustvision segment demo` end to end, {meta['date']}\n\n"
          f"- device: {meta['device_name']} ({device}, {meta['cores']} cores); torch {meta['torch']}\n"
          f"- command: `{meta['command']}` (cold: fresh output folder, every network trained)\n"
          "- wall: seconds from start to exit; CPU: the demo process's user + system seconds. The machine is "
          "shared with other jobs (load averages above): wall time is an upper bound of an idle machine's, "
          "CPU time the closer measure of the work.\n\n" + table(rows) + "\n")
    write_results(args.out, "segment-demo", meta, device, md, rows)


if __name__ == "__main__":
    main()
