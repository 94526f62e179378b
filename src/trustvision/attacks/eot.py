"""Expectation over Transformation: any gradient attack against a model seen through a camera.

Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018: to make an
adversarial example that survives printing, rotation, lighting and compression, maximise the *expected*
loss over a distribution ``T`` of transformations, ``E_{t~T}[L(f(t(x + δ)), y)]``.  :class:`EOT` does it for
every attack at once by changing the model, not the attack: ``EOT(transforms, samples)(clf)`` is a
:class:`~trustvision.models.classifier.Classifier` whose logits are the log of the mean softmax over
``samples`` fresh draws per image (:func:`~.base.log_mean_softmax`; one batched forward of N·samples
images), so PGD, APGD, CW, FGSM... follow the gradient of the expectation unchanged::

    view = EOT("rotate:15,scale:0.9-1.1,jpeg:60-90", samples=16)(clf)
    x_adv = PGD(eps=0.3, steps=40)(view, x, y).x_adv
    acc = transformed_accuracy(clf, "rotate:15,scale:0.9-1.1,jpeg:60-90", x_adv, y, seed=1)   # judged fresh

The transforms in the view are differentiable (JPEG through the smooth-rounding codec, :mod:`trustvision.physical
.jpeg`); :func:`transformed_accuracy` judges with *freshly* drawn transforms (another seed) and the real
JPEG codec, so the numbers never reuse the draws the attack optimised over.

Shapes: images (N, C, H, W) in [0, 1] on the classifier's device; labels (N,); logits (N, K).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..physical.transforms import TransformDistribution
from .base import log_mean_softmax


def as_distribution(transforms: TransformDistribution | str, what: str = "--eot") -> TransformDistribution:
    """A :class:`TransformDistribution` from itself or from a spec string (one-line errors naming ``what``)."""
    if isinstance(transforms, TransformDistribution):
        return transforms
    if isinstance(transforms, str):
        return TransformDistribution.parse(transforms, what=what)
    raise TrustVisionError(f"{what}: expected a transform spec or a TransformDistribution, got "
                           f"{type(transforms).__name__}")


class _Expectation(nn.Module):
    """log E_t[softmax(f(t(x)))] over ``samples`` draws per image: (N, C, H, W) -> (N, K)."""

    def __init__(self, clf: Classifier, dist: TransformDistribution, samples: int, seed: int) -> None:
        super().__init__()
        self.clf, self.dist, self.samples, self.seed = clf, dist, samples, seed
        self.inner = clf.module                     # registered: weights_hash() covers the model
        self._gen: torch.Generator | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self._gen is None or self._gen.device != x.device:
            self._gen = torch.Generator(device=x.device).manual_seed(self.seed)
        xs = x.repeat_interleave(self.samples, 0)                               # (N·k, C, H, W), draws adjacent
        return log_mean_softmax(self.clf(self.dist(xs, self._gen, differentiable=True)), self.samples)


class EOTClassifier(Classifier):
    """``base`` seen through ``dist``: logits (N, K) = log of the mean softmax over ``samples`` draws per image.

    Same labels, channels and device as ``base``; its random stream is seeded (``seed``) and advances with
    every call, like a camera that never sees the same pose twice.
    """

    def __init__(self, base: Classifier, dist: TransformDistribution, samples: int, seed: int = 0) -> None:
        self.base, self.dist, self.samples = base, dist, samples
        super().__init__(_Expectation(base, dist, samples, seed), num_classes=base.num_classes, channels=base.channels,
                         labels=base.labels, device=base.device, name=f"{base.name} [EOT k={samples}: {dist}]")


@dataclass
class EOT:
    """Turns a Classifier into its expectation over ``transforms`` (Athalye et al. 2018).

    Args:
        transforms: a :class:`TransformDistribution` or its spec (``"rotate:15,brightness:0.2"``).
        samples: draws per image and forward pass (Athalye et al. average 10–100; 16 by default here).
        seed: seed of the view's own random stream.

    ``EOT(t, 16)(clf)`` returns an :class:`EOTClassifier`; give it to any attack in place of ``clf``.
    """

    transforms: TransformDistribution | str
    samples: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        self.transforms = as_distribution(self.transforms)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise TrustVisionError(f"--eot-samples must be an integer >= 1, got {self.samples!r}")

    def __call__(self, classifier: Classifier) -> EOTClassifier:
        return EOTClassifier(classifier, self.transforms, self.samples, self.seed)

    def describe(self) -> dict:
        return {"transforms": str(self.transforms), "samples": self.samples, "seed": self.seed}


def transformed_accuracy(classifier: Classifier, transforms: TransformDistribution | str, x: Tensor, y: Tensor, *,
                         draws: int = 8, seed: int = 1, batch_size: int = 256, real_codec: bool = True) -> Tensor:
    """(N,) share of ``draws`` fresh transforms under which ``classifier`` still predicts ``y`` for each image.

    Args:
        x: (N, C, H, W) in [0, 1] (any device; moved in batches); y: (N,).
        draws: transforms drawn per image (from a generator seeded with ``seed``: use another seed than the
            attack's view so that the judgement never replays the optimised draws).
        real_codec: JPEG through Pillow (the real codec) rather than the differentiable approximation.
    Returns: (N,) float on the CPU, in [0, 1] in steps of ``1/draws``.  Runs in inference mode.
    """
    dist = as_distribution(transforms)
    if draws < 1:
        raise TrustVisionError(f"draws must be >= 1, got {draws}")
    dev = classifier.device
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    step = max(1, batch_size // draws)
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), step):
            xb = x[i:i + step].to(dev).repeat_interleave(draws, 0)
            yb = y[i:i + step].to(dev).repeat_interleave(draws, 0)
            xt = dist.apply(xb, dist.sample(len(xb), gen, dev), differentiable=not real_codec, generator=gen)
            out.append((classifier(xt).argmax(1) == yb).float().view(-1, draws).mean(1))
    return torch.cat(out).cpu() if out else torch.zeros(0)
