"""Benchmark: ``trustvision demo`` wall and CPU time, cold, alone and beside CPU-burning processes.

Issue 19: on a busy 2-core machine the demo took 19-27 minutes instead of about one: torch's OpenMP team
of one thread per core spins and waits at every operator's barrier for a partner the scheduler has
parked behind other jobs.  ``trustvision.threads.configure_threads`` (run by every command) now picks
fewer threads when the process's cores are busy.  This bench runs the demo as a subprocess in each
scenario, each with a fresh model cache (cold: the demo trains its CNN) and a fresh output folder:

* ``before``: ``--threads <cores>`` and no ``OMP_WAIT_POLICY`` — what torch did before the change;
* ``after``: the default (``configure_threads()``: idle physical cores, passive waiting);
* ``alone`` / ``busy``: without / with ``--burners`` processes running ``while True: pass`` (started
  before the demo, killed after it).

Each scenario runs once per demo setting of ``--settings``: ``quick`` (the default since issue 19: CW with 3
binary-search steps from c = 0.1, the convergence check's PGD at 2x steps and 2 restarts) and ``thorough``
(``trustvision demo --thorough``: the former 5 steps from c = 1e-3, 5x steps and 3 restarts); the robust
accuracies, verdict and soundness flags of each run are printed beside its times, so that the two settings'
conclusions can be compared.  ``--threads N`` pins every run's torch threads (``--threads 1`` makes CPU
seconds comparable on a shared machine; it overrides the before/after thread choice).

Every row carries the host's speed measured just before its run (``floor.host_speed``, forward+backward
images per second of the demo's architecture on one thread): on a shared host the same demo took 55 s and
117 s an hour apart, with every stage slower by the same factor.  Wall seconds measure the machine as much
as the demo when other jobs run; CPU seconds (user + system of
the demo process, ``getrusage(RUSAGE_CHILDREN)``) much less so.  A run that exceeds ``--timeout`` seconds is
stopped and reported as "> timeout".  The machine's load average at each start is recorded.  Rows of an
earlier run of the same day and device are kept unless the same (scenario, settings) ran again.

    python bench/demo.py                                   # all four scenarios, demo --n 200
    python bench/demo.py --n 50 --scenarios busy-before,busy-after --timeout 900
    python bench/demo.py --scenarios alone-after --settings quick      # the README's demo time
    python bench/demo.py --scenarios alone-after --settings quick,thorough --threads 1   # CPU s, conclusions
    python bench/demo.py --device cuda --scenarios alone-after    # on a GPU machine

Writes ``bench/results/demo-<YYYY-MM-DD>-<device>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
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
from floor import host_speed
from trustvision.threads import available_cores

BURN = "while True: pass"


def _child_cpu() -> float:
    """User + system CPU seconds of this process's reaped children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def conclusions(out: Path) -> dict:
    """What a reader of the demo concludes, from ``out/results.json``: verdict, flags, clean and worst-case accuracy."""
    try:
        r = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    rob = r["sections"]["robustness"]
    worst = rob["metrics"]["worst_case_robust_accuracy"]
    return {"verdict": (r.get("headline") or {}).get("verdict") or r.get("verdict"),
            "flags": sorted(f["code"] for f in rob.get("flags", [])),
            "clean": rob["metrics"]["clean_accuracy"],
            "worst": {norm: [round(v, 3) for e, v in sorted(c.items(), key=lambda kv: float(kv[0])) if float(e) > 0]
                      for norm, c in worst.items()}}


def run_demo(scenario: str, settings: str, args, cores: int) -> dict:
    """One cold demo run in ``scenario`` (``alone-before`` ... ``busy-after``) with ``settings`` (quick, thorough)."""
    place, when = scenario.split("-")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "TRUSTVISION_THREADS")}
    with tempfile.TemporaryDirectory(prefix="tv-demo-bench-") as tmp:
        env["TRUSTVISION_CACHE"] = str(Path(tmp) / "cache")                    # cold: the CNN is trained
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "trustvision", "demo", "--out", str(out), "--n", str(args.n),
               "--device", args.device] + (["--thorough"] if settings == "thorough" else [])
        threads = args.threads if args.threads else (cores if when == "before" else None)
        if threads:
            cmd += ["--threads", str(threads)]
        burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(args.burners if place == "busy" else 0)]
        try:
            time.sleep(1.0 if burners else 0.0)
            speed = host_speed()
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
        seen = conclusions(out)
    row = {"scenario": scenario, "settings": settings, "n": args.n, "burners": len(burners), "seconds": secs,
           "cpu_seconds": cpu, "timed_out": rc is None, "exit_code": rc, "load_average_at_start": load,
           "host_fwd_bwd_per_s": round(speed),
           "threads_flag": threads or "default", "command": " ".join(["trustvision"] + cmd[3:]), **seen}
    shown = f"> {args.timeout}" if rc is None else f"{secs:.1f}"
    print(f"{scenario:13s} {settings:9s} {shown:>8s} s  cpu {cpu:.1f} s  exit {rc}  load {load}  "
          f"host {speed:.0f} fwd+bwd/s  {seen}", flush=True)
    if rc not in (0, 1, None):
        print(tail, file=sys.stderr)
    return row


