"""``bundled:textures`` — an offline, synthetic inspection set in the MVTec AD layout.

Normal images are random crops (with horizontal/vertical flips and a small gain jitter) of the three
texture photographs scikit-image ships (``brick``, ``grass``, ``gravel``; 512x512 grey, downscaled 2x
and tinted to a fixed colour per texture so that colour defects mean something).  Training crops come
from the upper part of each photograph and test crops from the lower part, so no test pixel was seen in
training.  Defective test images get one planted defect with an exact mask:

* ``scratch``: a thin (1-2 px) straight or bent line, brighter or darker than the surface;
* ``hole``: a dark elliptical blob (a hole or pit) with a little noise;
* ``stain``: an elliptical colour stain blended over the texture (alpha 0.45-0.7);
* ``cut``: a rectangular or elliptical patch cut from *another* texture and pasted in.

Everything is seeded (NumPy ``default_rng(seed)``); 64x64 crops, 120 training images and 10 good + 4x8
defective test images per texture keep every method trainable in minutes on 2 CPU cores.  The set is
**synthetic**: ``AnomalyDataset.synthetic`` is True and reports must say so.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import TrustVisionError
from .base import AnomalyDataset

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "hole", "stain", "cut")
TINTS = {"brick": ((0.20, 0.08, 0.05), (0.95, 0.62, 0.48)),      # (colour of black, colour of white)
         "grass": ((0.05, 0.14, 0.03), (0.70, 0.92, 0.45)),
         "gravel": ((0.10, 0.10, 0.12), (0.90, 0.88, 0.84))}
SYNTHETIC_NOTE = ("synthetic data: crops of scikit-image texture photographs with planted synthetic "
                  "defects (scratch, hole, stain, cut) — not a real inspection set")


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """The texture photograph as (3, 256, 256) float32 RGB in [0, 1] (downscaled 2x, tinted)."""
    import skimage.data as sd
    g = torch.from_numpy(np.asarray(getattr(sd, name)(), dtype=np.float32) / 255.0)[None, None]
    g = F.avg_pool2d(g, 2)[0, 0].numpy()
    lo, hi = (np.asarray(c, dtype=np.float32)[:, None, None] for c in TINTS[name])
    return lo + g[None] * (hi - lo)


def _crop(photo: np.ndarray, rows: tuple[int, int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A random (3, size, size) crop whose top row lies in ``rows``, randomly flipped, gain-jittered."""
    y = int(rng.integers(rows[0], rows[1] - size + 1))
    x = int(rng.integers(0, photo.shape[2] - size + 1))
    c = photo[:, y:y + size, x:x + size]
    if rng.random() < 0.5:
        c = c[:, :, ::-1]
    if rng.random() < 0.5:
        c = c[:, ::-1, :]
    return np.clip(c * rng.uniform(0.95, 1.05), 0, 1)


def _ellipse(size: int, rng: np.random.Generator, rmin: float, rmax: float) -> np.ndarray:
    """A random rotated ellipse mask (size, size) bool, fully inside the image."""
    from skimage.draw import ellipse
    r, c = rng.uniform(rmin, rmax, 2)
    m = int(np.ceil(max(r, c))) + 2
    cy, cx = rng.integers(m, size - m, 2)
    rr, cc = ellipse(cy, cx, r, c, shape=(size, size), rotation=rng.uniform(0, np.pi))
    mask = np.zeros((size, size), dtype=bool)
    mask[rr, cc] = True
    return mask


def _scratch(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.ndimage import binary_dilation
    from skimage.draw import line
    size = img.shape[1]
    mask = np.zeros((size, size), dtype=bool)
    p = rng.uniform(8, size - 8, 2)
    angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 0.55) * size
    for _ in range(int(rng.integers(1, 3))):               # one straight or one bent line
        q = np.clip(p + length / 2 * np.array([np.sin(angle), np.cos(angle)]), 2, size - 3)
        rr, cc = line(int(p[0]), int(p[1]), int(q[0]), int(q[1]))
        mask[rr, cc] = True
        p, angle = q, angle + rng.uniform(-0.8, 0.8)
    if rng.random() < 0.5:
        mask = binary_dilation(mask)
    value = rng.uniform(0.85, 1.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.12)
    out = img.copy()
    out[:, mask] = value
    return out, mask


