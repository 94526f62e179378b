"""Benchmark: ``trustvision demo`` wall time, cold, alone and beside CPU-burning processes, threads before/after.

Issue 19: on a busy 2-core machine the demo took 19-27 minutes instead of about one: torch's OpenMP team
of one thread per core spins and waits at every operator's barrier for a partner the scheduler has
parked behind other jobs.  ``trustvision.threads.configure_threads`` (run by every command) now picks
fewer threads when the process's cores are busy.  This bench runs the demo as a subprocess in each
scenario, each with a fresh model cache (cold: the demo trains its CNN) and a fresh output folder:

* ``before``: ``--threads <cores>`` and no ``OMP_WAIT_POLICY`` — what torch did before the change;
* ``after``: the default (``configure_threads()``: idle physical cores, passive waiting);
* ``alone`` / ``busy``: without / with ``--burners`` processes running ``while True: pass`` (started
  before the demo, killed after it).

A run that exceeds ``--timeout`` seconds is stopped and reported as "> timeout".  One run per
scenario; the machine's load average at each start is recorded (shared machines are noisy).

    python bench/demo.py                                   # all four scenarios, demo --n 200
    python bench/demo.py --n 50 --scenarios busy-before,busy-after --timeout 900
    python bench/demo.py --scenarios alone-after           # the README's "demo in about a minute" figure
    python bench/demo.py --device cuda --scenarios alone-after    # on a GPU machine

Writes ``bench/results/demo-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import device_name, load_average, write_results   # bench/common.py
from trustvision.threads import available_cores

BURN = "while True: pass"


def _child_cpu() -> float:
    """User + system CPU seconds of this process's reaped children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_demo(scenario: str, args, cores: int) -> dict:
    """One cold demo run in ``scenario`` (``alone-before`` ... ``busy-after``): wall seconds and exit status."""
    place, when = scenario.split("-")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "TRUSTVISION_THREADS")}
    with tempfile.TemporaryDirectory(prefix="tv-demo-bench-") as tmp:
        env["TRUSTVISION_CACHE"] = str(Path(tmp) / "cache")                    # cold: the CNN is trained
        cmd = [sys.executable, "-m", "trustvision", "demo", "--out", str(Path(tmp) / "out"), "--n", str(args.n),
               "--device", args.device]
        if when == "before":
            cmd += ["--threads", str(cores)]
        burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.burners if place == "busy" else 0)]
        try:
            time.sleep(1.0 if burners else 0.0)
            load, t0, cpu0 = load_average(), time.perf_counter(), _child_cpu()
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
                rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-400:]
            except subprocess.TimeoutExpired:
                rc, tail = None, "timed out"
            secs, cpu = time.perf_counter() - t0, _child_cpu() - cpu0      # the demo's CPU seconds (burners not reaped yet)
        finally:
            for b in burners:
                b.kill()
                b.wait()
    row = {"scenario": scenario, "n": args.n, "burners": len(burners), "seconds": secs, "cpu_seconds": cpu, "timed_out": rc is None,
           "exit_code": rc, "load_average_at_start": load, "threads_flag": cores if when == "before" else "default"}
    shown = f"> {args.timeout}" if rc is None else f"{secs:.1f}"
    print(f"{scenario:13s} {shown:>8s} s  cpu {cpu:.1f} s  exit {rc}  load {load}", flush=True)
    if rc not in (0, 1, None):
        print(tail, file=sys.stderr)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="test images the demo audits (its default: 200)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--burners", type=int, default=2, help="CPU-burning processes in the busy scenarios")
    ap.add_argument("--scenarios", default="alone-before,alone-after,busy-before,busy-after")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))        # a killed bench still stops its burners
    device, cores = torch.device(args.device), available_cores()
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "cores": cores, "load_average": load_average(), "torch": torch.__version__, "n": args.n,
            "burners": args.burners, "timeout_s": args.timeout}
    rows = [run_demo(s.strip(), args, cores) for s in args.scenarios.split(",")]
    lines = ["| scenario | demo --n | burners | threads | load average at start | wall seconds | demo CPU seconds | exit |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['scenario']} | {r['n']} | {r['burners']} | {r['threads_flag']} | {r['load_average_at_start']} | "
              f"{'> %g' % args.timeout if r['timed_out'] else '%.1f' % r['seconds']} | {r['cpu_seconds']:.1f} | "
              f"{r['exit_code']} |" for r in rows]
    md = (f"# trustvision demo wall time {meta['date']}\n\n- device: {meta['device_name']} ({device}, {cores} physical "
          f"cores available, load average {meta['load_average']} at start: a shared machine); torch {meta['torch']}\n"
          f"- command: `python bench/demo.py --n {args.n} --scenarios {args.scenarios}`; each run cold (fresh "
          "TRUSTVISION_CACHE: the demo CNN is trained) with a fresh --out; one run per scenario\n"
          f"- before: `--threads {cores}` (torch's default, no OMP_WAIT_POLICY); after: the default "
          "(`configure_threads`: idle physical cores, passive waiting); busy: beside "
          f"{args.burners} × `python -c \"{BURN}\"`\n\n" + "\n".join(lines) + "\n")
    write_results(args.out, "demo", meta, device, md, rows)


if __name__ == "__main__":
    main()
