"""Clustering of attention maps, and whether groups of images attend differently.

The method of Sakaguchi, Takimoto et al., "Study on relationship between composition and prediction
of photo aesthetics using CNN", Cogent Engineering 9(1), 2022: compute Grad-CAM++ maps of a CNN that
predicts an aesthetics *score* (a regression target, :class:`~.targets.RegressionTarget`), cluster them with k-means
(MacQueen 1967; Lloyd's algorithm, k-means++ seeding, scikit-learn) and read each cluster's
mean map as one of the model's representative regions of attention; then compare how groups
of images (classes, or genres given by the user) spread over the clusters.

* Features: maps (N, H, W) average-pooled to at most ``size``×``size`` and scaled to unit L2
  norm, so the clustering sees *where* the attention is, not how strong it is.
* ``k``: given, or chosen in ``k_range`` by the largest silhouette score (Rousseeuw 1987).
* Group test: Pearson's chi-square test of independence on the group × cluster contingency
  table (:func:`scipy.stats.chi2_contingency`), with Cramér's V as effect size; empty rows
  and columns are dropped first.

Shapes: maps (N, H, W); labels (N,); centres (k, H, W) (mean full-resolution map per cluster).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrustVisionError


@dataclass
class Clustering:
    """k-means over attention maps.

    Attributes:
        k: number of clusters.  labels: (N,) cluster of each map.
        centers: (k, H, W) mean (full-resolution) map of each cluster's members.
        sizes: (k,) members per cluster.  silhouette: k -> silhouette score of the candidates tried.
        members: per cluster, member indices sorted by distance to the centre (closest first).
    """

    k: int
    labels: np.ndarray
    centers: Tensor
    sizes: np.ndarray
    silhouette: dict[int, float] = field(default_factory=dict)
    members: list[list[int]] = field(default_factory=list)


@dataclass
class GroupTest:
    """Group × cluster counts and the chi-square test of independence.

    Attributes:
        groups: G group names (rows).  table: (G, k) counts.  chi2, p_value, dof: the test
        (None when fewer than two non-empty groups or clusters).  cramers_v: effect size in [0, 1].
    """

    groups: list[str]
    table: np.ndarray
    chi2: float | None
    p_value: float | None
    dof: int | None
    cramers_v: float | None


def map_features(maps: Tensor, size: int = 16) -> np.ndarray:
    """(N, H, W) maps -> (N, h*w) float64 features: average-pooled to at most ``size``², unit L2 norm."""
    h, w = min(size, maps.shape[-2]), min(size, maps.shape[-1])
    small = F.adaptive_avg_pool2d(maps.float()[:, None], (h, w)).flatten(1)
    small = small / small.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return small.cpu().double().numpy()


def cluster_maps(maps: Tensor, k: int | None = None, *, k_range: tuple[int, int] = (2, 8), size: int = 16,
                 seed: int = 0, silhouette_sample: int = 2000) -> Clustering:
    """Cluster attention maps (N, H, W) with k-means; ``k=None`` picks k in ``k_range`` by silhouette.

    Args:
        maps: (N, H, W) maps (CPU or device).  k: clusters, or None.  k_range: inclusive candidates.
        size: pooled feature resolution.  seed: k-means and silhouette sampling seed.
        silhouette_sample: silhouette on at most this many maps (it is O(N²)).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    feats = map_features(maps, size)
    n = len(feats)
    if k is not None and not 1 <= k <= n:
        raise TrustVisionError(f"clusters: k must be between 1 and the number of maps ({n}), got {k}")
    if n < 3 and k is None:
        raise TrustVisionError(f"clusters: need at least 3 maps to choose k, got {n}")
    scores: dict[int, float] = {}
    fits = {}
    candidates = [k] if k is not None else list(range(max(2, k_range[0]), min(k_range[1], n - 1) + 1))
    for kk in candidates:
        km = KMeans(n_clusters=kk, n_init=4, random_state=seed).fit(feats)
        fits[kk] = km
        if k is None:
            if len(np.unique(km.labels_)) < 2:
                scores[kk] = -1.0
                continue
            scores[kk] = float(silhouette_score(feats, km.labels_, sample_size=min(silhouette_sample, n),
                                                random_state=seed))
    best = k if k is not None else max(scores, key=lambda kk: (scores[kk], -kk))
    km = fits[best]
    labels = km.labels_.astype(int)
    lab_t = torch.as_tensor(labels)
    m = maps.detach().float().cpu()
    onehot = F.one_hot(lab_t, best).float()                          # (N, k)
    sizes = onehot.sum(0)
    centers = torch.einsum("nk,nhw->khw", onehot, m) / sizes.clamp_min(1).view(-1, 1, 1)
    dist = ((feats - km.cluster_centers_[labels]) ** 2).sum(1)
    members = [np.flatnonzero(labels == c)[np.argsort(dist[labels == c], kind="stable")].tolist()
               for c in range(best)]
    return Clustering(best, labels, centers, sizes.long().numpy(), scores, members)


