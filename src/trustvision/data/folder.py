"""Image folders: ``root/<class>/<image>``, one sub-folder per class, classes sorted by name.

Every visible sub-folder is a class: its index is its rank in the sorted list, and that index is what
the model's output is compared against.  An empty class sub-folder (no image files) is therefore an
error naming it — skipping it would silently shift the indices of every later class.  Hidden folders
(``.name``) and ``__name`` folders are not classes.  Pixels are scaled by their stored type's real range
(see :mod:`.images`); the source dtype(s) are recorded in ``Dataset.info["source_dtype"]``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from .dataset import Dataset
from .images import IMAGE_SUFFIXES, MAX_PIXELS, SCALE, read_image

__all__ = ["class_files", "load_folder", "to_tensor"]


def class_files(root: Path) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted) and each class's image files (sorted); empty class folders are an error."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__")))
    if not classes:
        raise TrustVisionError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    files = [sorted(f for f in (root / c).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
             for c in classes]
    empty = [str(root / c) for c, fs in zip(classes, files) if not fs]
    if empty:
        raise TrustVisionError(f"class folder(s) with no images: {', '.join(empty)} (every sub-folder of {root} "
                               f"is a class; add {'/'.join(sorted(IMAGE_SUFFIXES))} files or remove the folder)")
    return classes, files


def to_tensor(a: np.ndarray, rgb: bool) -> Tensor:
    """(H, W) or (H, W, 3) stored pixels -> (C, H, W) float32 in [0, 1] (grey replicated when ``rgb``)."""
    a = np.repeat(a[..., None], 3, axis=2) if rgb and a.ndim == 2 else a
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    t = t.float()                       # (C, H, W) contiguous, then scaled in place
    scale = SCALE[a.dtype.name]
    return t.div_(scale) if scale != 1.0 else t


def load_folder(root: Path, size: tuple[int, int] | None = None, *,
                max_pixels: int | None = MAX_PIXELS, skip_bad: bool = False) -> Dataset:
    """Load ``root/<class>/<image>`` into a :class:`Dataset` (N, C, H, W) in [0, 1], labels by sorted class name.

    Args:
        root: the folder.  size: (H, W) to resize every image to (bilinear); without it all images
            must share one size.  max_pixels: per-image pixel limit (``None`` = no limit).
        skip_bad: skip files that cannot be read (corrupt, unsupported, too large) instead of aborting; they
            are listed in ``info["skipped"]`` as ``{"path", "reason"}`` (an empty list when none was).
    """
    root = Path(root)
    classes, files = class_files(root)
    arrays, ys, paths, dtypes, skipped = [], [], [], set(), []
    for k, fs in enumerate(files):
        for f in fs:
            try:
                a, dtype = read_image(f, max_pixels)
            except TrustVisionError as e:
                if not skip_bad:
                    raise
                skipped.append({"path": str(f), "reason": str(e).removeprefix(f"{f}: ")})
                continue
            arrays.append(a)
            ys.append(k)
            paths.append(str(f))
            dtypes.add(dtype)
    if not arrays:
        raise TrustVisionError(f"{root}: none of the {len(skipped)} image files could be read "
                               f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
    rgb = not all(a.ndim == 2 for a in arrays)
    tensors: list[Tensor] = []
    for a, p in zip(arrays, paths):
        t = to_tensor(a, rgb)
        target = size or (tuple(tensors[0].shape[-2:]) if tensors else None)
        if target and tuple(t.shape[-2:]) != tuple(target):
            if size is None:
                raise TrustVisionError(f"{p}: size {tuple(t.shape[-2:])} differs from {tuple(target)}; "
                                       "pass --input-size HxW (size= in Python) to resize")
            t = F.interpolate(t[None], size=tuple(size), mode="bilinear", align_corners=False)[0].clamp(0, 1)
        tensors.append(t)
    info = {"source": str(root), "source_dtype": ", ".join(sorted(dtypes)), "labels_from": "class sub-folders"}
    if skip_bad:
        info["skipped"] = skipped
    return Dataset(torch.stack(tensors), torch.tensor(ys), classes, root.name, paths, info)
