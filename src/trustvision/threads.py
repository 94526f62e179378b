"""CPU threads for torch: a sensible default, ``--threads`` / ``TRUSTVISION_THREADS``, and no collapse when busy.

torch's CPU kernels run on an OpenMP team of ``torch.get_num_threads()`` threads; every operator is a
parallel region that ends when the *last* thread of the team finishes.  On a quiet machine a team of
one thread per physical core is the fastest choice.  On a busy machine (other jobs, a shared CI
runner) the scheduler parks some team members behind other processes for a whole time slice while
the rest spin and wait at the region's barrier — a small CNN runs thousands of short regions a
second, so a 2-thread audit beside two CPU-bound jobs on 2 cores ran 15-20x slower than alone
(issue 19; ``python bench/demo.py``), although it got most of one core.  A team of one never waits
for a descheduled partner.

:func:`configure_threads` (called by the CLI before any heavy work, never at import) therefore sets

* ``n`` threads when given (``--threads N``), else ``$TRUSTVISION_THREADS`` when set, else
  ``$OMP_NUM_THREADS`` when it is a plain count (torch obeys it too; torchrun sets it to 1 per process);
* else the physical cores available to the process (its CPU affinity, ``os.sched_getaffinity``, one
  per physical core, capped by a cgroup CPU quota), reduced to the cores that are *idle now* — measured
  over :data:`SAMPLE_S` seconds from ``/proc/stat`` for the process's CPUs (the 1-minute load average
  where ``/proc/stat`` is missing) — and never below 1.

It also asks OpenMP for passive waiting (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose a policy;
OpenMP reads that variable when its runtime starts, so it takes effect for child processes and for
programs that call this before importing torch, and the thread count above is the protection that
always applies.  Library users call ``configure_threads()`` themselves; importing trustvision changes
nothing.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TrustVisionError

__all__ = ["ENV", "SAMPLE_S", "ThreadChoice", "available_cores", "configure_threads", "idle_cores"]

ENV = "TRUSTVISION_THREADS"
SAMPLE_S = 0.25


@dataclass(frozen=True)
class ThreadChoice:
    """What :func:`configure_threads` chose: ``threads`` and why (``"--threads"``, the env var, ``"cores"``
    or ``"busy"``), with the ``cores`` available and the ``idle`` cores measured (None when not measured)."""

    threads: int
    reason: str
    cores: int
    idle: float | None = None


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _quota() -> float | None:
    """CPUs granted by a cgroup-v2 quota (``cpu.max``), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Physical cores this process may run on: its affinity CPUs, one per (package, core), capped by a quota."""
    cpus, cores = _cpus(), set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(c)))                     # no topology: count logical CPUs
    n, quota = len(cores) or 1, _quota()
    return max(1, min(n, math.ceil(quota)) if quota else n)


def _cpu_times(cpus: list[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies summed over ``cpus`` from /proc/stat, None where unavailable."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    want, busy, total = {f"cpu{c}" for c in cpus}, 0.0, 0.0
    for line in lines:
        name, *vals = line.split()
        if name in want:
            v = [float(t) for t in vals[:8]]
            total += sum(v)
            busy += sum(v) - v[3] - v[4]                   # idle and iowait are not busy
    return (busy, total) if total else None


def idle_cores(sample_s: float = SAMPLE_S) -> float | None:
    """Cores of this process's CPUs left idle by the whole machine over the next ``sample_s`` seconds.

    From two ``/proc/stat`` readings (busy share of the affinity CPUs); where that is missing, the number
    of CPUs minus the 1-minute load average.  None when neither is available.
    """
    cpus = _cpus()
    first = _cpu_times(cpus)
    if first is not None:
        time.sleep(sample_s)
        second = _cpu_times(cpus)
        if second is not None and second[1] > first[1]:
            busy = (second[0] - first[0]) / (second[1] - first[1])
            return max(0.0, len(cpus) * (1.0 - busy))
    try:
        return max(0.0, len(cpus) - os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _requested(n: int | str | None) -> tuple[int | None, str]:
    source = "--threads"
    if n is None and os.environ.get(ENV, "").strip():
        n, source = os.environ[ENV].strip(), ENV
    if n is None:
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        # torch itself obeys OMP_NUM_THREADS, and torchrun sets it to 1 per process when it starts several: an
        # explicit plain count is the user's (or the launcher's) choice; other OpenMP forms ("4,2") are left alone
        return (int(omp), "OMP_NUM_THREADS") if omp.isdigit() and int(omp) >= 1 else (None, "")
    try:
        value = int(n)
    except (TypeError, ValueError):
        value = 0
    if isinstance(n, bool) or value < 1 or str(n).strip() != str(value):
        raise TrustVisionError(f"{source} must be an integer >= 1, got {n!r}")
    return value, source


def configure_threads(n: int | str | None = None, *, sample_s: float = SAMPLE_S) -> ThreadChoice:
    """Set torch's CPU threads (``torch.set_num_threads``) before heavy work; returns the :class:`ThreadChoice`.

    ``n`` (``--threads``) wins, then ``$TRUSTVISION_THREADS``, then a plain ``$OMP_NUM_THREADS``; otherwise the
    physical cores available,
    reduced to the idle ones (rounded, at least 1) when other processes keep them busy.  Also sets
    ``OMP_WAIT_POLICY=PASSIVE`` in the environment unless already set (see the module docstring).
    A bad value is a one-line :class:`~trustvision.errors.TrustVisionError` naming ``--threads`` or the variable.
    """
    value, source = _requested(n)
    cores = available_cores()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if value is not None:
        choice = ThreadChoice(value, source, cores)
    else:
        idle = idle_cores(sample_s) if cores > 1 else None
        busy = idle is not None and idle < cores - 0.5
        threads = max(1, min(cores, int(idle + 0.5))) if busy else cores
        choice = ThreadChoice(threads, "busy" if busy else "cores", cores, idle)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    return choice
