"""Scale: the same commands on one process or many (torchrun, DDP, gloo/nccl) — :mod:`.dist`, :mod:`.shard`.

See ``docs/distributed.md``.
"""
from .dist import SINGLE, Dist, current, init, local, shutdown
from .shard import map_batches

__all__ = ["SINGLE", "Dist", "current", "init", "local", "map_batches", "shutdown"]
