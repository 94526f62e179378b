"""Lazy datasets: file paths and labels now, pixels only for the files a sample needs (issue 16).

``load_dataset(folder, lazy=True)`` lists ``root/<class>/<image>`` (names and sizes on disk, no image is
opened) and returns a :class:`LazyDataset`.  It answers the calls the commands make on a
:class:`~.dataset.Dataset` — ``len``, ``labels``, ``num_classes``, ``conform(channels, num_classes, size)``,
``sample(n, seed)`` — and decodes only when pixels are needed: ``sample`` picks its indices with exactly
the rule of :meth:`Dataset.sample_indices` (a seeded ``randperm`` over all N, the first n, sorted), decodes
those files through a ``DataLoader`` (:mod:`.stream`: ``workers`` processes, pinned output on CUDA) and
returns an ordinary in-memory :class:`Dataset` of the sample, bit-identical to
``load_folder(...).conform(...).sample(n, seed)`` for a folder without unreadable files.

Unreadable files (corrupt, unsupported pixel type, over ``max_pixels``): by default the first one met is a
one-line error naming it (the strict mode, as ``load_folder``); with ``skip_bad`` (``--skip-bad-images``)
each one is listed in ``info["skipped"]`` and replaced by the next file of the same seeded permutation, so
a sample keeps its ``n`` images while the folder has enough readable ones.  Only opened files can be
found bad: ``skipped`` lists the bad files the sample met, not every bad file of the folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import TrustVisionError
from .dataset import Dataset, LabelledImages
from .folder import class_files
from .images import MAX_PIXELS
from .stream import Decoded, Decoder, assemble, decode, merge

__all__ = ["LazyDataset", "list_folder"]


@dataclass
class LazyDataset(LabelledImages):
    """Image files ``paths`` (N,) with labels ``y`` (N,) int64 and class names; nothing decoded yet.

    ``size`` (H, W): resize on decode (bilinear, clamped) like ``load_folder(size=...)``; ``max_pixels``
    and ``skip_bad`` as for :func:`~.folder.load_folder`; ``workers``: DataLoader worker processes (0 =
    decode in this process); ``pin_memory``: return the decoded pixels in pinned memory (CUDA targets).
    ``channels`` / ``conform_size`` are set by :meth:`conform` and applied at decode time.
    """

    paths: list[str]
    y: Tensor
    labels: list[str]
    name: str = "data"
    info: dict[str, Any] = field(default_factory=dict)
    max_pixels: int | None = MAX_PIXELS
    size: tuple[int, int] | None = None
    skip_bad: bool = False
    workers: int = 0
    pin_memory: bool = False
    channels: int | None = None
    conform_size: tuple[int, int] | None = None
    _all: Dataset | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.y):
            raise TrustVisionError(f"{self.origin}: {len(self.paths)} files but {len(self.y)} labels")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise TrustVisionError(f"workers (--workers) must be an integer >= 0, got {self.workers!r}")

    # ------------------------------------------------------------ index-only operations (nothing decoded)
    def subset(self, idx: Tensor | np.ndarray | list[int]) -> "LazyDataset":
        """The files at ``idx`` (K,), in that order, still lazy."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        return replace(self, paths=[self.paths[i] for i in idx.tolist()], y=self.y[idx], info=dict(self.info),
                       _all=None)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["LazyDataset", "LazyDataset"]:
        """Seeded train/test split (the rule of :meth:`Dataset.split`), both still lazy."""
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        n_test = int(round(len(self) * test_fraction))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])

    def conform(self, channels: int, num_classes: int, size: tuple[int, int] | None = None) -> "LazyDataset":
        """Check the classes and labels now; record the channel count and ``size`` (H, W) to apply on decode.

        The rules of :meth:`Dataset.conform`: grey -> RGB replicates; RGB -> grey only when R = G = B (an
        error naming the first colour file otherwise, raised when that file is decoded).
        """
        if channels not in (1, 3):
            raise TrustVisionError(f"{self.origin} holds 1- or 3-channel images but the model takes {channels}")
        self.check_labels(num_classes)
        labels = self.labels + [str(i) for i in range(self.num_classes, num_classes)]
        return replace(self, labels=labels, channels=channels, info=dict(self.info), _all=None,
                       conform_size=tuple(size) if size else self.conform_size)

    # ------------------------------------------------------------ decoding
    def sample(self, n: int | None, seed: int = 0) -> Dataset:
        """Decode a seeded random subset of ``n`` files (all when ``n`` is None or too large) into a :class:`Dataset`.

        Returns x (n, C, H, W) float32 in [0, 1], y (n,), the files' ``paths`` and ``info`` (with
        ``skipped`` when ``skip_bad``).  Under torchrun each rank decodes a share and all hold the result.
        """
        if n is None or n >= len(self):
            return self.dataset()
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self._decode(perm[:n].sort().values.tolist(), perm[n:].tolist())

    def dataset(self) -> Dataset:
        """Every file decoded into one in-memory :class:`Dataset` (through the same DataLoader path; cached).

        This holds all N images in memory (N x C x H x W x 4 bytes): sample first when N is large.
        """
        if self._all is None:
            self._all = self._decode(list(range(len(self))), [])
        return self._all

    @property
    def x(self) -> Tensor:
        """All pixels (N', C, H, W): decodes EVERY file (see :meth:`dataset`); N' < N when files were skipped."""
        return self.dataset().x

    def _decode(self, rows: list[int], spare: Sequence[int]) -> Dataset:
        """Decode ``rows`` (sorted); with ``skip_bad`` each unreadable one is replaced by the next of ``spare``."""
        decoder = Decoder(self.max_pixels, self.size, self.conform_size, rgb=self.channels == 3)
        got, todo, spare = Decoded(), rows, list(spare)
        while todo:
            part = decode(self.paths, todo, decoder, workers=self.workers, fail_fast=not self.skip_bad)
            if part.errors and not self.skip_bad:
                row, reason = part.errors[0]
                raise TrustVisionError(f"{self.paths[row]}: {reason}")
            got = merge([got, part])
            todo, spare = sorted(spare[:len(part.errors)]), spare[len(part.errors):]
        kept = sorted(got.dtypes)
        if not kept:
            row, reason = got.errors[0]
            raise TrustVisionError(f"{self.origin}: none of the {len(got.errors)} image files read could be "
                                   f"decoded (first: {self.paths[row]}: {reason})")
        x = assemble(got, kept, self.paths, channels=self.channels, sized=bool(self.size),
                     pin_memory=self.pin_memory)
        info = {**self.info, "source_dtype": ", ".join(sorted(set(got.dtypes.values())))}
        if self.skip_bad:
            info["skipped"] = [{"path": self.paths[r], "reason": why} for r, why in got.errors]
        return Dataset(x, self.y[kept], list(self.labels), self.name, [self.paths[r] for r in kept], info)


def list_folder(root: Path, size: tuple[int, int] | None = None, *, max_pixels: int | None = MAX_PIXELS,
                skip_bad: bool = False, workers: int = 0, pin_memory: bool = False) -> LazyDataset:
    """List ``root/<class>/<image>`` as a :class:`LazyDataset`: paths (N,) and labels (N,), no image opened.

    The class rules of :func:`~.folder.load_folder` (sorted class folders, an empty class folder is an error);
    ``sample``/``dataset`` decode with its pixel rules (``size``, ``max_pixels``, ``skip_bad``).
    """
    root = Path(root)
    classes, files = class_files(root)
    paths = [str(f) for fs in files for f in fs]
    y = torch.tensor([k for k, fs in enumerate(files) for _ in fs], dtype=torch.long)
    info = {"source": str(root), "labels_from": "class sub-folders"}
    return LazyDataset(paths, y, classes, root.name, info, max_pixels=max_pixels,
                       size=tuple(size) if size else None, skip_bad=skip_bad, workers=workers, pin_memory=pin_memory)
