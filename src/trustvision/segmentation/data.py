"""Loading segmentation data: image + index-mask folders, and the bundled demo sets (:mod:`.scenes`).

A folder ``DIR`` holds ``images/`` and ``masks/`` with the same file stems (``images/a.jpg`` <->
``masks/a.png``).  Masks are index images (PNG modes ``L``, ``P``, ``I;16``): pixel value = class index
0..K-1, or the ignore index (default 255).  Optional files: ``labels.txt`` (K class names, one a line;
otherwise K = largest label found + 1) and ``palette.txt`` (for RGB colour-coded masks: one ``R G B`` line
per class, in class order; without it an RGB mask is refused).  Splits, first match wins:

1. ``DIR/train/``, ``DIR/val/``, ``DIR/test/`` sub-folders, each with ``images/`` and ``masks/``;
2. ``DIR/train.txt``, ``DIR/val.txt``, ``DIR/test.txt``: file stems, one a line;
3. neither: a seeded 70/15/15 split of the sorted stems (``split="all"`` loads everything).

Every problem is one :class:`TrustVisionError` line naming the file: an image without a mask, a mask label
>= K that is not the ignore index, image/mask size mismatch, an RGB mask without a palette.
Shapes: ``x`` (N, C, H, W) float in [0, 1] (C = 3 when any image has colour, else 1), ``masks`` (N, H, W).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import IMAGE_SUFFIXES, SCALE, read_image
from ..errors import TrustVisionError
from .base import SegDataset
from .scenes import SPLITS, load_bundled

BUNDLED_PREFIX = "bundled:"
AUTO_SPLIT = {"train": (0.0, 0.7), "val": (0.7, 0.85), "test": (0.85, 1.0)}


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise TrustVisionError(f"{folder}: missing folder (a segmentation folder needs images/ and masks/)")
    files = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in files:
                raise TrustVisionError(f"{p}: two files with the stem {p.stem!r} in {folder}")
            files[p.stem] = p
    return files


def _pairs(root: Path, split: str, seed: int) -> list[tuple[Path, Path]]:
    """(image, mask) paths of ``split`` under ``root`` (see the module docstring for the split rules)."""
    if split != "all" and split not in SPLITS:
        raise TrustVisionError(f"--split must be one of {SPLITS + ('all',)}, got {split!r}")
    sub = root / split
    if split != "all" and (sub / "images").is_dir():
        images, masks = _by_stem(sub / "images"), _by_stem(sub / "masks")
        stems = sorted(images)
    else:
        images, masks = _by_stem(root / "images"), _by_stem(root / "masks")
        stems = sorted(images)
        listing = root / f"{split}.txt"
        if split != "all" and listing.is_file():
            wanted = [s.strip() for s in listing.read_text().splitlines() if s.strip()]
            for s in wanted:
                if s not in images:
                    raise TrustVisionError(f"{listing}: {s!r} has no image in {root / 'images'}")
            stems = wanted
        elif split != "all":
            perm = torch.randperm(len(stems), generator=torch.Generator().manual_seed(seed)).tolist()
            lo, hi = AUTO_SPLIT[split]
            stems = sorted(stems[i] for i in perm[round(lo * len(stems)):round(hi * len(stems))])
    for s in stems:
        if s not in masks:
            raise TrustVisionError(f"{images[s]}: image without a mask (expected {s}.png in the masks/ folder)")
    if not stems:
        raise TrustVisionError(f"{root}: no images for split {split!r}")
    return [(images[s], masks[s]) for s in stems]


def _palette(root: Path) -> np.ndarray | None:
    p = root / "palette.txt"
    if not p.is_file():
        return None
    try:
        rows = [[int(v) for v in line.replace(",", " ").split()] for line in p.read_text().splitlines() if line.strip()]
        pal = np.asarray(rows, dtype=np.int64)
    except ValueError:
        raise TrustVisionError(f"{p}: each line must be three integers 'R G B'") from None
    if pal.ndim != 2 or pal.shape[1] != 3:
        raise TrustVisionError(f"{p}: each line must be three integers 'R G B'")
    return pal


def read_mask(path: Path, palette: np.ndarray | None, ignore_index: int | None) -> np.ndarray:
    """One mask file -> (H, W) int64 class indices (RGB masks mapped through ``palette``)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            a = np.asarray(im)
    except Exception as e:
        raise TrustVisionError(f"{path}: corrupt or unreadable mask ({' '.join(str(e).split())})") from None
    if mode in ("RGB", "RGBA"):
        rgb = a[..., :3].astype(np.int64)
        if np.all(rgb[..., :1] == rgb):               # grey stored as RGB: an index mask
            return rgb[..., 0]
        if palette is None:
            raise TrustVisionError(f"{path}: RGB colour-coded mask without a palette (save index PNGs, or add "
                                   "palette.txt with one 'R G B' line per class)")
        code = rgb @ np.array([1 << 16, 1 << 8, 1])
        keys = palette @ np.array([1 << 16, 1 << 8, 1])
        out = np.full(code.shape, -1 if ignore_index is None else ignore_index, dtype=np.int64)
        for k, key in enumerate(keys):
            out[code == key] = k
        if ignore_index is None and (out < 0).any():
            raise TrustVisionError(f"{path}: colours not in palette.txt and no ignore index")
        return out
    if a.ndim != 2 or a.dtype.kind not in "iub":
        raise TrustVisionError(f"{path}: a mask must be a single-channel index image, got mode {mode}")
    return a.astype(np.int64)


