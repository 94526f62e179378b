"""Raw Zero-Shot metrics (Kotyan, Matsuki & Vargas, PLOS ONE 2022, e0266060) and their link to attacks.

All inputs are NumPy-convertible arrays; ``soft`` is the (n, N-1) matrix of soft labels that a
classifier trained *without* class k gives to the n images of class k (rows sum to one).  The exact
formulas, and where they may differ from the paper, are in ``docs/zeroshot.md``.

* :func:`dbm`: Davies-Bouldin Metric, the Davies-Bouldin scatter of the held-out cluster,
  ``S = ((1/n) sum_i ||s_i - A||_2^q)^(1/q)`` with centroid ``A``; lower = denser cluster.
* :func:`amalgam`: Amalgam Metric, ``||mean_i s_i - mean_i softmax(z_i without entry k)||_1`` between the
  mean Raw Zero-Shot soft label and the full model's soft labels for the class with the held-out entry
  removed and renormalised (``z_i`` the full model's logits); lower = closer to the "amalgam" of known
  classes the full model sees in the class.
* :func:`soft_entropy`: mean Shannon entropy of the soft labels divided by ``log(N-1)`` (in [0, 1]).
* :func:`heldout_silhouette`: mean silhouette of the held-out images among the seen classes' images in
  the same soft-label space.
* :func:`correlate`: Pearson and Spearman correlation with p-values (``scipy.stats``).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def _arr(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def dbm(soft: Any, q: float = 2.0) -> float:
    """Davies-Bouldin scatter of one cluster: ``((1/n) sum_i ||s_i - A||_2^q)^(1/q)``, ``A`` the centroid.

    Args:
        soft: (n, D) points (soft labels), n >= 1.
        q: the scatter's power (Davies & Bouldin 1979); ``q = 1`` is the mean distance to the centroid
            (the "intra-cluster distance" of ``sklearn.metrics.davies_bouldin_score``), ``q = 2`` the RMS
            distance, i.e. ``sqrt(trace(biased covariance))``.
    """
    s = _arr(soft)
    if s.ndim != 2 or len(s) == 0:
        raise ValueError(f"dbm needs (n, D) points with n >= 1, got shape {s.shape}")
    d = np.linalg.norm(s - s.mean(0, keepdims=True), axis=1)
    return float(np.mean(d ** q) ** (1.0 / q))


def drop_and_renormalise(full_logits: Any, k: int) -> np.ndarray:
    """(n, N) full-model logits -> (n, N-1) soft labels without class ``k``: ``softmax(z without z_k)``.

    Equal to removing entry k from ``softmax(z)`` and dividing by the rest, but computed from the logits,
    so it stays exact when the full model gives class k a probability that rounds to one.
    """
    z = np.delete(_arr(full_logits), k, axis=1)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def amalgam(soft: Any, full_logits: Any, k: int) -> float:
    """Amalgam Metric: ``||mean_i s_i - mean_i softmax(z_i without k)||_1`` in [0, 2].

    Args:
        soft: (n, N-1) Raw Zero-Shot soft labels of the class-k images.
        full_logits: (n, N) logits of the full (all-class) model for the same images.
        k: the held-out class (its column in ``full_logits``).
    """
    s = _arr(soft)
    g = drop_and_renormalise(full_logits, k)
    if s.shape != g.shape:
        raise ValueError(f"amalgam: soft labels {s.shape} and full-model soft labels {g.shape} differ")
    return float(np.abs(s.mean(0) - g.mean(0)).sum())


def soft_entropy(soft: Any) -> float:
    """Mean Shannon entropy of the rows of ``soft`` (n, D), divided by ``log D`` (so in [0, 1])."""
    s = np.clip(_arr(soft), 1e-12, 1.0)
    h = -(s * np.log(s)).sum(1)
    return float(h.mean() / math.log(s.shape[1])) if s.shape[1] > 1 else 0.0


def heldout_silhouette(soft: Any, seen_soft: Any, seen_labels: Any) -> float | None:
    """Mean silhouette (Euclidean) of the held-out points when clustered with the seen classes.

    Args:
        soft: (n, D) soft labels of the held-out class.
        seen_soft: (m, D) soft labels of images of the seen classes (same model).
        seen_labels: (m,) their class indices.

    Returns the mean of ``sklearn.metrics.silhouette_samples`` over the held-out points (in [-1, 1]; high =
    the unknown class forms its own compact, separated cluster), or None with fewer than 2 clusters.
    """
    from sklearn.metrics import silhouette_samples
    s, o = _arr(soft), _arr(seen_soft)
    lab = np.concatenate([np.full(len(s), -1), np.asarray(seen_labels, dtype=np.int64)])
    if len(np.unique(lab)) < 2 or len(lab) <= len(np.unique(lab)):
        return None
    return float(silhouette_samples(np.concatenate([s, o]), lab)[: len(s)].mean())


def correlate(x: Any, y: Any) -> dict[str, Any]:
    """Pearson and Spearman correlation of paired samples x, y (n,) with two-sided p-values.

    Returns ``{"n", "pearson_r", "pearson_p", "spearman_rho", "spearman_p"}``; the statistics are None
    (and ``"note"`` says why) for fewer than 3 finite pairs or a constant input.
    """
    from scipy import stats
    xa, ya = _arr(x).ravel(), _arr(y).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    out: dict[str, Any] = {"n": len(xa), "pearson_r": None, "pearson_p": None, "spearman_rho": None,
                           "spearman_p": None}
    if len(xa) < 3:
        out["note"] = "fewer than 3 points"
        return out
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        out["note"] = "constant input"
        return out
    pr = stats.pearsonr(xa, ya)
    sr = stats.spearmanr(xa, ya)
    out.update(pearson_r=float(pr.statistic), pearson_p=float(pr.pvalue), spearman_rho=float(sr.statistic),
               spearman_p=float(sr.pvalue))
    return out
