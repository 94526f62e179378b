"""Data: datasets as attacks see them (float pixels in [0, 1], NCHW, int labels) and the bundled offline sets.

:func:`load_dataset` turns a spec into a :class:`Dataset`: a class folder, an ``.npz``, or a bundled name.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TrustVisionError
from . import bundled
from .dataset import IMAGE_SUFFIXES, Dataset, load_folder, load_npz


def load_dataset(spec: str, *, size: tuple[int, int] | None = None) -> Dataset:
    """Load a dataset from a spec (folder, ``.npz``, or ``mnist``/``digits``/``natural``)."""
    if spec in bundled.NAMES:
        return bundled.load(spec)
    path = Path(spec)
    if not path.exists():
        raise TrustVisionError(f"{spec}: no such file or folder (or bundled set: {', '.join(bundled.NAMES)})")
    if path.is_dir():
        return load_folder(path, size)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    raise TrustVisionError(f"{spec}: unsupported data spec (use a class folder, an .npz with x/y, "
                           f"or one of {', '.join(bundled.NAMES)})")


__all__ = ["Dataset", "IMAGE_SUFFIXES", "bundled", "load_dataset", "load_folder", "load_npz"]
