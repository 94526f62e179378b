"""The test-time annotation leak: training masks of the nearest training images as a prior.

The idea from Hotta's lab on "information leakage" in segmentation: use the training annotations at test
time.  A trained encoder (a :class:`~.unet.UNet` or :class:`~.feedback.FeedbackUNet` trained without the
leak; :meth:`embed` = its global-average-pooled bottleneck) embeds every training image once; for an input,
the ``k`` training images with the highest cosine similarity are retrieved and their masks, one-hot encoded
(ignore-index pixels contribute nothing) and averaged, resized bilinearly to the input's size, become K extra
input channels.  The segmenter is trained with the prior made the same way, retrieving for each training
image from the training set **excluding the image itself** (:meth:`LeakPrior.bank_prior`); otherwise the
prior would be the exact ground truth during training.  (Exact duplicates stored twice are not detected.)

Shapes: pixels ``x`` (N, C, H, W) in [0, 1] -> prior (N, K, H, W), each pixel's K values summing to <= 1.
Retrieval is discrete, so the prior carries no gradient to ``x`` (attacks see it as a constant per step).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..persist import atomic_write


def parse_leak(spec: str | None) -> int | None:
    """``"knn:3"`` -> 3; None/``""``/``"none"`` -> None; anything else is a one-line error naming --leak."""
    if spec in (None, "", "none"):
        return None
    kind, _, k = str(spec).partition(":")
    if kind != "knn" or not k.isdigit() or int(k) < 1:
        raise TrustVisionError(f"--leak must look like knn:K with K >= 1 (e.g. knn:3), got {spec!r}")
    return int(k)


def one_hot_masks(masks: Tensor, num_classes: int, ignore_index: int | None) -> Tensor:
    """(M, H, W) int64 -> (M, K, H, W) float one-hot; ignore-index (or out-of-range) pixels are all-zero."""
    valid = (masks >= 0) & (masks < num_classes)
    if ignore_index is not None:
        valid &= masks != ignore_index
    oh = F.one_hot(torch.where(valid, masks, 0), num_classes).permute(0, 3, 1, 2).float()
    return oh * valid[:, None]


class LeakPrior:
    """k-nearest-neighbour mask prior from a bank of training images and masks.

    Args:
        embedder: a trained network with ``embed(x (N, C, H, W)) -> (N, D)`` (copied, frozen, eval mode).
        bank_x: training images (M, C, H, W) in [0, 1].  bank_masks: their masks (M, H, W).
        num_classes: K.  k: neighbours.  ignore_index: mask value that is no class.
        batch_size: images per embedding batch.
    """

    def __init__(self, embedder: nn.Module, bank_x: Tensor | None, bank_masks: Tensor, num_classes: int, *,
                 k: int = 3, ignore_index: int | None = 255, batch_size: int = 64, device: str | torch.device = "cpu",
                 bank_embeddings: Tensor | None = None) -> None:
        if k < 1 or k >= len(bank_masks):
            raise TrustVisionError(f"--leak knn:{k}: k must be in 1..{len(bank_masks) - 1} (training images - 1)")
        if getattr(embedder, "prior_channels", 0):
            raise TrustVisionError("the leak's embedder must be a network trained without a prior (prior_channels=0)")
        self.device = torch.device(device)
        self.embedder = copy.deepcopy(embedder).to(self.device).eval().requires_grad_(False)
        self.k, self.num_classes, self.ignore_index, self.batch_size = int(k), int(num_classes), ignore_index, batch_size
        self.masks_onehot = one_hot_masks(bank_masks.to(self.device), self.num_classes, ignore_index)
        self.bank_masks = bank_masks.to(self.device)
        self.bank = bank_embeddings.to(self.device) if bank_embeddings is not None else self.embed(bank_x)

    def to(self, device: str | torch.device) -> "LeakPrior":
        """This prior on ``device`` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return LeakPrior(self.embedder, None, self.bank_masks.to(device), self.num_classes, k=self.k,
                         ignore_index=self.ignore_index, batch_size=self.batch_size, device=device,
                         bank_embeddings=self.bank.to(device))

    def embed(self, x: Tensor) -> Tensor:
        """L2-normalised embeddings (N, D) of pixels (N, C, H, W), batched, in inference mode."""
        with torch.inference_mode():
            out = [F.normalize(self.embedder.embed(x[i:i + self.batch_size].to(self.device)).float(), dim=1)
                   for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).clone()

    def neighbours(self, x: Tensor, exclude: Tensor | None = None) -> Tensor:
        """Indices (N, k) into the bank of the k most similar training images; ``exclude`` (N,) bank indices to skip."""
        sims = self.embed(x) @ self.bank.T                                 # (N, M) cosine similarities
        if exclude is not None:
            sims[torch.arange(len(sims), device=sims.device), exclude.to(sims.device)] = -float("inf")
        return sims.topk(self.k, dim=1).indices

    def _from_neighbours(self, idx: Tensor, size: torch.Size) -> Tensor:
        prior = self.masks_onehot[idx].mean(1)                             # (N, K, Hb, Wb)
        if prior.shape[-2:] != size:
            prior = F.interpolate(prior, size=size, mode="bilinear", align_corners=False)
        return prior

    def prior(self, x: Tensor, exclude: Tensor | None = None) -> Tensor:
        """The prior (N, K, H, W) for pixels ``x`` (N, C, H, W): mean one-hot mask of the k neighbours."""
        return self._from_neighbours(self.neighbours(x, exclude), x.shape[-2:])

    def bank_prior(self) -> Tensor:
        """Training priors (M, K, H, W): each bank image's prior from the other bank images (itself excluded)."""
        n = len(self.bank)
        sims = self.bank @ self.bank.T
        sims.fill_diagonal_(-float("inf"))
        idx = sims.topk(self.k, dim=1).indices
        return torch.cat([self._from_neighbours(idx[i:i + self.batch_size], self.bank_masks.shape[-2:])
                          for i in range(0, n, self.batch_size)])

    def describe(self) -> dict:
        """JSON-able settings (for results.json and fingerprints)."""
        return {"kind": "knn", "k": self.k, "bank_images": len(self.bank), "embedding_dim": int(self.bank.shape[1]),
                "embedder": type(self.embedder).__name__}

    def save(self, path: str | Path) -> None:
        """Bank (embeddings, masks), settings and the embedder's weights + config in one safetensors file."""
        from safetensors.torch import save_file
        tensors = {"bank.embeddings": self.bank.cpu().contiguous(), "bank.masks": self.bank_masks.cpu().contiguous()}
        tensors.update({f"embedder.{k}": v.detach().cpu().contiguous() for k, v in self.embedder.state_dict().items()})
        meta = {"format": "trustvision-leak-v1", "k": str(self.k), "num_classes": str(self.num_classes),
                "ignore_index": json.dumps(self.ignore_index), "embedder": type(self.embedder).__name__,
                "embedder_config": json.dumps(getattr(self.embedder, "config", {}))}
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=meta))

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "LeakPrior":
        """A prior written by :meth:`save` (the embedder rebuilt from its stored config)."""
        from safetensors import safe_open
        from .feedback import FeedbackUNet
        from .unet import UNet
        try:
            with safe_open(str(path), framework="pt") as f:
                meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise TrustVisionError(f"{path}: cannot read leak prior ({' '.join(str(e).split())})") from None
        if meta.get("format") != "trustvision-leak-v1":
            raise TrustVisionError(f"{path}: not a trustvision leak-prior file")
        arch = {"UNet": UNet, "FeedbackUNet": FeedbackUNet}.get(meta["embedder"])
        if arch is None:
            raise TrustVisionError(f"{path}: unknown embedder {meta['embedder']!r}")
        embedder = arch(**json.loads(meta["embedder_config"]))
        embedder.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("embedder.")})
        return cls(embedder, None, tensors["bank.masks"], int(meta["num_classes"]), k=int(meta["k"]),
                   ignore_index=json.loads(meta["ignore_index"]), device=device,
                   bank_embeddings=tensors["bank.embeddings"])