def _num_classes(root: Path, masks: list[np.ndarray], ignore_index: int | None) -> tuple[int, list[str]]:
    lab = root / "labels.txt"
    if lab.is_file():
        names = [s.strip() for s in lab.read_text().splitlines() if s.strip()]
        if len(names) < 2:
            raise TrustVisionError(f"{lab}: needs at least 2 class names, one a line")
        return len(names), names
    top = max(int(m[m != ignore_index].max()) if (m != ignore_index).any() else 0 for m in masks)
    k = max(top + 1, 2)
    return k, [str(i) for i in range(k)]


def _resize(x: torch.Tensor, m: torch.Tensor, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x, m
    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    m = F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return x, m


def load_folder(root: Path, split: str = "train", *, size: tuple[int, int] | None = None,
                ignore_index: int | None = 255, seed: int = 0) -> SegDataset:
    """Images (N, C, H, W) and masks (N, H, W) of one split of an ``images/`` + ``masks/`` folder."""
    root = Path(root)
    pairs = _pairs(root, split, seed)
    palette = _palette(root)
    imgs, masks = [], []
    for ip, mp in pairs:
        a, dtype = read_image(ip)
        m = read_mask(mp, palette, ignore_index)
        if a.shape[:2] != m.shape:
            raise TrustVisionError(f"{mp}: mask is {m.shape[1]}x{m.shape[0]} but {ip.name} is "
                                   f"{a.shape[1]}x{a.shape[0]} (width x height)")
        imgs.append(torch.from_numpy(a.astype(np.float32) / SCALE[dtype]))
        masks.append(m)
    k, names = _num_classes(root, masks, ignore_index)
    for (ip, mp), m in zip(pairs, masks):
        bad = (m >= k) & (m != ignore_index) if ignore_index is not None else (m >= k)
        if bad.any() or (m < 0).any():
            v = int(m[bad][0]) if bad.any() else int(m.min())
            raise TrustVisionError(f"{mp}: label {v} is outside 0..{k - 1} and not the ignore index {ignore_index}")
    colour = any(t.ndim == 3 for t in imgs)
    xs, ms = [], []
    for t, m in zip(imgs, masks):
        t = t.permute(2, 0, 1) if t.ndim == 3 else (t[None].expand(3, -1, -1) if colour else t[None])
        t, mt = _resize(t, torch.from_numpy(m), size)
        xs.append(t)
        ms.append(mt)
    shapes = {tuple(t.shape[-2:]) for t in xs}
    if len(shapes) > 1:
        raise TrustVisionError(f"{root}: images have different sizes {sorted(shapes)[:3]}...; pass --size H W")
    return SegDataset(torch.stack(xs).contiguous(), torch.stack(ms), k, names, ignore_index,
                      f"{root.name} ({split})", False, [str(ip) for ip, _ in pairs])


def load_segmentation(spec: str, split: str = "train", *, size: int | tuple[int, int] | None = None,
                      ignore_index: int | None = 255, n: int | None = None, seed: int = 0) -> SegDataset:
    """A :class:`SegDataset` from a spec: ``bundled:digit-scenes``, ``bundled:cells``, or a folder.

    Args:
        spec: the data spec.  split: ``train``/``val``/``test`` (``all`` for a whole folder).
        size: resize to (H, W) (an int: square); images bilinear, masks nearest.
        ignore_index: mask value that is not a class (folders; bundled sets have none).
        n: number of images of a bundled set (default per split, see :data:`.scenes.DEFAULT_SIZES`).
        seed: the bundled set's seed, or the folder's automatic split.
    """
    if isinstance(size, int):
        size = (size, size)
    if spec.startswith(BUNDLED_PREFIX):
        data = load_bundled(spec[len(BUNDLED_PREFIX):], split if split != "all" else "train", n=n, seed=seed)
        if size is not None:
            x = F.interpolate(data.x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
            m = F.interpolate(data.masks[:, None].float(), size=size, mode="nearest")[:, 0].long()
            data = SegDataset(x, m, data.num_classes, data.labels, data.ignore_index, data.name, data.synthetic)
        return data
    path = Path(spec)
    if not path.is_dir():
        raise TrustVisionError(f"{spec}: no such folder (or use bundled:digit-scenes / bundled:cells)")
    return load_folder(path, split, size=size, ignore_index=ignore_index, seed=seed)
