"""Data: datasets as attacks see them (float pixels in [0, 1], NCHW, int labels) and the bundled offline sets.

:func:`load_dataset` turns a spec into a :class:`Dataset`: a class folder (:mod:`.folder`), an ``.npz``
(:mod:`.npz`), or a bundled name (:mod:`.bundled`); with ``lazy=True`` a folder becomes a
:class:`LazyDataset` (:mod:`.lazy`) that decodes only the files a sample needs (:mod:`.stream`).
Pixels are scaled by their stored type's real range (8-bit /255, 16-bit /65535, float kept in [0, 1]);
images above ``max_pixels`` pixels are refused.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TrustVisionError
from . import bundled
from .dataset import Dataset
from .folder import load_folder
from .images import IMAGE_SUFFIXES, MAX_PIXELS
from .lazy import LazyDataset, list_folder
from .npz import load_npz


def load_dataset(spec: str, *, size: tuple[int, int] | None = None, max_pixels: int | None = MAX_PIXELS,
                 skip_bad: bool = False, lazy: bool = False, workers: int = 0,
                 pin_memory: bool = False) -> Dataset | LazyDataset:
    """Load a dataset from a spec (folder, ``.npz``, or ``mnist``/``digits``/``natural``).

    Args:
        spec: the data spec.  size: (H, W) to resize folder images to (bilinear).
        max_pixels: refuse any image with more pixels than this (default :data:`MAX_PIXELS`
            = 50 000 000; ``None`` = no limit of trustvision's own, Pillow's bomb check still applies).
        skip_bad: for a folder, skip files that cannot be read as images (corrupt, unsupported pixel type,
            over ``max_pixels``) and list them in ``Dataset.info["skipped"]`` (``[{"path", "reason"}]``)
            instead of aborting on the first (``--skip-bad-images``).  Other specs ignore it.
        lazy: for a folder, return a :class:`LazyDataset` (paths and labels; no image opened until
            ``sample``/``dataset``; see ``docs/data.md``).  ``.npz`` files (memory-mapped when stored
            uncompressed) and the bundled sets are in-memory :class:`Dataset` s either way.
        workers: DataLoader worker processes decoding a lazy folder's files (``--workers``; 0 = this process).
        pin_memory: a lazy folder's decoded pixels land in pinned memory (for a CUDA model).

    Returns:
        A :class:`Dataset` (x (N, C, H, W) float32 in [0, 1], y (N,) int64), or a :class:`LazyDataset`.
    """
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise TrustVisionError(f"max_pixels (--max-pixels) must be a positive integer, got {max_pixels!r}")
    if spec in bundled.NAMES:
        return bundled.load(spec)
    path = Path(spec)
    if not path.exists():
        raise TrustVisionError(f"{spec}: no such file or folder (or bundled set: {', '.join(bundled.NAMES)})")
    if path.is_dir() and lazy:
        return list_folder(path, size, max_pixels=max_pixels, skip_bad=skip_bad, workers=workers,
                           pin_memory=pin_memory)
    if path.is_dir():
        return load_folder(path, size, max_pixels=max_pixels, skip_bad=skip_bad)
    if path.suffix.lower() == ".npz":
        return load_npz(path, max_pixels=max_pixels)
    raise TrustVisionError(f"{spec}: unsupported data spec (use a class folder, an .npz with x/y, "
                           f"or one of {', '.join(bundled.NAMES)})")


__all__ = ["Dataset", "IMAGE_SUFFIXES", "LazyDataset", "MAX_PIXELS", "bundled", "list_folder", "load_dataset",
           "load_folder", "load_npz"]
