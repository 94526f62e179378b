"""Universal adversarial patch: one printable sticker that fools a model wherever it is put (Brown et al. 2017).

Brown, Mané, Roy, Abadi & Gilmer, "Adversarial Patch", arXiv:1712.09665 (2017): train one patch ``p`` to
maximise ``E_{x ~ X, t ~ T, l ~ L} [log Pr(target | A(p, x, l, t))]`` — the expectation over images, patch
locations ``l`` and transformations ``t`` (rotation, scale: Expectation over Transformation, Athalye et al.
2018) — so that it keeps working when printed and photographed.  Here:

* placement per draw (location, rotation, scale of the patch; :mod:`.patch_render`), and optionally
  photometric camera effects on the whole patched image (brightness, contrast, blur, noise, JPEG...) from
  :class:`trustvision.physical.transforms.TransformDistribution` (``eot="brightness:0.2,blur:1"``);
* targeted (``log Pr(t)``) or untargeted (``log(1 - Pr(y))``, ``y`` the clean prediction);
* optional penalties of Sharif et al. (CCS 2016): total variation (smooth, printable) and the
  non-printability score against a colour palette;
* Adam on the patch pixels, clipped to [0, 1] after each step; every step draws ``batch_size`` images ×
  ``draws`` placements and runs them in one forward/backward; seeded.

The patch covers ``area`` of the image (a square, or the disc of the same area).  Success is measured on
held-out images under fresh draws by :func:`patch_success` (also at other areas: the same patch printed
larger or smaller).  Shapes: images (N, C, H, W) in [0, 1]; patch (C, p, p); mask (1, p, p).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from .patch_render import (SHAPES, apply_patch, check_fits, default_palette, load_palette, nps, palette_for,
                           sample_placement, shape_mask, total_variation)


def parse_scale(text: str | float | tuple | list, what: str = "--scale") -> tuple[float, float]:
    """``"0.9-1.1"`` / ``"1"`` / ``(0.9, 1.1)`` -> (low, high) side multipliers, 0 < low <= high."""
    try:
        if isinstance(text, (tuple, list)):
            lo, hi = (float(text[0]), float(text[-1]))
        elif isinstance(text, (int, float)) and not isinstance(text, bool):
            lo = hi = float(text)
        else:
            a, sep, b = str(text).strip().partition("-")
            lo, hi = float(a), float(b) if sep else float(a)
    except (ValueError, IndexError, TypeError):
        raise TrustVisionError(f"{what}: expected LOW-HIGH like 0.9-1.1, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise TrustVisionError(f"{what}: expected 0 < LOW <= HIGH, got {text!r}")
    return lo, hi


def photometric(spec, what: str = "--eot"):
    """The :class:`~trustvision.physical.transforms.TransformDistribution` of ``spec`` — a spec string, a
    distribution (returned as is) or None (no photometric EOT)."""
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        return spec
    from ..physical.transforms import TransformDistribution
    return TransformDistribution.parse(spec, what=what)


def scaled(dist, k: float):
    """``dist`` (a TransformDistribution or None) with every range scaled by strength ``k`` about the identity
    (offsets, angles, sigmas × k; factors 1 + (f - 1)·k; JPEG quality 100 - (100 - q)·k); identities dropped."""
    if dist is None or k == 1:
        return dist
    from ..physical.transforms import ITEMS, TransformDistribution
    out = {}
    for name, (lo, hi) in dist.ranges.items():
        if name == "jpeg":
            lo, hi = 100 - (100 - lo) * k, 100 - (100 - hi) * k
        elif ITEMS[name].factor:
            lo, hi = 1 + (lo - 1) * k, 1 + (hi - 1) * k
        else:
            lo, hi = lo * k, hi * k
        lo, hi = max(lo, ITEMS[name].low), min(hi, ITEMS[name].high)
        identity = (1.0, 1.0) if ITEMS[name].factor else ((100.0, 100.0) if name == "jpeg" else (0.0, 0.0))
        if (round(lo, 9), round(hi, 9)) != identity:
            out[name] = (min(lo, hi), hi) if name != "jpeg" else (round(min(lo, hi)), round(hi))
    return TransformDistribution(out, padding=dist.padding) if out else None


@dataclass
class PatchResult:
    """A trained patch: ``patch`` (C, p, p) in [0, 1] and its ``mask`` (1, p, p) (on the classifier's device),
    the area it was trained for, ``losses`` (one per step) and timing."""

    patch: Tensor
    mask: Tensor
    area: float
    shape: str
    target: int | None
    side: float
    steps: int
    losses: list[float]
    seconds: float
    seconds_per_step: float
    extras: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-ready summary (without the tensors)."""
        return {k: v for k, v in asdict(self).items() if k not in ("patch", "mask")} | {
            "patch_pixels": list(self.patch.shape)}


@dataclass
class AdversarialPatch:
    """Trainer of a universal adversarial patch (see the module docstring for the papers).

    Args:
        area: share of the image the patch covers at scale 1 (0.05).
        shape: ``"square"`` or ``"circle"`` (the disc of the same area).
        rotation: placements are rotated by U(-rotation, rotation) degrees (22.5, ART's default).
        scale: side multiplier range (0.9, 1.1) around the side of ``area``.
        eot: photometric transforms of the whole patched image, a TransformDistribution spec (None).
        steps: Adam steps (500); batch_size: images per step (32); draws: placements per image per step (4).
        lr: Adam learning rate on [0, 1] pixels (0.05).
        tv, nps: weights of the total-variation and non-printability penalties (0: off).
        palette: colour file for ``nps`` (one R G B per line, 0-255 or 0-1); None: :func:`default_palette`.
        resolution: patch pixels per side (None: the side at the largest scale, rounded up).
        init: ``"random"`` (uniform) or ``"grey"`` (0.5, ART's start).
        seed: seeds the start, the batches and the draws.

    Example::

        res = AdversarialPatch(area=0.1, steps=300).generate(clf, x_train, target=3)
        rate = patch_success(clf, x_test, res.patch, res.mask, area=0.1, y=y_test, target=3)["success"]
    """

    area: float = 0.05
    shape: str = "square"
    rotation: float = 22.5
    scale: tuple[float, float] = (0.9, 1.1)
    eot: str | None = None
    steps: int = 500
    batch_size: int = 32
    draws: int = 4
    lr: float = 0.05
    tv: float = 0.0
    nps: float = 0.0
    palette: str | None = None
    resolution: int | None = None
    init: str = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        self.scale = parse_scale(self.scale)
        if self.shape not in SHAPES:
            raise TrustVisionError(f"--shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if isinstance(self.area, bool) or not isinstance(self.area, (int, float)) or not 0 < self.area < 1:
            raise TrustVisionError(f"--area must lie in (0, 1) (a fraction of the image), got {self.area!r}")
        for name, low in (("steps", 1), ("batch_size", 1), ("draws", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise TrustVisionError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {v!r}")
        for name in ("rotation", "lr", "tv", "nps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise TrustVisionError(f"--{name} must be a number >= 0, got {v!r}")
        if not self.rotation <= 180:
            raise TrustVisionError(f"--rotation must lie in [0, 180] degrees, got {self.rotation!r}")
        if self.init not in ("random", "grey"):
            raise TrustVisionError(f"patch init must be 'random' or 'grey', got {self.init!r}")
        self._palette = load_palette(self.palette) if self.palette else default_palette()
        self._photo = photometric(self.eot)

    @classmethod
    def brown2017(cls, **overrides: Any) -> "AdversarialPatch":
        """The authors' settings (their released notebook, also ART's defaults): a circular patch whose diameter is
        U(0.1, 1.0) of the image side (``area`` = π/4: diameter = side, for square images; ``scale`` (0.1, 1.0)),
        rotation ±22.5°, 16 images per step, one placement each, grey start.  Deviations kept: Adam's learning
        rate on [0, 1] pixels (theirs, 5.0, is on their model's input scale), and success is judged at fixed areas."""
        kw: dict[str, Any] = dict(shape="circle", area=math.pi / 4, scale=(0.1, 1.0), rotation=22.5, batch_size=16,
                                  draws=1, init="grey")
        return cls(**{**kw, **overrides})

    def describe(self) -> dict:
        return {"attack": "patch", **asdict(self)}

    def _start(self, c: int, p: int, device: torch.device) -> Tensor:
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        p0 = torch.rand(c, p, p, generator=g) if self.init == "random" else torch.full((c, p, p), 0.5)
        return p0.to(device).requires_grad_(True)

    def _loss(self, logits: Tensor, lab: Tensor, target: int | None) -> Tensor:
        """(B·K,) loss to minimise: ``-log Pr(target)`` (targeted) or ``-log(1 - Pr(y))`` (untargeted)."""
        logp = logits.log_softmax(1)
        if target is not None:
            return -logp[:, target]
        other = logp.masked_fill(torch.nn.functional.one_hot(lab, logits.shape[1]).bool(), float("-inf"))
        return -torch.logsumexp(other, 1)

    def generate(self, classifier: Classifier, x: Tensor, *, target: int | None = None,
                 y: Tensor | None = None) -> PatchResult:
        """Train the patch on images ``x`` (N, C, H, W) in [0, 1].

        ``target``: class for a targeted patch (None: untargeted, against ``y`` (N,) or, without it, the
        model's clean predictions).  Returns :class:`PatchResult` (patch (C, p, p) on the classifier's device).
        """
        clf, dev = classifier, classifier.device
        if x.ndim != 4 or len(x) == 0:
            raise TrustVisionError(f"patch: training images must be a non-empty N,C,H,W tensor, got {tuple(x.shape)}")
        if target is not None and not 0 <= int(target) < clf.num_classes:
            raise TrustVisionError(f"--target must be a class in [0, {clf.num_classes - 1}], got {target}")
        hw = tuple(x.shape[-2:])
        side = check_fits(self.area, hw, self.shape, self.scale[1])
        p = self.resolution or max(2, math.ceil(side * self.scale[1]))
        x = x.to(dev, torch.float32)
        lab = (clf.predict(x).argmax(1).clone() if y is None else y.to(dev, torch.long)) if target is None else None
        pal = palette_for(self._palette, x.shape[1]).to(dev) if self.nps > 0 else None
        mask = shape_mask(self.shape, p, dev)
        patch = self._start(x.shape[1], p, dev)
        adam = _Adam(patch, self.lr)
        g = torch.Generator(device=dev).manual_seed(self.seed + 1)
        order = _batches(len(x), self.steps, self.batch_size, self.seed).to(dev)
        losses = torch.zeros(self.steps, device=dev)
        t0 = time.perf_counter()
        for step in range(self.steps):
            idx = order[step]
            xb = x[idx].repeat_interleave(self.draws, 0)
            with torch.enable_grad():
                xp = self._draw(xb, patch, mask, side, g)
                loss = self._loss(clf(xp), None if lab is None else lab[idx].repeat_interleave(self.draws),
                                  target).mean()
                total = loss + self._penalty(patch, pal)
                (grad,) = torch.autograd.grad(total, patch)
            with torch.no_grad():
                adam.step(grad)
                patch.clamp_(0, 1)
                losses[step] = loss.detach()
        secs = time.perf_counter() - t0
        return PatchResult(patch.detach(), mask, float(self.area), self.shape, target, side, self.steps,
                           losses.tolist(), secs, secs / self.steps,
                           {"tv": float(total_variation(patch.detach())),
                            "nps": float(nps(patch.detach(), palette_for(self._palette, x.shape[1]).to(dev)))})

    def _draw(self, xb: Tensor, patch: Tensor, mask: Tensor, side: float, g: torch.Generator) -> Tensor:
        """One EOT draw per row of ``xb`` (M, C, H, W): placement, then the photometric transforms."""
        pl = sample_placement(len(xb), tuple(xb.shape[-2:]), side, rotation=self.rotation, scale=self.scale,
                              generator=g, device=xb.device)
        xp = apply_patch(xb, patch, mask, pl)
        if self._photo is not None:
            xp = self._photo.apply(xp, self._photo.sample(len(xp), g, xb.device), differentiable=True, generator=g)
        return xp

    def _penalty(self, patch: Tensor, pal: Tensor | None) -> Tensor:
        out = patch.new_zeros(())
        if self.tv > 0:
            out = out + self.tv * total_variation(patch)
        if pal is not None:
            out = out + self.nps * nps(patch, pal)
        return out


class _Adam:
    """Adam (Kingma & Ba, ICLR 2015; torch's defaults betas (0.9, 0.999), eps 1e-8) on one tensor, written out:
    ``torch.optim`` would import ``torch._dynamo`` (seconds) on first use for five tensor operations."""

    def __init__(self, param: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.p, self.lr, self.b1, self.b2, self.eps, self.t = param, lr, betas[0], betas[1], eps, 0
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)

    @torch.no_grad()
    def step(self, grad: Tensor) -> None:
        self.t += 1
        self.m.mul_(self.b1).add_(grad, alpha=1 - self.b1)
        self.v.mul_(self.b2).addcmul_(grad, grad, value=1 - self.b2)
        denom = (self.v / (1 - self.b2 ** self.t)).sqrt_().add_(self.eps)
        self.p.addcdiv_(self.m, denom, value=-self.lr / (1 - self.b1 ** self.t))


def _batches(n: int, steps: int, batch: int, seed: int) -> Tensor:
    """(steps, min(batch, n)) image indices: consecutive slices of seeded permutations (epochs)."""
    b = min(batch, n)
    g = torch.Generator().manual_seed(seed)
    epochs = math.ceil(steps * b / n) + 1
    stream = torch.cat([torch.randperm(n, generator=g) for _ in range(epochs)])
    return stream[: steps * b].view(steps, b)


@torch.inference_mode()
def patch_success(classifier: Classifier, x: Tensor, patch: Tensor, mask: Tensor, *, area: float,
                  y: Tensor | None = None, target: int | None = None, rotation: float = 22.5,
                  scale: tuple[float, float] = (0.9, 1.1), eot: Any = None, draws: int = 4, seed: int = 1234,
                  batch_size: int = 256, shape: str = "square") -> dict[str, Any]:
    """Success of ``patch`` (C, p, p) printed to cover ``area`` on images ``x`` (N, C, H, W) under fresh draws.

    Every image gets ``draws`` placements (location, rotation ±``rotation``°, side × U(``scale``)) and, with
    ``eot`` (a spec or a TransformDistribution), photometric transforms judged with the real codecs
    (``differentiable=False``).  Targeted: share
    of (image, draw) pairs predicted ``target`` among images whose label ``y`` is not the target; untargeted:
    share predicted differently from ``y`` (the error rate; ``y`` defaults to the clean predictions).
    Returns ``{"success", "per_image" (N,) float, "pred" (N,) first-draw predictions, "eligible"}`` (CPU).
    """
    dev = classifier.device
    side = check_fits(area, tuple(x.shape[-2:]), shape, scale[1])
    photo = photometric(eot)
    y = classifier.predict(x).argmax(1).cpu() if y is None else y.cpu()
    g = torch.Generator(device=dev).manual_seed(seed)
    patch, mask = patch.to(dev), mask.to(dev)
    hits, first = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev, torch.float32).repeat_interleave(draws, 0)
        pl = sample_placement(len(xb), tuple(xb.shape[-2:]), side, rotation=rotation, scale=scale, generator=g,
                              device=dev)
        xp = apply_patch(xb, patch, mask, pl)
        if photo is not None:
            xp = photo.apply(xp, photo.sample(len(xp), g, dev), differentiable=False, generator=g)
        pred = classifier(xp).argmax(1).view(-1, draws)
        yb = y[i:i + batch_size].to(dev)
        hits.append(((pred == target) if target is not None else (pred != yb[:, None])).float().mean(1))
        first.append(pred[:, 0])
    per_image, pred0 = torch.cat(hits).cpu(), torch.cat(first).cpu()
    eligible = (y != target) if target is not None else torch.ones(len(y), dtype=torch.bool)
    rate = float(per_image[eligible].mean()) if bool(eligible.any()) else float("nan")
    return {"success": rate, "per_image": per_image, "pred": pred0, "eligible": int(eligible.sum())}
