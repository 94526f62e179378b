"""torchrun helpers: one code path for 1 process and for ``torchrun --nproc-per-node N``.

Used by training (DDP), the audit, UAP generation and Raw Zero-Shot (``docs/distributed.md``).
``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init` reads them and starts a process group (``nccl`` on CUDA, ``gloo`` on the CPU).
Without them it returns a single-process :class:`Dist` and nothing is initialised, so the trainer
never needs a special case.  Rank 0 writes files (:attr:`Dist.main`); metrics are summed across
ranks with :meth:`Dist.sum`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from ..errors import TrustVisionError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: ``rank`` of ``world`` processes; ``device`` to run on."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world > 1 and tdist.is_available() and tdist.is_initialized()

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over all ranks (a copy; ``t`` itself when single-process)."""
        if not self.active:
            return t
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        """Wait for every rank (no-op single-process)."""
        if self.active:
            tdist.barrier()

    def gather(self, obj: T) -> list[T]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` single-process).

        For small, picklable results (per-image masks, metrics, CPU tensors of a shard): it goes
        through ``all_gather_object``, so tensors should be on the CPU.
        """
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (``obj`` itself single-process)."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def owns(self, block: int) -> bool:
        """True when this rank runs block ``block`` of a list split into blocks (round-robin: ``block % world``)."""
        return block % self.world == self.rank

    def raise_together(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank met an error (so none waits forever in a later collective).

        Each rank passes its own error or None; the first rank's error (by rank) is re-raised as a
        :class:`TrustVisionError` naming that rank, or as itself single-process.
        """
        if not self.active:
            if error is not None:
                raise error
            return
        errors = self.gather(None if error is None else str(error))
        for rank, msg in enumerate(errors):
            if msg is not None:
                raise TrustVisionError(msg if rank == self.rank else f"rank {rank}: {msg}")


SINGLE = Dist()     # the single-process default
_CURRENT: list[Dist] = [SINGLE]


def current() -> Dist:
    """The process group description set by :func:`init` (``SINGLE`` before any, or after :func:`shutdown`).

    Library code that shards work (``attacks.runner.run_batched``, ``batching``) reads it, so the
    sections need no ``dist`` argument: under torchrun every rank runs the same section code and the
    batches are split among them.
    """
    return _CURRENT[0]


@contextlib.contextmanager
def local():
    """Within the block, :func:`current` describes a single process (on this rank's device).

    For work one rank does alone while the others do other work (a zero-shot job, a model each): library
    code that splits batches across ranks (``run_batched``) must not wait there for ranks that never come.
    """
    outer = _CURRENT[0]
    _CURRENT[0] = Dist(0, 1, outer.device)
    try:
        yield _CURRENT[0]
    finally:
        _CURRENT[0] = outer


def init(device: str = "cpu") -> Dist:
    """Join the torchrun process group if the environment describes one, else a single-process :class:`Dist`.

    ``device="cuda"`` under torchrun selects ``cuda:LOCAL_RANK``.  Idempotent: a second call returns the
    same description without re-initialising.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrustVisionError("--device cuda given but no CUDA device is available")
        dev = torch.device("cuda", local if world > 1 else (dev.index or 0))
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        if not tdist.is_available():
            raise TrustVisionError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
        tdist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    _CURRENT[0] = Dist(rank, world, dev)
    return _CURRENT[0]


def shutdown() -> None:
    """Leave the process group (safe to call when none was started)."""
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()
    _CURRENT[0] = SINGLE
