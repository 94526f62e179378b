"""The anomaly-detection contract: :class:`AnomalyResult` and the :class:`Detector` protocol.

Every inspection method (the VAE of An & Cho 2015 / Baur et al. 2018 style reconstruction detectors,
the Siamese re-judgment of over-detections, PatchCore of Roth et al., CVPR 2022) implements
:class:`Detector`: ``fit`` on normal images only, ``score`` batched without gradients, and
``score_differentiable`` with autograd w.r.t. the input (used by the attack on the inspector).

Images are float tensors in **[0, 1]**, NCHW.  Anomaly maps are (N, H, W) float32 at the input
resolution, higher = more anomalous; image scores are (N,).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..errors import TrustVisionError
from ..progress import Progress


@dataclass
class AnomalyResult:
    """What a detector returns for N images.

    ``maps``: (N, H, W) float32, higher = more anomalous, at the input resolution.
    ``scores``: (N,) image-level scores (higher = more anomalous).
    ``extras``: method-specific outputs, e.g. ``"regions_before"`` / ``"regions_after"`` ((N,) int64
    counts of candidate regions before/after the Siamese re-judgment).
    """

    maps: Tensor
    scores: Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.maps.dim() != 3:
            raise TrustVisionError(f"AnomalyResult.maps must be (N, H, W), got shape {tuple(self.maps.shape)}")
        if self.scores.dim() != 1 or self.scores.shape[0] != self.maps.shape[0]:
            raise TrustVisionError(f"AnomalyResult.scores must be (N,) with N={self.maps.shape[0]}, "
                                   f"got shape {tuple(self.scores.shape)}")

    def __len__(self) -> int:
        return int(self.maps.shape[0])


@dataclass
class AnomalyDataset:
    """An inspection data set: normal training images, labelled test images, optional masks.

    ``train`` (N, C, H, W) and ``test`` (M, C, H, W) float32 in [0, 1]; ``labels`` (M,) int64 (0 normal,
    1 defective); ``masks`` (M, H, W) bool or ``None``; ``defect_types`` (M,) names (``"good"`` for
    normal); ``synthetic`` is True for generated data (reports must say so); ``paths`` (M,) test files
    (empty for in-memory sets); ``notes``: sentences a report should show (e.g. no masks).
    """

    train: Tensor
    test: Tensor
    labels: Tensor
    masks: Tensor | None
    defect_types: list[str]
    name: str
    synthetic: bool = False
    paths: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        m = self.test.shape[0]
        if self.train.dim() != 4 or self.test.dim() != 4 or self.train.shape[1:] != self.test.shape[1:]:
            raise TrustVisionError(f"{self.name}: train {tuple(self.train.shape)} and test {tuple(self.test.shape)} "
                                   "must both be (N, C, H, W) with the same C, H, W")
        if self.labels.shape != (m,) or len(self.defect_types) != m:
            raise TrustVisionError(f"{self.name}: labels/defect_types must have one entry per test image ({m})")
        if self.masks is not None and tuple(self.masks.shape) != (m, *self.test.shape[2:]):
            raise TrustVisionError(f"{self.name}: masks {tuple(self.masks.shape)} must be (M, H, W) = "
                                   f"{(m, *self.test.shape[2:])}")

    @property
    def kinds(self) -> list[str]:
        """Defect types present in the test set, in order of first appearance (without ``good``)."""
        return list(dict.fromkeys(t for t in self.defect_types if t != "good"))


@runtime_checkable
class Detector(Protocol):
    """An anomaly detector trained on normal images only."""

    name: str

    def fit(self, normal: Tensor, *, progress: Progress | None = None) -> "Detector":
        """Train on ``normal`` (N, C, H, W) in [0, 1]; returns ``self``."""
        ...

    def score(self, x: Tensor) -> AnomalyResult:
        """Score ``x`` (N, C, H, W) in [0, 1]: batched, no gradients."""
        ...

    def score_differentiable(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(maps (N, H, W), scores (N,)) with autograd w.r.t. ``x`` (for attacks on the detector)."""
        ...

    def state_dict(self) -> dict[str, Tensor]:
        """All trained state as tensors (saved as safetensors)."""
        ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


def check_images(x: Tensor, what: str = "images") -> Tensor:
    """Validate an (N, C, H, W) float batch in [0, 1]; one-line :class:`TrustVisionError` otherwise."""
    if not hasattr(x, "dim") or x.dim() != 4:
        raise TrustVisionError(f"{what} must be an (N, C, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise TrustVisionError(f"{what} must be float in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise TrustVisionError(f"{what} is empty")
    return x


def save_detector(detector: Detector, path: str | Path) -> Path:
    """Write ``detector.state_dict()`` as safetensors to ``path`` (atomically); returns the path."""
    from safetensors.torch import save_file

    from ..persist import atomic_write
    state = {k: v.detach().cpu().contiguous() for k, v in detector.state_dict().items()}
    return atomic_write(path, lambda p: save_file(state, str(p)))


def load_detector(detector: Detector, path: str | Path) -> Detector:
    """Load safetensors weights written by :func:`save_detector` into ``detector``; returns it."""
    from safetensors.torch import load_file
    try:
        state = load_file(str(path))
    except Exception as e:                                   # corrupt / not safetensors
        raise TrustVisionError(f"{path}: not a readable safetensors file ({type(e).__name__})") from None
    detector.load_state_dict(state)
    return detector
