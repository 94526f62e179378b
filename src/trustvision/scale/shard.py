"""Split a list of device batches across torchrun ranks and gather the results in global order.

The one helper behind every distributed per-image loop of the audit (``attacks.runner.run_batched``,
the clean pass): the batches are exactly those of a single-process run (same composition, same order,
the same per-call seeds inside each attack), rank ``r`` runs batch ``b`` when ``b % world == r``
(:meth:`~.dist.Dist.owns`), and the per-batch results — small CPU objects: tensors of one batch — are
all-gathered (:meth:`~.dist.Dist.gather`) and put back in batch order.  So every rank returns the same
list a single process would have built, and 1 rank and N ranks give identical per-image results
(``docs/distributed.md``, "The audit").

Errors: a batch that raises on one rank is caught, the ranks meet in the gather anyway; that rank
re-raises its own error and every other rank a one-line :class:`~trustvision.errors.TrustVisionError`
naming the failing rank, so no rank waits forever in a later collective.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from ..errors import TrustVisionError
from .dist import current

T = TypeVar("T")


class _Failed:
    """A batch that raised on its rank: the message travels in the gather instead of the result."""

    def __init__(self, error: BaseException) -> None:
        self.error: BaseException | None = error       # dropped before the gather (not always picklable)
        self.message = str(error) if isinstance(error, TrustVisionError) else f"{type(error).__name__}: {error}"


def map_batches(fn: Callable[[int], T], n_batches: int, advance: Callable[[int], None] | None = None) -> list[T]:
    """``[fn(0), fn(1), ..., fn(n_batches - 1)]``, the calls split across the ranks of :func:`~.dist.current`.

    Single-process (or a world of one) it is a plain loop.  Under torchrun each rank calls ``fn`` on the
    batches it owns (round-robin) and the results are gathered on every rank, so each rank returns the
    whole list.  ``fn(b)`` must return something small and picklable with CPU tensors (the gather
    pickles it); it must depend on ``b`` only, not on the batches run before it on the same rank.

    Args:
        fn: batch index -> result (e.g. the :class:`~trustvision.attacks.base.AttackResult` of batch ``b``).
        n_batches: how many batches.
        advance: a progress callback, called with 1 after each local batch and, on the main rank, with
            the number of batches the other ranks ran once they are gathered (a bar completes on rank 0).
    Returns: the ``n_batches`` results in batch order (the same list on every rank).
    """
    d = current()
    if not d.active:
        out = []
        for b in range(n_batches):
            out.append(fn(b))
            if advance:
                advance(1)
        return out
    mine: dict[int, T] | _Failed = {}
    try:
        for b in range(n_batches):
            if d.owns(b):
                mine[b] = fn(b)
                if advance:
                    advance(1)
    except Exception as e:             # noqa: BLE001  (meet the other ranks, then raise on all of them)
        mine = _Failed(e)
    own = mine.error if isinstance(mine, _Failed) else None
    if isinstance(mine, _Failed):
        mine.error = None
    parts = d.gather(mine)
    if own is not None:
        raise own                      # this rank's own error, with its traceback
    for rank, part in enumerate(parts):
        if isinstance(part, _Failed):
            raise TrustVisionError(f"rank {rank}: {part.message}")
    merged: dict[int, T] = {}
    for part in parts:
        merged.update(part)            # type: ignore[arg-type]
    if advance and d.main:
        advance(n_batches - len(parts[d.rank]))    # type: ignore[arg-type]
    return [merged[b] for b in range(n_batches)]