def _hole(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = _ellipse(img.shape[1], rng, 3.0, 8.0)
    out = img.copy()
    out[:, mask] = np.clip(rng.uniform(0.02, 0.12) + rng.normal(0, 0.02, mask.sum()), 0, 1)
    return out, mask


def _stain(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = _ellipse(img.shape[1], rng, 5.0, 11.0)
    colour = np.asarray(rng.choice([(0.15, 0.25, 0.85), (0.95, 0.85, 0.10), (0.55, 0.10, 0.60)]),
                        dtype=np.float32)[:, None]
    alpha = rng.uniform(0.45, 0.7)
    out = img.copy()
    out[:, mask] = (1 - alpha) * out[:, mask] + alpha * colour
    return out, mask


def _cut(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    size = img.shape[1]
    if rng.random() < 0.5:
        mask = _ellipse(size, rng, 6.0, 11.0)
    else:
        h, w = rng.integers(10, 22, 2)
        y, x = rng.integers(2, size - h - 2), rng.integers(2, size - w - 2)
        mask = np.zeros((size, size), dtype=bool)
        mask[y:y + h, x:x + w] = True
    out = img.copy()
    out[:, mask] = donor[:, mask]
    return out, mask


PLANT = {"scratch": _scratch, "hole": _hole, "stain": _stain, "cut": _cut}


def make_textures(textures: tuple[str, ...] = TEXTURES, *, seed: int = 0, size: int = 64, n_train: int = 120,
                  n_test_good: int = 10, n_test_defect: int = 8) -> AnomalyDataset:
    """Generate the bundled synthetic texture set.

    Args:
        textures: which of ``brick``, ``grass``, ``gravel`` (all three mixed by default).
        seed: NumPy seed for crops, flips and defects.  size: crop side (16..96 pixels).
        n_train: normal training crops per texture.  n_test_good / n_test_defect: normal test crops and
            defective crops per defect kind, per texture.

    Returns:
        An :class:`AnomalyDataset` (``synthetic=True``): train (len(textures)*n_train, 3, size, size),
        test (len(textures)*(n_test_good + 4*n_test_defect), 3, size, size), exact masks, defect types
        from :data:`DEFECTS`.
    """
    unknown = [t for t in textures if t not in TEXTURES]
    if unknown or not textures:
        raise TrustVisionError(f"textures: unknown {unknown or textures!r}; choose from {', '.join(TEXTURES)}")
    if not 16 <= int(size) <= 96:
        raise TrustVisionError(f"size: the bundled textures are generated at 16..96 pixels, got {size}")
    rng = np.random.default_rng(seed)
    photos = {t: _photo(t) for t in TEXTURES}
    height = photos[textures[0]].shape[1]
    train_rows, test_rows = (0, int(height * 0.625) + size // 2), (int(height * 0.625), height)
    train, test, masks, types = [], [], [], []
    for t in textures:
        others = [o for o in TEXTURES if o != t]
        train += [_crop(photos[t], train_rows, size, rng) for _ in range(n_train)]
        for kind in ("good",) + DEFECTS:
            for _ in range(n_test_good if kind == "good" else n_test_defect):
                img = _crop(photos[t], test_rows, size, rng)
                mask = np.zeros((size, size), dtype=bool)
                if kind != "good":
                    donor = _crop(photos[others[int(rng.integers(len(others)))]], (0, height), size, rng)
                    img, mask = PLANT[kind](img, rng, donor)
                test.append(img)
                masks.append(mask)
                types.append(kind)
    as_t = lambda xs: torch.from_numpy(np.ascontiguousarray(np.stack(xs), dtype=np.float32))  # noqa: E731
    name = "textures" if tuple(textures) == TEXTURES else "textures:" + "+".join(textures)
    return AnomalyDataset(train=as_t(train), test=as_t(test),
                          labels=torch.tensor([int(k != "good") for k in types], dtype=torch.int64),
                          masks=torch.from_numpy(np.stack(masks)), defect_types=types, name=name,
                          synthetic=True, paths=[], notes=[SYNTHETIC_NOTE])
