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
* :func:`correlate`: Pearson and Spearman correlation with p-values (``scipy.stats``) and Fisher-z 95 %
  confidence intervals.

The paper's text leaves room for several readings of both metrics; :func:`variants` computes them side by
side (``docs/zeroshot.md`` lists them and says which is the default and why):

* DBM, *scatter* (the default, :func:`dbm`) or *Davies-Bouldin* (:func:`davies_bouldin_heldout`: the
  held-out cluster's DB ratio ``max_j (S_k + S_j) / ||A_k - A_j||`` against the seen classes' clusters in the
  same soft-label space), each in the raw (N-1)-D soft-label space or in a 2-D projection
  (:func:`pca_2d`, fitted on the union of held-out and seen points);
* AM, *per-image renormalised* (the default, :func:`amalgam`), *mean first* (:func:`amalgam_mean_first`:
  the full model's mean soft label, entry k dropped, renormalised once) or *per image*
  (:func:`amalgam_per_image`: the mean L1 distance image by image).
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


def fisher_ci(r: float, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Confidence interval of a correlation coefficient ``r`` of ``n`` pairs by Fisher's z transform:
    ``tanh(atanh(r) -/+ z_{(1+level)/2} / sqrt(n - 3))``; None for n <= 3 (the interval is undefined)."""
    from scipy.stats import norm
    if n <= 3 or r is None:
        return None
    z = math.atanh(min(max(r, -0.9999999), 0.9999999))
    h = norm.ppf(0.5 + level / 2) / math.sqrt(n - 3)
    return (math.tanh(z - h), math.tanh(z + h))


def correlate(x: Any, y: Any) -> dict[str, Any]:
    """Pearson and Spearman correlation of paired samples x, y (n,) with two-sided p-values.

    Returns ``{"n", "pearson_r", "pearson_p", "pearson_ci", "spearman_rho", "spearman_p", "spearman_ci"}``
    (the CIs are 95 % Fisher-z intervals, :func:`fisher_ci`; for Spearman the same transform, an
    approximation); the statistics are None (and ``"note"`` says why) for fewer than 3 finite pairs or a
    constant input.
    """
    from scipy import stats
    xa, ya = _arr(x).ravel(), _arr(y).ravel()
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    out: dict[str, Any] = {"n": len(xa), "pearson_r": None, "pearson_p": None, "pearson_ci": None,
                           "spearman_rho": None, "spearman_p": None, "spearman_ci": None}
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
    out["pearson_ci"] = fisher_ci(out["pearson_r"], len(xa))
    out["spearman_ci"] = fisher_ci(out["spearman_rho"], len(xa))
    return out


# ------------------------------------------------------------------ readings of the metrics
def _scatter(points: np.ndarray, q: float) -> float:
    return float(np.mean(np.linalg.norm(points - points.mean(0), axis=1) ** q) ** (1.0 / q))


def davies_bouldin_heldout(soft: Any, seen_soft: Any, seen_labels: Any, q: float = 2.0) -> float | None:
    """The held-out cluster's Davies-Bouldin ratio ``R_k = max_j (S_k + S_j) / ||A_k - A_j||_2``.

    ``S`` is the scatter of :func:`dbm` (power ``q``), ``A`` the centroids; ``j`` runs over the seen classes'
    clusters (``seen_soft`` (m, D) with labels (m,)) in the same model's soft-label space.  Lower = the
    unknown class forms a cluster that is tight *relative to its distance from the known classes* (the
    inter-cluster reading of Davies & Bouldin 1979).  None without a seen cluster; ``inf`` when a centroid
    coincides.  With ``q = 1`` the mean of these ratios over all clusters is
    ``sklearn.metrics.davies_bouldin_score``.
    """
    s, o, lab = _arr(soft), _arr(seen_soft), np.asarray(seen_labels)
    if len(s) == 0 or len(o) == 0:
        return None
    a_k, s_k = s.mean(0), _scatter(s, q)
    best = -np.inf
    for j in np.unique(lab):
        pts = o[lab == j]
        m = float(np.linalg.norm(a_k - pts.mean(0)))
        best = max(best, np.inf if m == 0 else (s_k + _scatter(pts, q)) / m)
    return float(best)


def pca_2d(points: Any, fit_on: Any | None = None) -> np.ndarray:
    """(n, D) points projected on the two leading principal axes of ``fit_on`` (default: the points) -> (n, 2).

    Axes of a rank-deficient fit set are padded with zeros (so a 1-D set gives a zero second coordinate).
    """
    p = _arr(points)
    f = p if fit_on is None else _arr(fit_on)
    mu = f.mean(0)
    _, _, vt = np.linalg.svd(f - mu, full_matrices=False)
    out = np.zeros((len(p), 2))
    k = min(2, vt.shape[0])
    out[:, :k] = (p - mu) @ vt[:k].T
    return out


def amalgam_mean_first(soft: Any, full_logits: Any, k: int) -> float:
    """AM, "mean first" reading: ``||mean_i s_i - renorm(mean_i softmax(z_i) without k)||_1``.

    The full model's *mean* soft label of the class is computed first, its entry k dropped and the rest
    renormalised once (instead of image by image as in :func:`amalgam`).
    """
    z = _arr(full_logits)
    p = np.exp(z - z.max(1, keepdims=True))
    p = (p / p.sum(1, keepdims=True)).mean(0)
    g = np.delete(p, k)
    tot = g.sum()
    g = g / tot if tot > 0 else np.full_like(g, 1.0 / len(g))
    return float(np.abs(_arr(soft).mean(0) - g).sum())


def amalgam_per_image(soft: Any, full_logits: Any, k: int) -> float:
    """AM, "per image" reading: ``(1/n) sum_i ||s_i - softmax(z_i without k)||_1`` (pairs the same image)."""
    s, g = _arr(soft), drop_and_renormalise(full_logits, k)
    return float(np.abs(s - g).sum(1).mean())


DBM_VARIANTS = ("dbm", "dbm_2d", "dbm_db", "dbm_db_2d")
"""DBM readings: scatter / Davies-Bouldin ratio, raw soft-label space / 2-D projection (``dbm`` is default)."""
AM_VARIANTS = ("am", "am_mean_first", "am_per_image")
"""AM readings: per-image renormalised (default) / mean first / per image."""


def variants(soft: Any, seen_soft: Any, seen_labels: Any, full_logits: Any, k: int,
             q: float = 2.0) -> dict[str, float | None]:
    """Every DBM and AM reading of one held-out class.

    Args:
        soft: (n, N-1) Raw Zero-Shot soft labels of the held-out class k.
        seen_soft, seen_labels: (m, N-1) soft labels of seen-class images (same model) and their (m,) labels.
        full_logits: (n, N) full-model logits of the class-k images.  k: the held-out class.  q: scatter power.

    Returns ``{name: value}`` for :data:`DBM_VARIANTS` and :data:`AM_VARIANTS`.  The 2-D readings project
    held-out and seen points on the principal plane of their union (:func:`pca_2d`).
    """
    s, o = _arr(soft), _arr(seen_soft)
    both = np.concatenate([s, o]) if len(o) else s
    s2, o2 = pca_2d(s, both), pca_2d(o, both) if len(o) else o
    return {"dbm": dbm(s, q), "dbm_2d": dbm(s2, q),
            "dbm_db": davies_bouldin_heldout(s, o, seen_labels, q),
            "dbm_db_2d": davies_bouldin_heldout(s2, o2, seen_labels, q),
            "am": amalgam(s, full_logits, k), "am_mean_first": amalgam_mean_first(s, full_logits, k),
            "am_per_image": amalgam_per_image(s, full_logits, k)}
