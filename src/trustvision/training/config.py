"""What the trainer (:mod:`.trainer`) is told and what it returns: :class:`TrainConfig`, :class:`TrainResult`.

Methods: ``standard`` (cross-entropy, optionally on Gaussian-noise augmented images), ``pgd`` (Madry et al.,
ICLR 2018), ``fast`` (Wong, Rice & Kolter, ICLR 2020), ``trades`` (Zhang et al., ICML 2019); see
:mod:`.methods`.  Learning-rate schedules: ``cosine``, ``step`` (x0.1 at 50 % and 75 %), ``constant`` and
``onecycle`` (Smith & Topin, "Super-Convergence", 2019: :class:`torch.optim.lr_scheduler.OneCycleLR` over
all steps, with its momentum cycle).  ``onecycle`` is also the recipe of the small cached models
(:func:`~trustvision.training.trainer.train_classifier`): ``torch.manual_seed(seed)`` first, one seeded
shuffling stream across epochs and noise from the global generator (see :mod:`.trainer`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

from torch import nn

from ..attacks.gradient import check_number
from ..errors import TrustVisionError
from ..persist import digest

METHODS = ("standard", "pgd", "fast", "trades")
SCHEDULES = ("cosine", "step", "constant", "onecycle")
OPTIMIZERS = ("adam", "sgd")
AMP = ("off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """How to train.  Budgets are L∞ in [0, 1] pixel units."""

    name: ClassVar[str] = "train"
    method: str = "standard"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    eps: float = 8 / 255
    eps_warmup_epochs: float = 0.0          # linear ramp of eps from 0 over this many epochs
    attack_steps: int = 10                  # PGD-AT and TRADES inner steps
    alpha: float | None = None              # step size; None: 2.5·eps/steps (fast AT: 1.25·eps)
    trades_beta: float = 6.0
    noise_sigma: float = 0.0
    amp: str = "off"
    eval_eps: float | None = None           # PGD budget of the per-epoch evaluation (None: eps)
    eval_steps: int = 10
    eval_images: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for key, options in (("method", METHODS), ("schedule", SCHEDULES), ("optimizer", OPTIMIZERS), ("amp", AMP)):
            if getattr(self, key) not in options:
                raise TrustVisionError(f"train: {key} must be one of {options}, got {getattr(self, key)!r}")
        for f in ("epochs", "batch_size", "attack_steps", "eval_steps"):
            check_number(self, f, low=1, integer=True)
        for f in ("eval_images", "seed"):
            check_number(self, f, integer=True)
        for f in ("lr", "eps"):
            check_number(self, f, strict=f == "lr")
        for f in ("momentum", "weight_decay", "trades_beta", "noise_sigma", "eps_warmup_epochs"):
            check_number(self, f)
        check_number(self, "alpha", strict=True, none_ok=True)
        check_number(self, "eval_eps", none_ok=True)
        if self.method != "standard" and self.eps <= 0:
            raise TrustVisionError(f"train: method {self.method!r} needs --eps > 0")

    def describe(self) -> dict:
        """Every setting, JSON-able (history.json, weights metadata, cache keys)."""
        return asdict(self)

    def fingerprint(self) -> str:
        """Hash of every setting that changes the trained weights (for resume)."""
        return digest(self.describe(), length=16)

    @property
    def step_size(self) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        return 1.25 * self.eps if self.method == "fast" else 2.5 * self.eps / self.attack_steps


@dataclass
class TrainResult:
    """The trained module (eval mode), per-epoch ``history`` and where files went."""

    module: nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    files: dict[str, str] = field(default_factory=dict)
