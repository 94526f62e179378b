"""Scale: the same commands on one process or many (torchrun, DDP, gloo/nccl) — :mod:`.dist`.

See ``docs/distributed.md``.
"""
from .dist import SINGLE, Dist, current, init, shutdown

__all__ = ["SINGLE", "Dist", "current", "init", "shutdown"]
