"""The segmentation contracts: :class:`SegDataset` (images + per-pixel masks) and :class:`Segmenter`.

``Segmenter`` is the segmentation counterpart of :class:`~trustvision.models.classifier.Classifier`:
``segmenter(x) -> logits`` with ``x`` float in **[0, 1]**, ``(N, C, H, W)``, logits ``(N, K, H, W)`` of the
final round.  It runs the wrapped module (and every submodule) in eval mode and restores each one's mode
afterwards; it never changes weights.  A Feedback U-Net (Shibuya & Hotta 2020) returns one logit map
per round; :meth:`Segmenter.rounds` exposes them all.  With a :class:`~.leak.LeakPrior` the wrapper
computes the test-time annotation prior (k nearest training masks, ``(N, K, H, W)``) from the pixels,
without gradient (retrieval is discrete), and hands it to the module as ``prior=``.

Module calling convention (what :class:`~.unet.UNet` and :class:`~.feedback.FeedbackUNet` implement):
``module(x, prior=None)`` -> logits ``(N, K, H, W)``, or ``module(x, prior=None, rounds=R)`` -> list of R
logit maps when the module has ``feedback = True``.  A plain user module ``module(x) -> (N, K, H, W)``
works too (without a leak prior).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..models.classifier import weights_hash

if TYPE_CHECKING:                                   # pragma: no cover
    from .leak import LeakPrior


@dataclass
class SegDataset:
    """Images ``x`` (N, C, H, W) float in [0, 1] and masks ``masks`` (N, H, W) int64 in 0..K-1 or ``ignore_index``."""

    x: Tensor
    masks: Tensor
    num_classes: int
    labels: list[str]
    ignore_index: int | None = 255
    name: str = "data"
    synthetic: bool = False
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.masks.ndim != 3:
            raise TrustVisionError(f"{self.name}: images must be N,C,H,W and masks N,H,W; got "
                                   f"{tuple(self.x.shape)} and {tuple(self.masks.shape)}")
        if len(self.x) != len(self.masks) or self.x.shape[-2:] != self.masks.shape[-2:]:
            raise TrustVisionError(f"{self.name}: {tuple(self.x.shape)} images do not match "
                                   f"{tuple(self.masks.shape)} masks")
        if len(self.labels) != self.num_classes:
            raise TrustVisionError(f"{self.name}: {len(self.labels)} label names for {self.num_classes} classes")
        if self.masks.dtype != torch.int64:
            self.masks = self.masks.long()

    def __len__(self) -> int:
        return len(self.x)

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    def subset(self, idx: Tensor | Sequence[int]) -> "SegDataset":
        """The images and masks at ``idx`` (M,), in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths else []
        return SegDataset(self.x[idx], self.masks[idx], self.num_classes, list(self.labels), self.ignore_index,
                          self.name, self.synthetic, paths)

    def describe(self) -> dict:
        """JSON-able summary (for results.json and fingerprints)."""
        return {"name": self.name, "n": len(self), "shape": list(self.x.shape[1:]), "num_classes": self.num_classes,
                "labels": list(self.labels), "ignore_index": self.ignore_index, "synthetic": self.synthetic}


