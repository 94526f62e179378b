"""PatchCore — Roth, Pemula, Zepeda, Schölkopf, Brox & Gehler, "Towards Total Recall in Industrial Anomaly
Detection", CVPR 2022.

1. **Locally aware patch features** (sec. 3.1): the feature maps of two intermediate layers of a frozen
   backbone (the paper: ``layer2`` + ``layer3``) are each average-pooled over a ``p x p`` neighbourhood
   (``p = 3``, stride 1), the deeper map is bilinearly resized to the shallower one's grid, and both are
   concatenated channel-wise: every grid cell is one patch feature (D = C_2 + C_3).
2. **Greedy coreset subsampling** (sec. 3.2, Alg. 1): the memory bank of all training patches is reduced to
   a fraction ``coreset_ratio`` by iterative farthest-point (k-center greedy) selection, computed on a
   Johnson-Lindenstrauss random projection to ``projection_dim`` (128) dimensions, as in the paper.
3. **Scoring** (sec. 3.3): a test patch's score is its distance to the nearest memory-bank entry (chunked
   ``torch.cdist``, fp32); the patch-score grid is bilinearly upsampled to the input size and smoothed by a
   Gaussian (sigma = 4 px, the paper's value); the image score is the maximum patch score, optionally
   reweighted (``reweight=True``, Eq. 7) by ``1 - softmax(||m_test* - m||, m in N_b(m*))[m*]`` with ``b``
   neighbours, so that a maximum close to a dense region of the bank counts less.

Everything is batched on the device: no per-image Python loops, no host syncs inside the coreset loop.
Shapes: images (N, C, H, W) in [0, 1]; maps (N, H, W); scores (N,); memory bank (M, D).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..batching import forward_batch
from ..errors import TrustVisionError
from ..progress import Progress, Quiet
from .backbone import Backbone
from .base import AnomalyResult, check_images
from .ops import gaussian_blur


def nearest(query: Tensor, bank: Tensor, *, chunk: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Nearest bank entry of every query row by Euclidean distance, with ``cdist`` in chunks.

    ``query`` (Q, D), ``bank`` (M, D) -> (distances (Q,), indices (Q,) int64).  At most about ``chunk``
    distances are held at once; autograd flows to ``query``.
    """
    rows = max(1, chunk // max(len(bank), 1))
    dists, idx = [], []
    for q in query.split(rows):
        d = torch.cdist(q.float(), bank.float())
        v, i = d.min(1)
        dists.append(v)
        idx.append(i)
    return torch.cat(dists), torch.cat(idx)


def greedy_coreset(features: Tensor, n: int, *, projection_dim: int | None = 128, seed: int = 0) -> Tensor:
    """Indices (n,) int64 of a k-center-greedy coreset of ``features`` (M, D) (PatchCore Alg. 1).

    The start point is drawn with ``seed``; distances are taken after a Gaussian random projection to
    ``projection_dim`` dimensions (None or >= D: no projection).  Each step adds the point farthest from the
    selected set and updates every point's squared distance to it (``||x||² - 2 x·c + ||c||²``, one
    matrix-vector product): O(n·M·d), all on ``features``' device.
    """
    m = len(features)
    n = max(1, min(int(n), m))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    x = features.float()
    if projection_dim is not None and projection_dim < x.shape[1]:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj.to(x.device)
    start = torch.randint(m, (1,), generator=gen).to(x.device)
    chosen = torch.empty(n, dtype=torch.long, device=x.device)
    chosen[0] = start[0]
    sq = x.square().sum(1)                        # ||x_i||^2: each step is one matrix-vector product
    min_d = (x - x[start]).square().sum(1)
    for k in range(1, n):                         # device-side argmax: no host round-trip per step
        nxt = min_d.argmax()
        chosen[k] = nxt
        c = x[nxt]
        min_d = torch.minimum(min_d, torch.addmv(sq + c.square().sum(), x, c, alpha=-2))
    return chosen


class PatchCore:
    """PatchCore anomaly detector (Roth et al., CVPR 2022); implements :class:`~.base.Detector`.

    Args:
        backbone: a frozen :class:`~.backbone.Backbone` (two layers: shallow, deep).
        coreset_ratio: fraction of training patches kept in the memory bank (paper: 0.01-0.25; 0.1 default).
        projection_dim: random-projection size for the coreset search (paper: 128).
        patch_size: neighbourhood ``p`` of the local average pooling (paper: 3).
        sigma: Gaussian smoothing of the upsampled map, in pixels (paper: 4).
        reweight: the paper's image-score reweighting (Eq. 7) with ``neighbours`` = b (paper: b = 9).
        grid: ``"shallow"`` (the paper: patches on the shallow layer's grid, the deep map resized up) or
            ``"deep"`` (the shallow map average-pooled down to the deep grid: 4x fewer patches at stride 2,
            a faster memory bank and coreset on a CPU, coarser maps).
        batch_size: images per forward pass (None: :func:`trustvision.batching.forward_batch` for the
            backbone and device; results do not depend on it); seed: the coreset start point and projection.

    Example::

        pc = PatchCore(load_backbone("demo")).fit(train)        # train (N, 3, H, W) in [0, 1]
        res = pc.score(test)                                    # res.maps (M, H, W), res.scores (M,)
    """

    name = "patchcore"

    def __init__(self, backbone: Backbone, *, coreset_ratio: float = 0.1, projection_dim: int | None = 128,
                 patch_size: int = 3, sigma: float = 4.0, reweight: bool = False, neighbours: int = 9,
                 grid: str = "shallow", batch_size: int | None = None, seed: int = 0) -> None:
        if not 0 < coreset_ratio <= 1:
            raise TrustVisionError(f"patchcore: coreset_ratio must be in (0, 1], got {coreset_ratio}")
        if patch_size < 1 or patch_size % 2 == 0:
            raise TrustVisionError(f"patchcore: patch_size must be an odd integer >= 1, got {patch_size}")
        self.backbone = backbone
        self.coreset_ratio, self.projection_dim, self.patch_size = float(coreset_ratio), projection_dim, patch_size
        self.sigma, self.reweight, self.neighbours = float(sigma), bool(reweight), int(neighbours)
        if grid not in ("shallow", "deep"):
            raise TrustVisionError(f"patchcore: grid must be shallow or deep, got {grid!r}")
        self.grid, self.batch_size, self.seed = grid, batch_size, int(seed)
        self.memory_bank: Tensor | None = None

    @property
    def device(self) -> torch.device:
        return next(iter(self.backbone.parameters()), torch.empty(0)).device

    def describe(self) -> dict:
        """Settings for results.json."""
        return {"backbone": self.backbone.name, "layers": list(self.backbone.layers),
                "coreset_ratio": self.coreset_ratio, "projection_dim": self.projection_dim,
                "patch_size": self.patch_size, "grid": self.grid, "sigma": self.sigma, "reweight": self.reweight,
                "neighbours": self.neighbours, "memory_bank": None if self.memory_bank is None
                else list(self.memory_bank.shape)}

    def forward_batch(self, x: Tensor) -> int:
        """Images of ``x`` (N, C, H, W) per backbone forward pass: ``batch_size``, else chosen by device."""
        return forward_batch(self.backbone, self.device, sample_shape=x.shape[1:], override=self.batch_size)

    # ------------------------------------------------------------------ features
    def patch_features(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, h, w, D) locally aware patch features on the shallow (or deep) layer's grid (sec. 3.1)."""
        maps = self.backbone(x.to(self.device, torch.float32))
        p = self.patch_size
        maps = [F.avg_pool2d(m.float(), p, stride=1, padding=p // 2, count_include_pad=False) for m in maps]
        h, w = maps[0 if self.grid == "shallow" else -1].shape[-2:]
        maps = [maps[0] if self.grid == "shallow" else F.adaptive_avg_pool2d(maps[0], (h, w))] + [F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) for m in maps[1:]]
        return torch.cat(maps, 1).permute(0, 2, 3, 1)

    # ------------------------------------------------------------------ Detector
    def fit(self, normal: Tensor, *, progress: Progress | None = None) -> "PatchCore":
        """Build the memory bank from ``normal`` (N, C, H, W) and subsample it to the coreset; returns ``self``."""
        check_images(normal, "patchcore training images")
        progress = progress or Quiet()
        fb = self.forward_batch(normal)
        tick = progress.task("patchcore: patch features", math.ceil(len(normal) / fb))
        feats = []
        with torch.inference_mode():
            for xb in normal.split(fb):
                feats.append(self.patch_features(xb).flatten(0, 2))
                tick()
        bank = torch.cat(feats)
        n = max(1, round(self.coreset_ratio * len(bank)))
        if n < len(bank):
            idx = greedy_coreset(bank, n, projection_dim=self.projection_dim, seed=self.seed)
            bank = bank[idx]
        self.memory_bank = bank.contiguous()
        return self

    def _require_fit(self) -> Tensor:
        if self.memory_bank is None:
            raise TrustVisionError("patchcore: call fit(normal_images) (or load_state_dict) before scoring")
        return self.memory_bank

    def _score_batch(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(maps (N, H, W), scores (N,)) for one batch; differentiable w.r.t. ``x`` when it requires grad."""
        bank = self._require_fit()
        f = self.patch_features(x)
        n, h, w, d = f.shape
        dist, idx = nearest(f.reshape(-1, d), bank)
        patch = dist.view(n, h * w)
        scores, arg = patch.max(1)
        if self.reweight:
            scores = scores * self._weights(f.reshape(n, h * w, d), arg, idx.view(n, h * w))
        maps = F.interpolate(patch.view(n, 1, h, w), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return gaussian_blur(maps, self.sigma), scores

    def _weights(self, f: Tensor, arg: Tensor, idx: Tensor) -> Tensor:
        """Eq. 7: ``1 - softmax_b(||m_test* - m||)[m*]`` over the b nearest bank entries of m* (N,)."""
        bank = self.memory_bank
        rows = torch.arange(len(f), device=f.device)
        m_test = f[rows, arg]                                   # (N, D) the most anomalous patch
        m_star = bank[idx[rows, arg]]                           # (N, D) its nearest bank entry
        b = min(self.neighbours, len(bank))
        support = torch.cdist(m_star, bank).topk(b, largest=False).indices     # (N, b), m* itself first
        d = (m_test[:, None] - bank[support]).norm(dim=-1)                      # (N, b)
        return 1 - d.softmax(1)[:, 0]

    def score(self, x: Tensor) -> AnomalyResult:
        """Anomaly maps (N, H, W) and image scores (N,) for ``x`` (N, C, H, W), batched, without gradients."""
        check_images(x, "patchcore images")
        maps, scores = [], []
        with torch.inference_mode():
            for xb in x.split(self.forward_batch(x)):
                m, s = self._score_batch(xb.to(self.device, torch.float32))
                maps.append(m)
                scores.append(s)
        return AnomalyResult(torch.cat(maps), torch.cat(scores))

    def score_differentiable(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(maps (N, H, W), scores (N,)) with autograd w.r.t. ``x`` (N, C, H, W) — for the attack."""
        with torch.enable_grad():
            return self._score_batch(x)

    def state_dict(self) -> dict[str, Tensor]:
        """``{"memory_bank": (M, D)}`` (the backbone is the user's and is fingerprinted separately)."""
        return {"memory_bank": self._require_fit().detach().cpu().contiguous()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the memory bank saved by :meth:`state_dict`."""
        bank = state.get("memory_bank")
        if bank is None or bank.ndim != 2:
            raise TrustVisionError("patchcore: state has no (M, D) 'memory_bank' tensor")
        self.memory_bank = bank.to(self.device, torch.float32)