def _merged(path: Path, rows: list[dict]) -> list[dict]:
    """``rows`` plus the rows of an earlier result file ``path`` whose (scenario, settings) did not run again."""
    try:
        old = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return rows
    new = {(r["scenario"], r["settings"]) for r in rows}
    return [r for r in old if (r["scenario"], r.get("settings", "thorough")) not in new] + rows


def _table(rows: list[dict], timeout: float) -> list[str]:
    lines = ["| scenario | settings | demo --n | burners | threads | load average at start | host speed (fwd+bwd/s) | "
             "wall seconds | demo CPU seconds | exit | verdict | flags | clean | worst case L∞ / L2 |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|---|"]
    for r in rows:
        worst = r.get("worst") or {}
        cpu = r.get("cpu_seconds")
        lines.append(
            f"| {r['scenario']} | {r.get('settings', 'thorough')} | {r['n']} | {r['burners']} | {r['threads_flag']} | "
            f"{r['load_average_at_start']} | {r.get('host_fwd_bwd_per_s', '–')} | "
            f"{'> %g' % timeout if r['timed_out'] else '%.1f' % r['seconds']} | "
            f"{'–' if cpu is None else '%.1f' % cpu} | {r['exit_code']} | {r.get('verdict', '–')} | "
            f"{', '.join(r.get('flags') or []) or '–'} | {r.get('clean', '–')} | "
            f"{worst.get('linf', '–')} / {worst.get('l2', '–')} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="test images the demo audits (its default: 200)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--burners", type=int, default=2, help="CPU-burning processes in the busy scenarios")
    ap.add_argument("--scenarios", default="alone-before,alone-after,busy-before,busy-after")
    ap.add_argument("--settings", default="quick", help="comma list: quick (the demo's default), thorough (--thorough)")
    ap.add_argument("--threads", type=int, default=None, help="pin every run to N torch threads (CPU-time comparisons)")
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))        # a killed bench still stops its burners
    device, cores = torch.device(args.device), available_cores()
    meta = {"date": dt.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
            "cores": cores, "load_average": load_average(), "torch": torch.__version__, "n": args.n,
            "burners": args.burners, "timeout_s": args.timeout}
    rows = [run_demo(s.strip(), k.strip(), args, cores) for s in args.scenarios.split(",")
            for k in args.settings.split(",")]
    slug = "cpu" if device.type == "cpu" else None
    rows = _merged(args.out / f"demo-{meta['date']}-{slug}.json", rows) if slug else rows
    md = (f"# trustvision demo wall and CPU time {meta['date']}\n\n- device: {meta['device_name']} ({device}, {cores} "
          f"physical cores available, load average {meta['load_average']} at the last run's start: a shared machine); "
          f"torch {meta['torch']}\n"
          f"- last command: `python bench/demo.py --n {args.n} --scenarios {args.scenarios} --settings {args.settings}"
          f"{' --threads %d' % args.threads if args.threads else ''}`; each row's demo command is in the .json; "
          "each run cold (fresh TRUSTVISION_CACHE: the demo CNN is trained) with a fresh --out; one run per row\n"
          f"- before: `--threads {cores}` (torch's default, no OMP_WAIT_POLICY); after: the default "
          "(`configure_threads`: idle physical cores, passive waiting); busy: beside "
          f"{args.burners} × `python -c \"{BURN}\"`; settings: quick (default) or thorough (`--thorough`); rows "
          "without a settings column value ran before the quick settings existed (thorough)\n"
          "- demo CPU seconds: user + system of the demo process; on a shared machine they are the comparable "
          "figure, wall seconds are not\n\n" + "\n".join(_table(rows, args.timeout)) + "\n")
    write_results(args.out, "demo", meta, device, md, rows)


if __name__ == "__main__":
    main()
