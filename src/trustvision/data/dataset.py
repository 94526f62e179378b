"""Datasets as attacks see them: float pixels in [0, 1], NCHW, integer labels.

A :class:`Dataset` is built by the loaders of this package (:mod:`.folder`, :mod:`.npz`,
:mod:`.bundled`); it keeps, in :attr:`Dataset.info`, where its pixels came from (the file or folder,
the source dtype(s) such as ``uint8`` or ``uint16``, which array held the labels) so that a later
error (e.g. labels out of the model's range) names the culprit and the report can name the dtype.

Every problem is raised as a one-line :class:`TrustVisionError` naming the file, folder or dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError


class LabelledImages:
    """What a labelled image set answers without its pixels: size, classes, origin, seeded sampling.

    Shared by the in-memory :class:`Dataset` and the lazy :class:`~.lazy.LazyDataset`; subclasses have
    ``y`` (N,), ``labels``, ``name`` and ``info``.
    """

    y: Tensor
    labels: list[str]
    name: str
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def source_dtype(self) -> str | None:
        """The stored pixel type(s) before scaling to [0, 1] (``"uint8"``, ``"uint16"``, ...), if known
        (a lazy set knows it once decoded: its sampled :class:`Dataset` records it)."""
        return self.info.get("source_dtype")

    @property
    def origin(self) -> str:
        """How messages name this dataset: its file or folder when known, else ``dataset 'name'``."""
        return str(self.info["source"]) if self.info.get("source") else f"dataset {self.name!r}"

    def check_labels(self, num_classes: int) -> None:
        """One-line :class:`TrustVisionError` naming the source when the set has more classes than the model
        outputs or a label outside ``[0, num_classes)``."""
        where = self.origin + (f" ({self.info['labels_from']})" if self.info.get("labels_from") else "")
        if self.num_classes > num_classes:
            raise TrustVisionError(f"{where} has {self.num_classes} classes but the model outputs "
                                   f"{num_classes}; check --num-classes")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= num_classes):
            raise TrustVisionError(f"{where}: labels must lie in [0, {num_classes - 1}], "
                                   f"found {int(self.y.min())}..{int(self.y.max())}")

    def sample_indices(self, n: int | None, seed: int = 0) -> Tensor:
        """Sorted indices (n,) of a seeded random subset (all indices when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return torch.arange(len(self))
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(len(self), generator=g)[:n].sort().values


@dataclass
class Dataset(LabelledImages):
    """Images ``x`` (N, C, H, W) float32 in [0, 1] and labels ``y`` (N,) int64.

    ``info`` (JSON-able) records the origin: ``source`` (file/folder/bundled name), ``source_dtype``
    (the stored pixel type(s), e.g. ``"uint16"``; several joined by ``", "``), ``labels_from`` (e.g.
    ``"array 'y'"`` or ``"class sub-folders"``).  Any key may be missing (datasets built by hand).
    """

    x: Tensor
    y: Tensor
    labels: list[str]
    name: str = "data"
    paths: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise TrustVisionError(f"{self.origin}: images must be N,C,H,W, got {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise TrustVisionError(f"{self.origin}: {len(self.x)} images but {len(self.y)} labels")
        if not self.x.numel():
            return
        lo, hi = torch.aminmax(self.x)         # NaN propagates; no N x C x H x W temporary (isfinite makes two)
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            raise TrustVisionError(f"{self.origin}: images contain NaN or Inf")
        if lo < 0 or hi > 1:
            raise TrustVisionError(f"{self.origin}: pixel values must lie in [0, 1] "
                                   f"(found {float(lo):.3g}..{float(hi):.3g})")

    def _like(self, x: Tensor, y: Tensor, labels: list[str], paths: list[str]) -> "Dataset":
        return Dataset(x, y, labels, self.name, paths, dict(self.info))

    def subset(self, idx: Tensor | np.ndarray | list[int]) -> "Dataset":
        """The images at ``idx`` (K,), in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths else []
        return self._like(self.x[idx], self.y[idx], self.labels, paths)

    def sample(self, n: int | None, seed: int = 0) -> "Dataset":
        """A seeded random subset of ``n`` images (all of them when ``n`` is None or too large)."""
        return self if n is None or n >= len(self) else self.subset(self.sample_indices(n, seed))

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Seeded train/test split."""
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        n_test = int(round(len(self) * test_fraction))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])

    def _channels(self, channels: int) -> Tensor:
        """``x`` with ``channels`` channels: grey -> RGB replicates; RGB -> grey only when R = G = B."""
        x, c = self.x, self.x.shape[1]
        if c == channels:
            return x
        if c == 1 and channels == 3:
            return x.repeat(1, 3, 1, 1)
        if c == 3 and channels == 1 and (x.numel() == 0 or bool((x.amax(1) - x.amin(1)).max() < 1e-6)):
            return x[:, :1]
        if c == 3 and channels == 1:
            raise TrustVisionError(f"{self.origin} is colour (3 channels) but the model takes 1 channel; "
                                   "convert the images to grayscale first")
        raise TrustVisionError(f"{self.origin} has {c} channels but the model takes {channels}")

    def conform(self, channels: int, num_classes: int, size: tuple[int, int] | None = None) -> "Dataset":
        """Make the data fit a model: channel count, labels in range, optional resize to ``size`` (H, W).

        Grayscale -> RGB is unambiguous (replicate).  RGB -> grayscale is done only
        when the three channels are equal; otherwise it is an error.
        """
        x = self._channels(channels)
        self.check_labels(num_classes)
        if size and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
        labels = self.labels if self.num_classes == num_classes else \
            self.labels + [str(i) for i in range(self.num_classes, num_classes)]
        return self._like(x, self.y, labels, self.paths)
