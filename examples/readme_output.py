"""Regenerate the README's sample output from a real run of ``trustvision demo`` (and time the examples).

    python examples/readme_output.py            # fresh model cache (first-run timing: training + audit)
    python examples/readme_output.py --reuse    # reuse ~/.cache/trustvision (second-run timing)

Runs ``trustvision demo`` in a subprocess exactly as a user would (stdout not a terminal, 100 columns),
then ``examples/python_api.py``, measures both with a wall clock, and rewrites the README block between
``<!-- demo-output:start -->`` and ``<!-- demo-output:end -->`` with what the demo printed (progress lines
left out, the cache path replaced by ``~/.cache/trustvision/...``) and the measured timings, naming the
machine (CPU cores, torch threads).  Nothing is typed by hand: rerun it after any change to the demo.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- demo-output:start -->", "<!-- demo-output:end -->"
PROGRESS = re.compile(r"^\[\s*[0-9.]+s\] ")


def _child_cpu() -> float:
    """User + system CPU seconds of this process's finished children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], env: dict, cwd: Path) -> tuple[str, float, float]:
    """Run ``cmd``; return (stdout, wall seconds, CPU seconds: user + system of the child)."""
    t0, cpu0 = time.perf_counter(), _child_cpu()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    if r.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout, took, cpu


def block(stdout: str, cache: str, demo_s: float, demo_cpu: float, api_s: float, fresh: bool, speed: float) -> str:
    """The README block: the demo's output (without progress lines) and the measured timings."""
    shown = [ln.rstrip() for ln in stdout.splitlines() if not PROGRESS.match(ln)]
    text = "\n".join(shown).replace(cache, "~/.cache/trustvision")
    text = re.sub(r"^(results|report):\s+\S*/(results\.json|report\.html)$", r"\1: trustvision-demo/\2", text,
                  flags=re.M)
    cores, threads = os.cpu_count(), os.environ.get("OMP_NUM_THREADS", "default")
    load = os.getloadavg()[0]                      # other work on the machine slows the run: say how much
    run_kind = "first run: trains the CNN, then audits it" if fresh else "model reused from the cache"
    return (f"{START}\n```\n{text.strip()}\n```\n\n"
            f"Measured by `python examples/readme_output.py{'' if fresh else ' --reuse'}` on {cores} CPU cores "
            f"(OMP_NUM_THREADS={threads}, 1-minute load average {load:.1f} at the end; host speed {speed:.0f} forward+backward "
            f"images/s of the demo's CNN on one thread, `bench/floor.py`: shared hosts swing by 2x), CPU only: "
            f"`trustvision demo` took {demo_s:.0f} s "
            f"({run_kind}; {demo_cpu:.0f} CPU seconds); "
            f"`python examples/python_api.py` took {api_s:.0f} s afterwards (model reused). Progress lines "
            f"(one per step when stdout is not a terminal, bars when it is) are left out above.\n{END}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reuse", action="store_true", help="reuse the model cache instead of a fresh one")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    from floor import host_speed                   # bench/floor.py: how fast this machine is right now
    speed = host_speed()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "COLUMNS": "100", "MPLBACKEND": "Agg"}
        if not args.reuse:
            env["TRUSTVISION_CACHE"] = str(Path(tmp) / "cache")
        cache = env.get("TRUSTVISION_CACHE", str(Path.home() / ".cache" / "trustvision"))
        demo_out, demo_s, demo_cpu = run([sys.executable, "-m", "trustvision", "demo", "--out", "trustvision-demo"], env,
                                  Path(tmp))
        _, api_s, _ = run([sys.executable, str(ROOT / "examples" / "python_api.py")], env, Path(tmp))
    new = block(demo_out, cache, demo_s, demo_cpu, api_s, not args.reuse, speed)
    readme = args.readme.read_text(encoding="utf-8")
    if START not in readme or END not in readme:
        sys.exit(f"{args.readme}: markers {START} / {END} not found")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(head + new + tail, encoding="utf-8")
    print(new)


if __name__ == "__main__":
    main()
