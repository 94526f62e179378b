"""``.npz`` files: arrays ``x`` (images), ``y`` (N,) integer labels, optional ``labels`` (class names).

Accepted layouts of ``x`` — a layout is taken only when the shape leaves no doubt:

* ``(N, C, H, W)`` or ``(N, H, W, C)`` with C in {1, 3}: axis 1 or axis 3 has size 1 or 3 — exactly one
  of them (``(N, 3, 32, 3)`` is refused as ambiguous; 4 channels, e.g. RGBA, are refused);
* ``(N, H, W)`` grey: H and W both >= :data:`MIN_SIDE` (6) and neither more than :data:`MAX_ASPECT` (8)
  times the other — so ``(12, 32, 5)`` (tabular or time-series data, or one 32x5 RGB-like image) is refused
  instead of being audited as twelve 32x5 images;
* in every layout the images are at least :data:`MIN_SIDE` pixels on each side.

Pixel types: ``uint8`` (/255), ``uint16`` (/65535), float in [0, 1] (kept).  The source dtype is recorded in
``Dataset.info["source_dtype"]``.  Every refusal is one line naming the file and the array (``x``, ``y``).

``x`` is memory-mapped when the archive stores it uncompressed (``numpy.savez``; :func:`mapped`): the
stored pixels are then read from the page cache as they are converted, never copied whole into memory;
the float32 pixels of the :class:`Dataset` (N x C x H x W x 4 bytes) are.  ``savez_compressed`` archives
are decompressed into memory first.
"""
from __future__ import annotations

import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import TrustVisionError
from .dataset import Dataset
from .images import MAX_PIXELS, SCALE, check_pixels

MIN_SIDE = 6
MAX_ASPECT = 8
ACCEPTED = (f"(N,H,W) grey with H,W >= {MIN_SIDE} and aspect within {MAX_ASPECT}:1, "
            f"(N,C,H,W) or (N,H,W,C) with C in {{1, 3}} on exactly one of axes 1 and 3 and H,W >= {MIN_SIDE}")

__all__ = ["ACCEPTED", "MAX_ASPECT", "MIN_SIDE", "layout", "load_npz", "mapped"]


def layout(shape: tuple[int, ...]) -> str | None:
    """``"NHW"``, ``"NCHW"`` or ``"NHWC"`` when ``shape`` is clearly that layout (see the module doc), else None."""
    if len(shape) == 3:
        h, w = shape[1:]
        ok = min(h, w) >= MIN_SIDE and max(h, w) <= MAX_ASPECT * min(h, w)
        return "NHW" if ok else None
    if len(shape) != 4:
        return None
    lead, trail = shape[1] in (1, 3), shape[3] in (1, 3)
    if lead == trail:                                  # neither axis is a channel axis, or both could be
        return None
    h, w = (shape[2], shape[3]) if lead else (shape[1], shape[2])
    return ("NCHW" if lead else "NHWC") if min(h, w) >= MIN_SIDE else None