class Segmenter:
    """Wraps a segmentation ``nn.Module``: [0, 1] pixels (N, C, H, W) in, logits (N, K, H, W) out.

    Args:
        module: the network (see the module docstring for the calling convention).
        num_classes: K, checked on every call.
        channels: image channels C the network takes.
        labels: K class names (default ``"0".."K-1"``).
        device: where the module runs; a module elsewhere is copied there (the caller's is never modified).
        leak: a test-time annotation prior (:class:`~.leak.LeakPrior`), or None.
        rounds: feedback rounds at inference (1 for a U-Net).
        name: a label for reports.
    """

    def __init__(self, module: nn.Module, *, num_classes: int, channels: int, labels: Sequence[str] | None = None,
                 device: str | torch.device = "cpu", leak: "LeakPrior | None" = None, rounds: int = 1,
                 name: str = "segmenter") -> None:
        if num_classes < 2:
            raise TrustVisionError(f"--num-classes must be >= 2, got {num_classes}")
        if rounds < 1:
            raise TrustVisionError(f"--rounds must be >= 1, got {rounds}")
        self.device = torch.device(device)
        self.num_classes, self.channels, self.num_rounds, self.name = int(num_classes), int(channels), int(rounds), name
        self.labels = list(labels) if labels else [str(i) for i in range(num_classes)]
        if len(self.labels) != self.num_classes:
            raise TrustVisionError(f"{len(self.labels)} label names given but the segmenter has {num_classes} classes")
        params = list(module.parameters()) + list(module.buffers())
        if not all(p.device == self.device for p in params):
            import copy
            module = copy.deepcopy(module).to(self.device)
        self.module = module
        self.leak = leak.to(self.device) if leak is not None else None
        self.feedback = bool(getattr(module, "feedback", False))
        if self.num_rounds > 1 and not self.feedback:
            raise TrustVisionError(f"--rounds {rounds} needs a feedback network; {type(module).__name__} has one round")
        self._submodules = list(self.module.modules())

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Every submodule in eval mode for the block; each one's own mode restored afterwards."""
        mods = self._submodules
        modes = [m.training for m in mods]
        for m in mods:
            m.training = False
        try:
            yield
        finally:
            for m, was in zip(mods, modes):
                m.training = was

    def prior(self, x: Tensor) -> Tensor | None:
        """The leak prior (N, K, H, W) for pixels ``x`` (N, C, H, W), no gradient; None without a leak."""
        if self.leak is None:
            return None
        with torch.no_grad():
            return self.leak.prior(x.detach())

    def rounds(self, x: Tensor) -> list[Tensor]:
        """Logits (N, K, H, W) of every round, fp32, differentiable w.r.t. ``x`` (N, C, H, W) in [0, 1]."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise TrustVisionError(f"segmenter {self.name!r} takes {self.channels} channels (N, {self.channels}, H, W), "
                                   f"got {tuple(x.shape)}")
        kwargs: dict = {}
        prior = self.prior(x)
        if prior is not None:
            kwargs["prior"] = prior
        if self.feedback:
            kwargs["rounds"] = self.num_rounds
        with self.eval_mode():
            out = self.module(x, **kwargs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        for o in outs:
            if o.ndim != 4 or o.shape[1] != self.num_classes or o.shape[-2:] != x.shape[-2:]:
                raise TrustVisionError(f"segmenter {self.name!r} returned {tuple(o.shape)}, expected "
                                       f"(N, {self.num_classes}, {x.shape[-2]}, {x.shape[-1]})")
        return [o.float() for o in outs]

    def __call__(self, x: Tensor) -> Tensor:
        """Logits (N, K, H, W) of the final round for ``x`` (N, C, H, W) in [0, 1]."""
        return self.rounds(x)[-1]

    def predict(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """Label maps (N, H, W) int64 on ``self.device``, in inference mode and in batches."""
        with torch.inference_mode():
            outs = [self(x[i:i + batch_size].to(self.device)).argmax(1) for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, *x.shape[-2:], dtype=torch.long, device=self.device)

    def predict_rounds(self, x: Tensor, batch_size: int = 64) -> list[Tensor]:
        """Label maps (N, H, W) of every round, batched, in inference mode."""
        with torch.inference_mode():
            per_batch = [[o.argmax(1) for o in self.rounds(x[i:i + batch_size].to(self.device))]
                         for i in range(0, len(x), batch_size)]
        if not per_batch:
            return [torch.empty(0, *x.shape[-2:], dtype=torch.long, device=self.device)]
        return [torch.cat([b[r] for b in per_batch]) for r in range(len(per_batch[0]))]

    def weights_hash(self) -> str:
        """SHA-256 over every parameter and buffer (names, dtypes, bytes)."""
        return weights_hash(self.module)

    def describe(self) -> dict:
        """Settings for results.json."""
        return {"name": self.name, "num_classes": self.num_classes, "channels": self.channels,
                "labels": self.labels, "device": str(self.device), "rounds": self.num_rounds,
                "feedback": self.feedback, "leak": self.leak.describe() if self.leak is not None else None,
                "architecture": type(self.module).__name__}
