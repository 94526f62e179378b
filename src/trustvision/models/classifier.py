"""The Classifier contract: a model as attacks and metrics see it.

``Classifier(x) -> logits`` where ``x`` is a float tensor in **[0, 1]**, NCHW,
on ``classifier.device``.  Normalisation (mean/std), resizing to the model's
input size and label names live here and never in attacks, so every attack
works in pixel space and every budget is in pixel units.

The wrapper always runs the module, and every submodule, in eval mode and restores
each one's mode afterwards; it never changes weights (:meth:`Classifier.weights_hash`
lets the audit prove it).  Precision (``fp32``/``bf16`` autocast),
``channels_last`` and ``torch.compile`` are options of the wrapper.
"""
from __future__ import annotations

import copy
import hashlib
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..persist import digest
from .provenance import module_code

PRECISIONS = ("fp32", "bf16")


class Classifier:
    """Wraps an ``nn.Module`` so that it takes [0, 1] pixels and returns logits.

    Args:
        module: the network; it receives normalised inputs.
        num_classes: number of output classes (checked on first call).
        channels: input channels the module expects (1 or 3 usually).
        input_size: ``(H, W)`` the module expects; inputs of another size are
            resized bilinearly (differentiably) inside the wrapper.
        mean, std: per-channel normalisation applied inside the wrapper.
        labels: class names, ``len(labels) == num_classes``.
        device: where the module runs.  If the module must move (or be made
            channels-last), it is copied first: the caller's module is never
            modified.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; logits returned as fp32).
        channels_last: run with ``torch.channels_last`` memory format.
        compile: wrap the forward in ``torch.compile``.
        name: a label for reports.
        provenance: what besides the weights defines the model (the loader's file hashes, spec and
            library versions, see :mod:`.provenance`); None: derived from the module's classes on first use.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        num_classes: int,
        channels: int = 3,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        labels: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
        name: str = "model",
        provenance: dict | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise TrustVisionError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
        if num_classes < 2:
            raise TrustVisionError(f"--num-classes must be >= 2, got {num_classes}")
        self.device = torch.device(device)
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.input_size = tuple(input_size) if input_size else None
        self.labels = list(labels) if labels else [str(i) for i in range(num_classes)]
        if len(self.labels) != self.num_classes:
            raise TrustVisionError(
                f"{len(self.labels)} label names given but the model has {num_classes} classes")
        self.precision = precision
        self.channels_last = channels_last
        self.name = name
        self.mean = self._stat(mean, "mean")
        self.std = self._stat(std, "std")
        if self.std is not None and bool((self.std <= 0).any()):
            raise TrustVisionError(f"--std must be positive, got {std}")
        self.module = self._place(module)
        self._submodules = list(self.module.modules())      # eval_mode() walks this cached list
        self._provenance = dict(provenance) if provenance is not None else None
        self._forward = torch.compile(self.module) if compile else self.module

    # ------------------------------------------------------------------ setup
    def _stat(self, v: Sequence[float] | None, what: str) -> Tensor | None:
        if v is None:
            return None
        t = torch.as_tensor(list(v), dtype=torch.float32, device=self.device).flatten()
        if t.numel() == 1:
            t = t.repeat(self.channels)
        if t.numel() != self.channels:
            raise TrustVisionError(f"--{what} has {t.numel()} values but the model takes {self.channels} channels")
        return t.view(1, -1, 1, 1)

    def _place(self, module: nn.Module) -> nn.Module:
        params = list(module.parameters()) + list(module.buffers())
        on_device = all(p.device == self.device for p in params)
        if on_device and not self.channels_last:
            return module
        module = copy.deepcopy(module).to(self.device)   # never touch the caller's module
        return module.to(memory_format=torch.channels_last) if self.channels_last else module

    # -------------------------------------------------------------- forward
    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        """Run every submodule in eval mode for the block, then restore each one's own mode exactly.

        A parent in eval mode may hold children left in train mode (a BatchNorm would update its running
        statistics, a Dropout would drop): each module's flag is checked, not only the top one's.  The
        module list is cached at construction, so a call costs one pass over a Python list.
        """
        mods = self._submodules
        modes = [m.training for m in mods]
        if not any(modes):
            yield
            return
        for m, was in zip(mods, modes):    # flags only, like nn.Module.eval(), but no recursion
            if was:
                m.training = False
        try:
            yield
        finally:
            for m, was in zip(mods, modes):
                if m.training != was:
                    m.training = was

    def preprocess(self, x: Tensor) -> Tensor:
        """[0,1] pixels (N,C,H,W) -> what the module expects (resized, normalised)."""
        if x.ndim != 4:
            raise TrustVisionError(f"classifier input must be NCHW, got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise TrustVisionError(
                f"classifier {self.name!r} takes {self.channels} channels, input has {x.shape[1]}")
        if self.input_size and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` in fp32 for pixels ``x`` ``(N, C, H, W)`` in [0, 1]."""
        x = self.preprocess(x)
        with self.eval_mode(), torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"
        ):
            out = self._forward(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.ndim != 2 or out.shape[1] != self.num_classes:
            raise TrustVisionError(
                f"model {self.name!r} returned shape {tuple(out.shape)}, expected (N, {self.num_classes}); "
                "check --num-classes")
        return out.float()

    def predict(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """Logits for a whole tensor (any device), in inference mode and in batches; on ``self.device``."""
        with torch.inference_mode():
            outs = [self(x[i:i + batch_size].to(self.device, non_blocking=True))
                    for i in range(0, len(x), batch_size)]
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes, device=self.device)

    def as_module(self) -> nn.Module:
        """An ``nn.Module`` view: ``forward(x [0, 1] pixels (N, C, H, W)) -> logits (N, K)`` through this wrapper.

        For peer libraries (ART, torchattacks) that want a module: they then see exactly our preprocessing.
        """
        return _PixelModule(self)

    def weights_hash(self) -> str:
        """SHA-256 over every parameter and buffer (names, dtypes and bytes)."""
        return weights_hash(self.module)

    @property
    def provenance(self) -> dict:
        """Everything besides the weights that can change a number: the model's code and library versions.

        From :func:`~trustvision.models.loading.load_model`: the spec, the SHA-256 of a ``module.py`` file, of a
        TorchScript/ONNX/pickle file, the architecture spec; always the classes of the module with the hash of
        each non-library class's source and the torch (torchvision, timm) versions (:mod:`.provenance`).
        """
        if self._provenance is None:
            self._provenance = {"source": "python", **module_code(self.module)}
        return self._provenance

    def code_fingerprint(self) -> str:
        """:func:`~trustvision.persist.digest` of :attr:`provenance` (the model's code, not its weights)."""
        return digest(self.provenance)

    def describe(self) -> dict:
        """Settings for results.json (and the audit's resume fingerprint), the model's provenance included."""
        return {"name": self.name, "num_classes": self.num_classes, "channels": self.channels,
                "input_size": list(self.input_size) if self.input_size else None,
                "mean": None if self.mean is None else self.mean.flatten().tolist(),
                "std": None if self.std is None else self.std.flatten().tolist(),
                "labels": self.labels, "device": str(self.device), "precision": self.precision,
                "channels_last": self.channels_last, "provenance": self.provenance,
                "code_fingerprint": self.code_fingerprint()}


class _PixelModule(nn.Module):
    """See :meth:`Classifier.as_module` (the wrapped network is registered, so ``.parameters()`` works)."""

    def __init__(self, clf: Classifier) -> None:
        super().__init__()
        self.clf = clf
        self.net = clf.module

    def forward(self, x: Tensor) -> Tensor:
        return self.clf(x)


def weights_hash(module: nn.Module) -> str:
    """Full hex SHA-256 over every parameter and buffer of ``module`` (sorted names, dtypes and raw bytes).

    The audit hashes the user's model before and after to prove it was never modified.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
