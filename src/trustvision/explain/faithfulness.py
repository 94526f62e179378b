"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk et al., RISE, BMVC 2018).

Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models".

* **Deletion**: remove pixels in order of decreasing saliency (replace them by a baseline,
  zeros by default) and follow the probability of the explained class; a faithful map makes
  it drop fast — *lower* AUC is better.
* **Insertion**: start from a blurred copy and put the original pixels back in the same order;
  the probability should rise fast — *higher* AUC is better.

Curves are sampled at ``steps + 1`` fractions ``0, 1/steps, ..., 1`` of the pixels; the AUC is
the trapezoid area over the fraction axis (so it lies in [0, 1]; ``output="raw"`` follows a raw model output
instead, e.g. a regression score).  Ties in a map (a CAM is
often 0 over large regions) are broken by a seeded random order, never by pixel position.
A seeded uniform random map gives the baseline a real map must beat.

Shapes: images (N, C, H, W) in [0, 1]; saliency (N, H, W); curves (N, steps + 1); AUCs (N,).
Batched: the masked images of all steps of a batch are built with one broadcast
comparison against each pixel's rank and classified in large stacked forward passes
(``max_images`` images per pass; by default :func:`trustvision.batching.forward_batch` for the
device and image size: a few hundred small images on a CPU, thousands on a GPU), in inference mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..batching import forward_batch
from ..errors import TrustVisionError
from ..models.classifier import Classifier


@dataclass
class FaithfulnessResult:
    """Deletion / insertion curves and areas.

    Attributes:
        fractions: (S+1,) share of pixels deleted / inserted.
        deletion, insertion: (N, S+1) probability of the explained class along the curves.
        deletion_auc, insertion_auc: (N,) areas under the curves (trapezoid, in [0, 1]).
    """

    fractions: Tensor
    deletion: Tensor
    insertion: Tensor
    deletion_auc: Tensor
    insertion_auc: Tensor

    def summary(self) -> dict[str, float]:
        """Mean AUCs (deletion: lower is better; insertion: higher is better)."""
        return {"deletion_auc": float(self.deletion_auc.mean()), "insertion_auc": float(self.insertion_auc.mean())}