def group_test(labels: np.ndarray, groups: Sequence[str], k: int) -> GroupTest:
    """Counts of each group over the k clusters, chi-square test of independence and Cramér's V.

    Args: labels (N,) cluster ids in 0..k-1; groups (N,) group name per map.
    """
    from scipy.stats import chi2_contingency
    if len(groups) != len(labels):
        raise TrustVisionError(f"groups: {len(groups)} labels for {len(labels)} maps")
    names = sorted({str(g) for g in groups})
    row = {g: i for i, g in enumerate(names)}
    table = np.zeros((len(names), k), dtype=np.int64)
    np.add.at(table, (np.array([row[str(g)] for g in groups], dtype=int), np.asarray(labels, dtype=int)), 1)
    sub = table[table.sum(1) > 0][:, table.sum(0) > 0]
    if min(sub.shape) < 2:
        return GroupTest(names, table, None, None, None, None)
    chi2, p, dof, _ = chi2_contingency(sub, correction=False)
    v = float(np.sqrt(chi2 / (sub.sum() * (min(sub.shape) - 1))))
    return GroupTest(names, table, float(chi2), float(p), int(dof), v)


def read_groups(path: str | Path, n: int, paths: Sequence[str] = ()) -> list[str]:
    """Group label per image from a CSV ``image,group`` (a header row ``image,group`` is optional).

    ``image`` is an integer row index into the dataset as loaded (``0..n-1``) or, for image
    folders, a file path (as loaded, relative to the data folder, or just the file name).
    Images the file does not mention get the group ``"(none)"``.

    Args: path: the CSV.  n: number of images.  paths: (n,) image paths of the dataset, if any.
    Raises: TrustVisionError naming the file and row for anything it cannot use.
    """
    p = Path(path)
    try:
        rows = list(csv.reader(p.read_text(encoding="utf-8-sig").splitlines()))
    except (OSError, UnicodeDecodeError) as e:
        raise TrustVisionError(f"{p}: cannot read groups CSV ({e.__class__.__name__})") from None
    keys: dict[str, int] = {}
    for i, full in enumerate(paths):
        fp = Path(full)
        for key in (str(full), fp.name, str(Path(fp.parent.name) / fp.name)):
            keys.setdefault(key, i)
    out = ["(none)"] * n
    seen = 0
    for r, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise TrustVisionError(f"{p}: row {r}: expected 2 columns 'image,group', got {len(row)}")
        img, grp = row[0].strip(), row[1].strip()
        if r == 1 and img.lower() in ("image", "path", "file", "index") and grp.lower() == "group":
            continue
        if img in keys:
            idx = keys[img]
        elif img.isdigit() and int(img) < n:
            idx = int(img)
        else:
            raise TrustVisionError(f"{p}: row {r}: image {img!r} is not in the dataset "
                                   f"(use a row index 0..{n - 1}{' or an image path' if paths else ''})")
        if not grp:
            raise TrustVisionError(f"{p}: row {r}: empty group for image {img!r}")
        out[idx] = grp
        seen += 1
    if not seen:
        raise TrustVisionError(f"{p}: no 'image,group' rows")
    return out
