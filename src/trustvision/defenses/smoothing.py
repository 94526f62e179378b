"""Randomized smoothing: Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019.

The smoothed classifier is ``g(x) = argmax_c P(f(x + ε) = c)`` with ``ε ~ N(0, σ² I)``, where
``f`` is the base classifier (the argmax of a :class:`~trustvision.models.classifier.Classifier`'s logits).
If the top class has probability ``p_A ≥ p̲_A > 1/2``, ``g`` is constant on the L2 ball of
radius ``σ·Φ⁻¹(p̲_A)`` around ``x`` (their Theorem 1 with ``p̄_B = 1 − p̲_A``).

* **PREDICT** (their Algorithm 2 / Theorem 2): ``n`` noise samples; with the counts ``n_A ≥ n_B``
  of the top two classes, return the top class when the two-sided binomial test of ``n_A`` in
  ``n_A + n_B`` trials against ``p = 1/2`` has ``p-value ≤ α``, else abstain (:data:`ABSTAIN`).
  The returned class differs from ``g(x)`` with probability at most ``α``.
* **CERTIFY** (Algorithm 1): ``n0`` selection samples pick ``ĉ_A``; ``n`` fresh estimation
  samples count ``n_A``; ``p̲_A = Beta⁻¹(α; n_A, n − n_A + 1)`` is the one-sided ``(1 − α)``
  Clopper-Pearson lower bound; abstain when ``p̲_A < 1/2``, else certify ``ĉ_A`` with radius
  ``σ·Φ⁻¹(p̲_A)``.  Defaults ``n0 = 100``, ``n = 100 000``, ``α = 0.001`` (the paper's).
* :meth:`Smoothed.smoothed_logits`: the log of the mean softmax over ``m`` noise draws, a
  differentiable surrogate of ``g`` — the objective that Salman et al., "Provably Robust Deep
  Learning via Adversarially Trained Smoothed Classifiers", NeurIPS 2019, attack with PGD
  (expectation over the noise).  :meth:`Smoothed.as_classifier` wraps it so that every attack
  of :mod:`trustvision.attacks` can target the smoothed classifier.

Noise sampling runs at the forward-pass floor: the ``N × n`` (image, sample) pairs are laid out
flat and cut into forward batches of ``batch_size`` (one batch holds many images when ``n`` is
small, one image's samples span many batches when it is large).  The default batch comes from
:func:`trustvision.batching.forward_batch` — sized by device and input: a few hundred small images
on a CPU, where the paper's 1 000-image batches fall out of cache and run slower than a per-image
loop, thousands on a GPU.  Each batch takes its Gaussian noise on the device from a seeded
generator drawn in fixed-size blocks (so the counts depend on the seed, never on the batch size),
then one forward pass under ``torch.inference_mode`` (bf16 via the
Classifier's ``precision``), one argmax and one ``scatter_add_`` into the ``(N, K)`` counts on the
device.  Nothing in the loop waits for the host.  Noise is added to [0, 1] pixels without
clamping, so radii are L2 distances in pixel units, the units of attack budgets.

Shapes: images ``x`` ``(N, C, H, W)`` in [0, 1] (any device; moved to the classifier's); counts
``(N, K)`` int64; predictions ``(N,)`` int64 with ``-1`` = abstain; radii and bounds ``(N,)``
float64.  Results are returned on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks.base import log_mean_softmax
from ..attacks.gradient import check_number
from ..batching import forward_batch
from ..errors import TrustVisionError
from ..models.classifier import Classifier

ABSTAIN = -1


# ------------------------------------------------------------------ statistics
def clopper_pearson_lower(successes: np.ndarray | Sequence[int] | int, trials: np.ndarray | Sequence[int] | int,
                          alpha: float) -> np.ndarray:
    """One-sided ``(1 − alpha)`` Clopper-Pearson lower bound on a binomial proportion, elementwise.

    ``Beta⁻¹(alpha; k, n − k + 1)`` and 0 where ``k = 0``; equal to the lower end of the two-sided
    interval at level ``2·alpha`` (``statsmodels``' ``proportion_confint(k, n, 2 * alpha, "beta")``).
    """
    from scipy.stats import beta              # scipy.stats costs about a second to import: only when used
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = beta.ppf(alpha, np.maximum(k, 1e-300), n - k + 1)
    return np.where(k > 0, lower, 0.0)


def binomial_p_value(n_a: np.ndarray | Sequence[int] | int, n_b: np.ndarray | Sequence[int] | int) -> np.ndarray:
    """Two-sided p-value of ``n_a`` successes in ``n_a + n_b`` trials against ``p = 1/2``, elementwise.

    Equals ``scipy.stats.binomtest(n_a, n_a + n_b, 0.5).pvalue``: by symmetry ``min(1, 2·F(min(n_a, n_b)))``
    with ``F`` the Bin(n_a + n_b, 1/2) distribution function.
    """
    from scipy.stats import binom
    a, b = np.asarray(n_a, dtype=np.int64), np.asarray(n_b, dtype=np.int64)
    return np.minimum(1.0, 2.0 * binom.cdf(np.minimum(a, b), a + b, 0.5))


def radius_from_bound(p_lower: np.ndarray, sigma: float) -> np.ndarray:
    """Certified L2 radius ``σ·Φ⁻¹(p̲_A)`` where ``p̲_A ≥ 1/2``, and 0 elsewhere (abstentions)."""
    from scipy.stats import norm
    p = np.asarray(p_lower, dtype=np.float64)
    return np.where(p >= 0.5, sigma * norm.ppf(np.maximum(p, 0.5)), 0.0)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can return with ``n`` samples: every sample votes ``ĉ_A``, ``p̲_A = α^(1/n)``."""
    from scipy.stats import norm
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def check_settings(obj, *, fields: Sequence[str] = ("sigma", "n0", "n", "alpha", "batch_size", "seed")) -> None:
    """Validate smoothing settings on ``obj`` (a :class:`Smoothed` or a section config) with one-line errors."""
    for f in fields:
        if f == "sigma":
            check_number(obj, f, strict=True)
        elif f == "alpha":
            check_number(obj, f, strict=True)
            if obj.alpha >= 1:
                raise TrustVisionError(f"{obj.name}: alpha must lie in (0, 1), got {obj.alpha!r}")
        elif f == "seed":
            check_number(obj, f, integer=True)
        elif f == "batch_size":
            check_number(obj, f, low=1, integer=True, none_ok=True)
        else:
            check_number(obj, f, low=1, integer=True)


# ------------------------------------------------------------------ results
@dataclass
class _Decisions:
    prediction: Tensor

    @property
    def abstained(self) -> Tensor:
        """(N,) bool: where the smoothed classifier abstained."""
        return self.prediction == ABSTAIN


@dataclass
class PredictResult(_Decisions):
    """PREDICT on N images: ``prediction`` (N,) int64 (-1 = abstain), ``p_value`` (N,) float64 of the
    binomial test, ``counts`` (N, K) int64 votes of the base classifier over the ``n`` noise samples."""

    p_value: Tensor
    counts: Tensor


@dataclass
class CertifyResult(_Decisions):
    """CERTIFY on N images.

    Attributes:
        prediction: (N,) int64 certified class ``ĉ_A``, -1 where it abstained.
        radius: (N,) float64 certified L2 radius (0 where it abstained).
        p_lower: (N,) float64 Clopper-Pearson lower bound ``p̲_A``.
        selection_counts: (N, K) int64 votes over the ``n0`` selection samples.
        counts: (N, K) int64 votes over the ``n`` estimation samples.
    """

    radius: Tensor
    p_lower: Tensor
    selection_counts: Tensor
    counts: Tensor

    def certified(self, y: Tensor, r: float) -> Tensor:
        """(N,) bool: certified correct at radius ``r`` (prediction = y and radius ≥ r)."""
        return (self.prediction == y.cpu()) & (self.radius >= r)

    def certified_accuracy(self, y: Tensor, radii: Sequence[float]) -> list[float]:
        """Certified accuracy (share of all N images) at each radius of ``radii``."""
        return [float(self.certified(y, float(r)).double().mean()) if len(y) else 0.0 for r in radii]


# ------------------------------------------------------------------ the smoothed classifier
class Smoothed:
    """The Gaussian-smoothed version of ``classifier`` (Cohen et al. 2019).

    Args:
        classifier: the base classifier (its precision/channels-last options apply to every pass).
        sigma: noise standard deviation in [0, 1] pixel units.
        n0: selection samples of CERTIFY (100).
        n: estimation samples of CERTIFY and samples of PREDICT (100 000).
        alpha: failure probability of PREDICT and CERTIFY (0.001).
        batch_size: noisy images per forward pass (several images share a batch when ``n`` is small);
            None (default): :func:`~trustvision.batching.forward_batch` for the device and image size.
        seed: seeds the noise; every call starts from it, so the same inputs give the same results
            on the same device, whatever the batch size.

    Example::

        sm = Smoothed(clf, sigma=0.25)
        res = sm.certify(x)                 # res.prediction (N,), res.radius (N,)
        acc = res.certified_accuracy(y, [0, 0.25, 0.5])
        robust = PGD(eps=0.5, norm="l2")(sm.as_classifier(m=32), x, y)   # attack g itself
    """

    name: ClassVar[str] = "smoothing"

    def __init__(self, classifier: Classifier, sigma: float, *, n0: int = 100, n: int = 100_000,
                 alpha: float = 0.001, batch_size: int | None = None, seed: int = 0) -> None:
        self.classifier = classifier
        self.sigma, self.n0, self.n, self.alpha, self.batch_size, self.seed = sigma, n0, n, alpha, batch_size, seed
        check_settings(self)

    def describe(self) -> dict:
        """Settings, for results.json."""
        return {"sigma": self.sigma, "n0": self.n0, "n": self.n, "alpha": self.alpha,
                "batch_size": self.batch_size if self.batch_size is not None else "auto", "seed": self.seed}

    def generator(self) -> torch.Generator:
        """A fresh generator on the classifier's device seeded with ``seed``."""
        return torch.Generator(device=self.classifier.device).manual_seed(int(self.seed))

    def _inputs(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise TrustVisionError(f"smoothing: images must be a N,C,H,W tensor, got {tuple(getattr(x, 'shape', ()))}")
        return x.to(self.classifier.device, torch.float32)

    def forward_batch(self, sample_shape: Sequence[int] | None = None) -> int:
        """Noisy images per forward pass: ``batch_size``, or when None the device's choice
        (:func:`~trustvision.batching.forward_batch`) for images of ``sample_shape`` (C, H, W), by default
        the classifier's ``(channels, *input_size)``."""
        if self.batch_size is not None:
            return self.batch_size
        clf = self.classifier
        if sample_shape is None:
            if clf.input_size is None:
                raise ValueError("Smoothed.forward_batch: give sample_shape (C, H, W) when batch_size is automatic")
            sample_shape = (clf.channels, *clf.input_size)
        return forward_batch(clf, clf.device, sample_shape=sample_shape)

    def batches(self, images: int, samples: int, sample_shape: Sequence[int] | None = None) -> int:
        """Forward passes that ``samples`` noise draws for each of ``images`` images of ``sample_shape`` take."""
        return -(-images * samples // self.forward_batch(sample_shape))

    def sample_counts(self, x: Tensor, samples: int, generator: torch.Generator,
                      advance: Callable[[int], None] | None = None) -> Tensor:
        """Votes (N, K) int64, on the device, of the base classifier over ``samples`` noisy copies of each image.

        ``x`` (N, C, H, W); ``advance(1)`` is called after each forward batch (progress bars).  The noise
        comes from ``generator`` in fixed blocks (:class:`_NoiseStream`), so the counts depend on the seed
        and the device but not on the batch size.
        """
        clf, x = self.classifier, self._inputs(x)
        k, total, bs = clf.num_classes, len(x) * samples, self.forward_batch(x.shape[1:])
        counts = torch.zeros(len(x) * k, dtype=torch.long, device=clf.device)
        stream = _NoiseStream(generator, x.shape[1:], clf.device)
        with torch.inference_mode():
            ones = torch.ones(bs, dtype=torch.long, device=clf.device)
            for start in range(0, total, bs):                 # a loop over batches, never over samples
                stop = min(start + bs, total)
                owner = torch.arange(start, stop, device=clf.device) // samples
                noisy = stream.take(stop - start)
                noisy.mul_(self.sigma).add_(x.index_select(0, owner))
                votes = clf(noisy).argmax(1)
                counts.scatter_add_(0, owner * k + votes, ones[:stop - start])
                if advance is not None:
                    advance(1)
        return counts.view(len(x), k)

    def predict(self, x: Tensor, *, advance: Callable[[int], None] | None = None) -> PredictResult:
        """PREDICT for images ``x`` (N, C, H, W): ``n`` samples, binomial test at level ``alpha``."""
        counts = self.sample_counts(x, self.n, self.generator(), advance)
        top = counts.topk(2, dim=1)
        p_value = binomial_p_value(top.values[:, 0].cpu().numpy(), top.values[:, 1].cpu().numpy())
        pred = torch.where(torch.from_numpy(p_value <= self.alpha), top.indices[:, 0].cpu(), ABSTAIN)
        return PredictResult(pred, torch.from_numpy(p_value), counts.cpu())

    def certify(self, x: Tensor, *, advance: Callable[[int], None] | None = None) -> CertifyResult:
        """CERTIFY for images ``x`` (N, C, H, W): ``n0`` selection and ``n`` estimation samples, level ``alpha``."""
        gen = self.generator()
        selection = self.sample_counts(x, self.n0, gen, advance)
        guess = selection.argmax(1)
        counts = self.sample_counts(x, self.n, gen, advance)        # fresh draws from the same stream
        n_a = counts.gather(1, guess[:, None])[:, 0].cpu().numpy()
        p_lower = clopper_pearson_lower(n_a, self.n, self.alpha)
        ok = torch.from_numpy(p_lower >= 0.5)
        return CertifyResult(torch.where(ok, guess.cpu(), ABSTAIN), torch.from_numpy(radius_from_bound(p_lower, self.sigma)),
                             torch.from_numpy(p_lower), selection.cpu(), counts.cpu())

    def smoothed_logits(self, x: Tensor, m: int, generator: torch.Generator | None = None) -> Tensor:
        """(N, K) log of the mean softmax of the base classifier over ``m`` noisy copies of ``x`` (N, C, H, W).

        Differentiable in ``x`` (one forward pass of N·m images); its softmax is the Monte-Carlo
        estimate of the smoothed soft classifier, and its cross-entropy is Salman et al.'s attack loss.
        """
        noise = torch.randn((len(x), int(m), *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
        logits = self.classifier((x[:, None] + self.sigma * noise).flatten(0, 1))
        return log_mean_softmax(logits, int(m))

    def as_classifier(self, m: int = 32, seed: int | None = None) -> Classifier:
        """A :class:`Classifier` whose logits are :meth:`smoothed_logits` with ``m`` fresh draws per call.

        For attacking the smoothed classifier (expectation over the noise); ``seed`` (default: ``seed``)
        seeds its noise stream.
        """
        if not (isinstance(m, int) and m >= 1):
            raise TrustVisionError(f"smoothing: m (noise draws per attack step) must be an integer >= 1, got {m!r}")
        clf = self.classifier
        module = _SmoothedModule(self, m, self.seed if seed is None else seed).eval()
        return Classifier(module, num_classes=clf.num_classes, channels=clf.channels, labels=clf.labels,
                          device=clf.device, name=f"{clf.name} smoothed (sigma={self.sigma:g}, m={m})")


class _NoiseStream:
    """Gaussian noise images (m, C, H, W) taken in any amounts from one generator, drawn in fixed blocks.

    Every draw from the generator has the same shape (``block`` images: 64 on a CPU, 1 024 on an
    accelerator), and what a batch does not use is kept for the next one, so the sequence of noise
    images is the same whatever the batch sizes; full blocks are drawn in place into the batch.
    """

    def __init__(self, generator: torch.Generator, shape: Sequence[int], device: torch.device) -> None:
        self.gen, self.shape, self.device = generator, tuple(shape), device
        self.block = 64 if device.type == "cpu" else 1024
        self.left = torch.empty((0, *self.shape), device=device)

    def take(self, m: int) -> Tensor:
        """The next ``m`` noise images (m, C, H, W), standard normal, on the device."""
        out = torch.empty((m, *self.shape), device=self.device)
        r = min(m, len(self.left))
        out[:r] = self.left[:r]
        self.left = self.left[r:]
        while r < m:
            if m - r >= self.block:
                out[r:r + self.block].normal_(generator=self.gen)
                r += self.block
            else:
                fresh = torch.empty((self.block, *self.shape), device=self.device).normal_(generator=self.gen)
                out[r:] = fresh[:m - r]
                self.left, r = fresh[m - r:], m
        return out


class _SmoothedModule(nn.Module):
    """nn.Module view of :meth:`Smoothed.smoothed_logits` (no parameters; its own seeded noise stream)."""

    def __init__(self, smoothed: Smoothed, m: int, seed: int) -> None:
        super().__init__()
        self.smoothed, self.m = smoothed, m
        self.gen = torch.Generator(device=smoothed.classifier.device).manual_seed(int(seed))

    def forward(self, x: Tensor) -> Tensor:
        return self.smoothed.smoothed_logits(x, self.m, self.gen)