def random_saliency(shape: tuple[int, int, int], seed: int = 0) -> Tensor:
    """A seeded uniform random saliency map (N, H, W) on the CPU: the baseline to beat."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def pixel_ranks(saliency: Tensor, seed: int = 0) -> Tensor:
    """(N, H, W) saliency -> (N, H*W) rank of each pixel (0 = most salient); ties in seeded random order."""
    n, hw = saliency.shape[0], saliency[0].numel()
    g = torch.Generator().manual_seed(seed)
    perm = torch.argsort(torch.rand(n, hw, generator=g), dim=1).to(saliency.device)
    shuffled = saliency.flatten(1).float().gather(1, perm)
    order = perm.gather(1, torch.argsort(shuffled, dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(hw, device=order.device).expand(n, hw).contiguous())
    return ranks


def blur(x: Tensor, sigma: float = 5.0) -> Tensor:
    """Gaussian blur of (N, C, H, W) images (RISE's insertion start, kernel ``11`` or smaller), on the device."""
    from torchvision.transforms.functional import gaussian_blur
    k = min(11, (min(x.shape[-2:]) // 2) * 2 - 1)
    return gaussian_blur(x, [k, k], [sigma, sigma]) if k >= 3 else x.mean((2, 3), keepdim=True).expand_as(x)


def _curve(clf: Classifier, start: Tensor, end: Tensor, ranks: Tensor, counts: Tensor, target: Tensor,
           max_images: int, output: str = "probability") -> Tensor:
    """Probabilities (N, S+1) (raw outputs with ``output="raw"``): at step s the pixels with rank < counts[s] come
    from ``end``, others from ``start``."""
    n = len(start)
    probs = []
    chunk = max(1, max_images // max(n, 1))
    for i in range(0, len(counts), chunk):
        c = counts[i:i + chunk]
        mask = (ranks[None] < c.view(-1, 1, 1, 1)).unsqueeze(2)          # (s, N, 1, H, W)
        imgs = torch.where(mask, end[None], start[None]).flatten(0, 1)
        logits = clf(imgs)
        p = (logits.softmax(1) if output == "probability" else logits).view(len(c), n, -1)
        probs.append(p.gather(2, target.view(1, n, 1).expand(len(c), n, 1))[..., 0])
    return torch.cat(probs).T


def auc(curve: Tensor) -> Tensor:
    """Trapezoid area (N,) of curves (N, S+1) sampled evenly on [0, 1]."""
    s = curve.shape[1] - 1
    return (curve[:, 1:] + curve[:, :-1]).sum(1) / (2 * s)


def deletion_insertion(clf: Classifier, x: Tensor, saliency: Tensor, target: Tensor, *, steps: int = 28,
                       deletion_baseline: str = "zero", blur_sigma: float = 5.0, batch_size: int = 64,
                       max_images: int | None = None, seed: int = 0, output: str = "probability") -> FaithfulnessResult:
    """Deletion and insertion curves for saliency maps.

    Args:
        clf: the classifier.  x: (N, C, H, W) images in [0, 1] (any device).
        saliency: (N, H, W) maps (higher = more important).  target: (N,) explained classes.
        steps: number of deletion/insertion steps (curves have ``steps + 1`` points).
        deletion_baseline: ``"zero"`` (RISE), ``"blur"`` or ``"mean"`` (per-image mean colour).
        blur_sigma: Gaussian sigma of the insertion start image.
        batch_size: images per group; ``max_images``: images per stacked forward pass (None: chosen by
            :func:`~trustvision.batching.forward_batch`; the curves do not depend on it).
        seed: tie-breaking order.
        output: ``"probability"`` (softmax of the explained class, RISE) or ``"raw"`` (the explained output as
            the model gives it: for a regression score, whose softmax means nothing; the AUCs then are in the
            output's units, comparable only with another map's on the same images).
    Returns: curves on the CPU (see :class:`FaithfulnessResult`).
    """
    if saliency.shape != (x.shape[0], *x.shape[-2:]):
        raise TrustVisionError(f"saliency must be (N, H, W) = {(x.shape[0], *x.shape[-2:])}, "
                               f"got {tuple(saliency.shape)}")
    if steps < 1:
        raise TrustVisionError(f"faithfulness steps must be >= 1, got {steps}")
    if deletion_baseline not in ("zero", "blur", "mean"):
        raise TrustVisionError(f"deletion baseline must be zero, blur or mean, got {deletion_baseline!r}")
    if output not in ("probability", "raw"):
        raise TrustVisionError(f"faithfulness output must be 'probability' or 'raw', got {output!r}")
    hw = x.shape[-2] * x.shape[-1]
    dev = clf.device
    max_images = forward_batch(clf, dev, sample_shape=x.shape[1:], override=max_images)
    counts = torch.round(torch.linspace(0, hw, steps + 1, device=dev)).long()
    dels, ins = [], []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(dev)
            tb = target[i:i + batch_size].to(dev)
            ranks = pixel_ranks(saliency[i:i + batch_size].to(dev), seed + i).view(len(xb), *x.shape[-2:])
            blurred = blur(xb, blur_sigma)
            base = {"zero": torch.zeros_like(xb), "blur": blurred,
                    "mean": xb.mean((2, 3), keepdim=True).expand_as(xb)}[deletion_baseline]
            dels.append(_curve(clf, xb, base, ranks, counts, tb, max_images, output).cpu())
            ins.append(_curve(clf, blurred, xb, ranks, counts, tb, max_images, output).cpu())
    d = torch.cat(dels) if dels else torch.zeros(0, steps + 1)
    n_ = torch.cat(ins) if ins else torch.zeros(0, steps + 1)
    return FaithfulnessResult(torch.linspace(0, 1, steps + 1), d, n_, auc(d), auc(n_))
