"""Anomaly-detection data in the MVTec AD layout (Bergmann et al., CVPR 2019 / IJCV 2021).

::

    DIR/train/good/*.png                      normal images only (what every detector trains on)
    DIR/test/good/*.png                       normal test images
    DIR/test/<defect>/*.png                   defective test images, one folder per defect type
    DIR/ground_truth/<defect>/<name>_mask.png binary masks (0 / non-zero), optional

:func:`load_mvtec` reads such a folder into an :class:`AnomalyDataset` (images (N, C, H, W) float32 in
[0, 1]).  Masks are optional, but all or nothing: when no defect folder has masks the dataset has
``masks=None`` and a note says that pixel metrics (pixel AUROC, AUPRO) are not computed.  Every problem
is a one-line :class:`~trustvision.errors.TrustVisionError` naming the path: no ``train/good``, a mask
of the wrong size or not binary, a mask without an image, grey and RGB images mixed, a defect folder
without masks when others have them.  :func:`load_anomaly_data` also accepts ``bundled:textures``
(the offline synthetic set of :mod:`.textures`).  :func:`write_mvtec` writes a dataset in the layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.images import IMAGE_SUFFIXES, SCALE, read_image
from ..errors import TrustVisionError
from .base import AnomalyDataset

NO_MASKS_NOTE = ("no ground-truth masks in this folder: pixel AUROC and AUPRO are not computed "
                 "(image-level metrics only)")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read(path: Path, size: tuple[int, int] | None, channels: list, native: list | None = None) -> Tensor:
    """One image as (C, H, W) float32 in [0, 1]; ``channels`` holds [C, first path] to refuse mixing;
    the native (H, W) is appended to ``native`` when given."""
    a, _ = read_image(path)
    if native is not None:
        native.append(tuple(a.shape[:2]))
    x = torch.from_numpy(a.astype(np.float32) / SCALE[str(a.dtype)])
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if not channels:
        channels.extend([x.shape[0], path])
    elif x.shape[0] != channels[0]:
        kind = {1: "grey", 3: "RGB"}
        raise TrustVisionError(f"{path}: {kind[x.shape[0]]} image among {kind[channels[0]]} images "
                               f"(first: {channels[1]}); convert them all to one colour mode")
    if size is not None and tuple(x.shape[1:]) != size:
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    return x


def _stack(xs: list[Tensor], paths: list[Path]) -> Tensor:
    shape = xs[0].shape
    for x, p in zip(xs, paths):
        if x.shape != shape:
            raise TrustVisionError(f"{p}: image size {tuple(x.shape[1:])} differs from {tuple(shape[1:])} "
                                   f"({paths[0]}); pass size= (--size) to resize all images")
    return torch.stack(xs)


def _read_mask(path: Path, hw: tuple[int, int], size: tuple[int, int] | None) -> Tensor:
    """A mask file as (H, W) bool at the image's native size ``hw``, resized (nearest) to ``size``."""
    a, _ = read_image(path)
    if a.ndim == 3:
        if not (a == a[..., :1]).all():
            raise TrustVisionError(f"{path}: mask must be grey (0 / non-zero), found a colour image")
        a = a[..., 0]
    if a.shape != hw:
        raise TrustVisionError(f"{path}: mask size {a.shape[1]}x{a.shape[0]} differs from its image's "
                               f"{hw[1]}x{hw[0]}")
    values = np.unique(a)
    if values.size > 2 or (values.size == 2 and values[0] != 0):
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise TrustVisionError(f"{path}: mask is not binary (values {shown}); use 0 for normal and one "
                               "value (e.g. 255) for defective pixels")
    m = torch.from_numpy(a > 0)
    if size is not None and tuple(m.shape) != size:
        m = F.interpolate(m[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5
    return m


def _masks_for(root: Path, kinds: dict[str, list[Path]]) -> dict[str, dict[str, Path]]:
    """``{defect: {image stem: mask path}}``; refuses masks without images and half-masked layouts."""
    gt = root / "ground_truth"
    found: dict[str, dict[str, Path]] = {}
    if gt.is_dir():
        for d in sorted(p for p in gt.iterdir() if p.is_dir()):
            if d.name not in kinds:
                raise TrustVisionError(f"{d}: ground-truth folder without a test/{d.name} image folder")
            stems = {p.stem for p in kinds[d.name]}
            found[d.name] = {}
            for mp in _images(d):
                stem = mp.stem[:-5] if mp.stem.endswith("_mask") else mp.stem
                if stem not in stems:
                    raise TrustVisionError(f"{mp}: mask without an image (no test/{d.name}/{stem}.*)")
                found[d.name][stem] = mp
    with_masks = [k for k, v in found.items() if v]
    if not with_masks:
        return {}
    for kind, paths in kinds.items():
        if kind == "good":
            continue
        if not found.get(kind):
            raise TrustVisionError(f"{root / 'test' / kind}: defect folder without masks in "
                                   f"{gt / kind} while {', '.join(with_masks)} have masks; "
                                   "give masks for every defect folder or for none")
        missing = [p for p in paths if p.stem not in found[kind]]
        if missing:
            raise TrustVisionError(f"{missing[0]}: no mask {gt / kind / (missing[0].stem + '_mask.png')}")
    return found


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 8:
        raise TrustVisionError(f"size must be an int or (H, W) of at least 8 pixels, got {size!r}")
    return hw  # type: ignore[return-value]


def load_mvtec(path: str | Path, *, size: int | tuple[int, int] | None = None) -> AnomalyDataset:
    """Load a folder in the MVTec AD layout.

    Args:
        path: the category folder (holding ``train/``, ``test/``, optionally ``ground_truth/``).
        size: resize every image to (H, W) (bilinear, antialiased) and masks (nearest); ``None`` keeps
            the native size (all images must then share it).

    Returns:
        An :class:`AnomalyDataset`: train (N, C, H, W), test (M, C, H, W), labels (M,), masks (M, H, W)
        bool or ``None`` (with a note) when the folder has no masks.
    """
    root, hw = Path(path), _as_size(size)
    if not root.is_dir():
        raise TrustVisionError(f"{root}: no such folder (expected the MVTec AD layout: train/good, test/...)")
    if not (root / "train" / "good").is_dir():
        raise TrustVisionError(f"{root / 'train' / 'good'}: missing; an MVTec-style folder needs normal "
                               "training images in train/good/")
    train_paths = _images(root / "train" / "good")
    if not train_paths:
        raise TrustVisionError(f"{root / 'train' / 'good'}: no images")
    test_root = root / "test"
    if not test_root.is_dir():
        raise TrustVisionError(f"{test_root}: missing; put normal test images in test/good and defects in test/<type>")
    kinds = {d.name: _images(d) for d in sorted(test_root.iterdir()) if d.is_dir()}
    kinds = dict(sorted(kinds.items(), key=lambda kv: kv[0] != "good"))      # "good" first
    if not any(kinds.values()):
        raise TrustVisionError(f"{test_root}: no test images")
    mask_paths = _masks_for(root, kinds)
    channels: list = []
    train = _stack([_read(p, hw, channels) for p in train_paths], train_paths)
    xs, labels, types, paths, masks = [], [], [], [], []
    for kind, files in kinds.items():
        for p in files:
            native: list = []
            x = _read(p, hw, channels, native)
            xs.append(x)
            labels.append(int(kind != "good"))
            types.append(kind)
            paths.append(p)
            if mask_paths:
                masks.append(_read_mask(mask_paths[kind][p.stem], native[0], hw) if kind != "good"
                             else torch.zeros(x.shape[1:], dtype=torch.bool))
    test = _stack(xs, paths)
    if train.shape[1:] != test.shape[1:]:
        raise TrustVisionError(f"{test_root}: test images {tuple(test.shape[1:])} differ from training images "
                               f"{tuple(train.shape[1:])}; pass size= (--size) to resize all images")
    return AnomalyDataset(train=train, test=test, labels=torch.tensor(labels, dtype=torch.int64),
                          masks=torch.stack(masks) if mask_paths else None, defect_types=types,
                          name=root.name, synthetic=False, paths=[str(p) for p in paths],
                          notes=[] if mask_paths else [NO_MASKS_NOTE])


def _save_png(path: Path, x: Tensor) -> None:
    from PIL import Image
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    Image.fromarray(a).save(path)


def write_mvtec(dataset: AnomalyDataset, folder: str | Path) -> Path:
    """Write ``dataset`` in the MVTec AD layout under ``folder`` (8-bit PNGs, masks 0/255); returns the folder."""
    root = Path(folder)
    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(dataset.train):
        _save_png(root / "train" / "good" / f"{i:03d}.png", x)
    counters: dict[str, int] = {}
    for j, (x, kind) in enumerate(zip(dataset.test, dataset.defect_types)):
        k = counters[kind] = counters.get(kind, -1) + 1
        (root / "test" / kind).mkdir(parents=True, exist_ok=True)
        _save_png(root / "test" / kind / f"{k:03d}.png", x)
        if dataset.masks is not None and kind != "good":
            (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            _save_png(root / "ground_truth" / kind / f"{k:03d}_mask.png", dataset.masks[j][None].float())
    return root


def load_anomaly_data(spec: str, *, size: int | tuple[int, int] | None = None, seed: int = 0) -> AnomalyDataset:
    """Load ``spec``: a folder in the MVTec AD layout, or ``bundled:textures`` (``bundled:textures:brick``
    for one texture) — the offline synthetic set, generated with ``seed``."""
    spec = str(spec)
    if spec.startswith("bundled:"):
        from .textures import TEXTURES, make_textures
        parts = spec.split(":")
        if parts[1] != "textures" or len(parts) > 3 or (len(parts) == 3 and parts[2] not in TEXTURES):
            raise TrustVisionError(f"{spec}: unknown bundled anomaly set; use bundled:textures or "
                                   f"bundled:textures:<{'|'.join(TEXTURES)}>")
        hw = _as_size(size)
        if hw is not None and hw[0] != hw[1]:
            raise TrustVisionError(f"size: the bundled textures are square, got {size!r}")
        return make_textures(textures=(parts[2],) if len(parts) == 3 else TEXTURES, seed=seed,
                             size=hw[0] if hw else 64)
    return load_mvtec(spec, size=size)
