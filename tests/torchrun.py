"""Launch ``python -m trustvision ...`` under torchrun with N gloo processes on the CPU (tests of docs/distributed.md).

One thread per rank (``OMP_NUM_THREADS=1``) so 2 ranks fit the 2-core CI machine; ``--standalone``
picks a free rendezvous port, so concurrent test workers do not collide.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence


def torchrun(nproc: int, argv: Sequence[str], *, timeout: int = 600,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nproc-per-node nproc -m trustvision *argv``; returns the finished process."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "trustvision", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=timeout)