def _pixels(x: np.ndarray, where: str) -> Tensor:
    """``x`` (N, C, H, W) uint8 / uint16 / float -> float32 tensor in [0, 1]."""
    if x.dtype.kind == "u" and x.dtype.itemsize in (1, 2):        # any byte order
        x = np.ascontiguousarray(x, dtype=np.uint8 if x.dtype.itemsize == 1 else np.uint16)
        with warnings.catch_warnings():           # a read-only memory map: .float() below copies it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(x).float() / SCALE[x.dtype.name]
    if not np.issubdtype(x.dtype, np.floating):
        raise TrustVisionError(f"{where}: x must be uint8, uint16 or float in [0, 1], got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    t = torch.from_numpy(x if x.flags.writeable else np.array(x))  # never a tensor on a read-only map
    if not torch.isfinite(t).all():
        raise TrustVisionError(f"{where}: x contains NaN or Inf")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise TrustVisionError(f"{where}: float pixels must lie in [0, 1] (found {float(t.min()):.3g}.."
                               f"{float(t.max()):.3g}); store uint8/uint16 or scale to [0, 1]")
    return t


def _to_nchw(x: np.ndarray, where: str, max_pixels: int | None = MAX_PIXELS) -> Tensor:
    """``x`` in an accepted layout -> (N, C, H, W) float32 in [0, 1]; any other shape is refused."""
    kind = layout(tuple(x.shape))
    if kind is None:
        raise TrustVisionError(f"{where}: x has shape {tuple(x.shape)}, which is not clearly an image batch; "
                               f"accepted layouts: {ACCEPTED}")
    x = x[:, None] if kind == "NHW" else (x.transpose(0, 3, 1, 2) if kind == "NHWC" else x)
    check_pixels(f"{where} (x)", x.shape[2], x.shape[3], max_pixels)
    return _pixels(x, where)


def _labels_from(y: np.ndarray, where: str) -> Tensor:
    """``y`` (N,) integer labels >= 0 -> int64 tensor."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TrustVisionError(f"{where}: y must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise TrustVisionError(f"{where}: labels in y must be >= 0, found {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def mapped(path: Path, member: str = "x.npy") -> np.memmap | None:
    """``member`` of the ``.npz`` at ``path`` memory-mapped read-only, or None when it cannot be.

    ``np.load(..., mmap_mode="r")`` maps plain ``.npy`` files only; an ``.npz`` member can be mapped when it is
    stored uncompressed (``numpy.savez``, not ``savez_compressed``): its bytes then lie in the archive at
    the member's local header offset + 30 + name and extra lengths, followed by an ordinary ``.npy`` header.
    Compressed members, object arrays and anything unexpected return None (read into memory instead).
    """
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            return None
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) < 30 or head[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        try:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
        except ValueError:
            return None
        offset = f.tell()
    if dtype.hasobject or offset + dtype.itemsize * int(np.prod(shape)) > info.header_offset + 30 + name_len \
            + extra_len + info.file_size:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """The arrays ``x`` (memory-mapped when stored uncompressed: :func:`mapped`), ``y`` and the optional
    ``labels`` of an ``.npz`` (no pickle)."""
    if not zipfile.is_zipfile(path):
        raise TrustVisionError(f"{path}: not an .npz archive (save it with numpy.savez(path, x=..., y=...))")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x", "y"} - set(z.files)
            if missing:
                raise TrustVisionError(f"{path}: missing array(s) {sorted(missing)} (found {z.files})")
            names = [str(s) for s in z["labels"]] if "labels" in z.files else None
            x = mapped(path)
            return (z["x"] if x is None else x), z["y"], names
    except TrustVisionError:
        raise
    except ValueError as e:   # object arrays need pickle: refuse
        raise TrustVisionError(f"{path}: cannot read without pickle ({e}); store plain numeric arrays") from None
    except Exception as e:
        raise TrustVisionError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None


def load_npz(path: Path, *, max_pixels: int | None = MAX_PIXELS) -> Dataset:
    """Load an ``.npz`` with ``x`` (see the accepted layouts above), ``y`` (N,) and optional ``labels`` (K,).

    Returns a :class:`Dataset` (N, C, H, W) in [0, 1]; class names are ``labels`` or ``"0".."K-1"``.
    """
    path = Path(path)
    x, y, names = _read(path)
    yt = _labels_from(y, str(path))
    xt = _to_nchw(x, str(path), max_pixels)
    if len(xt) != len(yt):
        raise TrustVisionError(f"{path}: x has {len(xt)} images but y has {len(yt)} labels")
    if names is not None and len(yt) and int(yt.max()) >= len(names):
        raise TrustVisionError(f"{path}: 'labels' has {len(names)} names but y goes up to {int(yt.max())}")
    n_cls = max(int(yt.max()) + 1 if len(yt) else 0, len(names or []))
    info = {"source": str(path), "source_dtype": x.dtype.name, "labels_from": "array 'y'"}
    return Dataset(xt, yt, names or [str(i) for i in range(n_cls)], path.stem,
                   info=info)
