"""Candidate regions of an anomaly map and fixed-size crops around them (for the Siamese re-judgment).

* :func:`candidate_regions`: threshold (N, H, W) maps, 8-connected components (``scipy.ndimage.label``,
  one call per image — scipy labels one array at a time; everything else is vectorised), small
  components dropped.
* :func:`region_peaks`: one (image, y, x) per region, at the region's highest map value (the crop is
  centred on the most anomalous pixel, so the crop sees the defect even for ring-shaped regions).
* :func:`crop_at`: (R, C, s, s) crops with top-left corners (R, 2), batched with
  ``torchvision.ops.roi_align`` (exact pixel copies for integer boxes: ``aligned=True``, one sample per bin).
* :func:`plant_synthetic`: the synthetic defects the Siamese network learns from — CutPaste (Li et al.,
  CVPR 2021: a patch of the same image moved and flipped), thin scratches and noise blobs — batched over
  crops, with their masks.  Deliberately *not* the generator of the bundled texture set (no colour stains,
  no patches from another texture), so the re-judgment never sees the test defects' recipe.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EIGHT = np.ones((3, 3), dtype=int)


def candidate_regions(maps: Tensor, threshold: float, min_area: int = 4) -> tuple[Tensor, Tensor]:
    """Label map >= ``threshold``: (labels (N, H, W) int32 with ids 1..k per image, counts (N,) int64).

    Components smaller than ``min_area`` pixels are dropped and the rest renumbered 1..k.
    """
    from scipy.ndimage import label
    binary = (maps >= threshold).cpu().numpy()
    out = np.zeros(binary.shape, dtype=np.int32)
    counts = np.zeros(binary.shape[0], dtype=np.int64)
    for i, b in enumerate(binary):                    # scipy labels one image at a time
        lab, n = label(b, structure=EIGHT)
        if n == 0:
            continue
        area = np.bincount(lab.ravel(), minlength=n + 1)
        keep = area >= min_area
        keep[0] = False
        new_id = np.cumsum(keep) * keep               # renumber the kept components 1..k
        out[i] = new_id[lab]
        counts[i] = int(keep.sum())
    return torch.from_numpy(out), torch.from_numpy(counts)


def region_peaks(maps: Tensor, labels: Tensor) -> Tensor:
    """(R, 4) int64 rows ``(image, y, x, region id)``: each region's highest-scoring pixel.

    ``maps`` (N, H, W), ``labels`` (N, H, W) from :func:`candidate_regions`.  Vectorised: a scatter-max
    over (image, region) keys.
    """
    n, h, w = labels.shape
    lab = labels.long().flatten()
    if not bool((lab > 0).any()):
        return torch.zeros((0, 4), dtype=torch.int64)
    k = int(lab.max()) + 1
    img = torch.arange(n).repeat_interleave(h * w)
    key = img * k + lab
    vals = maps.detach().float().cpu().flatten()
    best = torch.full((n * k,), -float("inf")).scatter_reduce(0, key, vals, "amax")
    is_peak = (vals == best[key]) & (lab > 0)
    pix = torch.arange(n * h * w)
    first = torch.full((n * k,), n * h * w, dtype=torch.int64).scatter_reduce(0, key[is_peak], pix[is_peak], "amin")
    first = first[first < n * h * w]
    i, rem = first // (h * w), first % (h * w)
    return torch.stack([i, rem // w, rem % w, lab[first]], 1)


def corners(centres: Tensor, crop: int, h: int, w: int) -> Tensor:
    """Top-left corners (R, 2) of ``crop``-sized windows centred on ``centres`` (R, 2) = (y, x), kept inside."""
    tl = centres - crop // 2
    return torch.stack([tl[:, 0].clamp(0, h - crop), tl[:, 1].clamp(0, w - crop)], 1)


def crop_at(images: Tensor, index: Tensor, tl: Tensor, crop: int) -> Tensor:
    """Crops (R, C, crop, crop) of ``images`` (N, C, H, W) at image ``index`` (R,) and top-left ``tl`` (R, 2)."""
    from torchvision.ops import roi_align
    if index.numel() == 0:
        return images.new_zeros((0, images.shape[1], crop, crop))
    tl = tl.to(images.device, images.dtype)
    boxes = torch.stack([index.to(images.device, images.dtype), tl[:, 1], tl[:, 0],
                         tl[:, 1] + crop, tl[:, 0] + crop], 1)
    return roi_align(images, boxes, output_size=crop, spatial_scale=1.0, sampling_ratio=1, aligned=True)


def _blob(n: int, s: int, g: torch.Generator, rmin: float, rmax: float) -> Tensor:
    """(n, s, s) bool elliptical blobs near the centre (within s/4)."""
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    c = s / 2 + (torch.rand(n, 2, generator=g) - 0.5) * (s / 2)
    r = rmin + torch.rand(n, 2, generator=g) * (rmax - rmin)
    th = torch.rand(n, 1, 1, generator=g) * np.pi
    dy, dx = yy - c[:, 0, None, None], xx - c[:, 1, None, None]
    u, v = dy * th.cos() + dx * th.sin(), -dy * th.sin() + dx * th.cos()
    return (u / r[:, 0, None, None]) ** 2 + (v / r[:, 1, None, None]) ** 2 <= 1


def _scratch(n: int, s: int, g: torch.Generator) -> Tensor:
    """(n, s, s) bool thin line segments through the central area (distance to segment <= width)."""
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    p = s / 2 + (torch.rand(n, 2, generator=g) - 0.5) * (s / 2)
    ang = torch.rand(n, generator=g) * 2 * np.pi
    half = (0.15 + 0.25 * torch.rand(n, generator=g)) * s
    d = torch.stack([ang.sin(), ang.cos()], 1)
    a, b = p - d * half[:, None], p + d * half[:, None]
    ab = (b - a)[:, :, None, None]
    ap = torch.stack([yy, xx])[None] - a[:, :, None, None]
    t = ((ap * ab).sum(1) / (ab * ab).sum(1).clamp(min=1e-6)).clamp(0, 1)
    dist = (ap - t[:, None] * ab).norm(dim=1)
    return dist <= (0.5 + 0.9 * torch.rand(n, 1, 1, generator=g))


def plant_synthetic(crops: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Plant one synthetic defect per crop: (defective crops (R, C, s, s), masks (R, s, s) bool).

    Kinds are drawn uniformly: CutPaste (a flipped/shifted copy of the crop itself, pasted in a blob),
    a thin scratch (bright or dark) and a noise blob (uniform noise blended at alpha 0.5-1).
    """
    r, c, s, _ = crops.shape
    dev = crops.device
    kind = torch.randint(0, 3, (r,), generator=g)
    masks = torch.where((kind == 1)[:, None, None], _scratch(r, s, g), _blob(r, s, g, s / 10, s / 4.5))
    shift = int(torch.randint(s // 4, s // 2, (1,), generator=g))
    moved = torch.roll(crops.flip(-1), shifts=(shift, shift), dims=(-2, -1))
    level = torch.where(torch.rand(r, 1, 1, 1, generator=g) < 0.5, 0.9, 0.08).to(dev, crops.dtype)
    noise = torch.rand(crops.shape, generator=g).to(dev, crops.dtype)
    alpha = (0.5 + 0.5 * torch.rand(r, 1, 1, 1, generator=g)).to(dev, crops.dtype)
    k = kind.to(dev)[:, None, None, None]
    fill = torch.where(k == 0, moved, torch.where(k == 1, level.expand_as(crops), (1 - alpha) * crops + alpha * noise))
    masks = masks.to(dev)
    return torch.where(masks[:, None], fill, crops), masks
