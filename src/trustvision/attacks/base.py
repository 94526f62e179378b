"""The Attack contract shared by every attack.

``attack(classifier, x, y, *, target=None) -> AttackResult``

* ``x``: (N, C, H, W) float pixels in [0, 1] on ``classifier.device``;
* ``y``: (N,) int64 true labels; ``target``: (N,) int64 target classes or
  ``None`` (untargeted).  Targeted and untargeted go through this one argument.
* Budget, norm, steps, restarts and seed are constructor arguments with paper
  defaults.  Attacks are batched: the whole batch stays on the device, with no
  per-image Python loops and no host round-trips inside iteration loops.

Two kinds (after Foolbox 3):

* :class:`FixedBudgetAttack` (FGSM, PGD, the evolutionary attacks): finds an
  adversarial inside a given budget ``eps``; :meth:`with_eps` gives the same
  attack at another budget.
* :class:`MinimalAttack` (CW, DeepFool): searches for the *smallest*
  perturbation; robust accuracy at any budget is read off the norms.

Callers never recognise an attack by its name: they read its capability class
attributes ``family`` (``"gradient"``, ``"minimal"``, ``"black-box"``),
``uses_gradients``, ``single_step`` and ``norm`` (a name in :data:`~.norms.NORMS`).
Every attack class registers itself in :data:`ATTACKS` with ``@ATTACKS.register(name)``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..registry import Registry
from .norms import NORMS, Norm


@dataclass
class AttackResult:
    """What every attack returns, all tensors with leading dimension N.

    Attributes:
        x_adv: (N, C, H, W) adversarial images in [0, 1] (the original where the attack failed
            for minimal attacks; the best attempt for fixed-budget attacks).
        success: (N,) bool, True where the model is fooled (untargeted: prediction != y;
            targeted: prediction == target).
        norms: (N,) float, perturbation size ``||x_adv - x||`` in the attack's norm.
        queries: (N,) int64 forward passes spent on each image.
        gradients: (N,) int64 gradient evaluations spent on each image.
        extras: attack-specific tensors/values (e.g. final logits, chosen ``c`` for CW).
    """

    x_adv: Tensor
    success: Tensor
    norms: Tensor
    queries: Tensor
    gradients: Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    def robust_at(self, eps: float, correct: Tensor) -> Tensor:
        """(N,) bool: correctly classified and not fooled within ``eps`` (minimal attacks)."""
        return correct & ~(self.success & (self.norms <= eps * (1 + 1e-5)))


def perturbation_norms(delta: Tensor, norm: str | Norm) -> Tensor:
    """(N,) norms of a (N, ...) perturbation: ``linf`` = max |d|, ``l2`` = Euclidean, ``l0`` = #changed pixels.

    An unknown norm name is a one-line :class:`TrustVisionError` (a ``ValueError``).
    """
    return (norm if isinstance(norm, Norm) else NORMS.get(norm)).distance(delta)


def fooled(logits: Tensor, y: Tensor, target: Tensor | None) -> Tensor:
    """(N,) bool success criterion from logits (N, K)."""
    pred = logits.argmax(1)
    return pred == target if target is not None else pred != y


def margin_loss(logits: Tensor, y: Tensor, target: Tensor | None, kappa: float = 0.0) -> Tensor:
    """(N,) Carlini-Wagner margin, positive while the attack has not succeeded by ``kappa``.

    Untargeted: ``z_y - max_{j != y} z_j``; targeted: ``max_{j != t} z_j - z_t``.
    """
    cls = target if target is not None else y
    z_c = logits.gather(1, cls[:, None])[:, 0]
    other = logits.masked_fill(torch.nn.functional.one_hot(cls, logits.shape[1]).bool(), float("-inf")).amax(1)
    m = other - z_c if target is not None else z_c - other
    return (m + kappa).clamp_min(0) if kappa is not None else m


def log_mean_softmax(logits: Tensor, k: int) -> Tensor:
    """(N·k, K) logits of ``k`` random draws per image (an image's draws adjacent) -> (N, K) log of the mean softmax.

    The logits of an expectation over randomness: EOT attacks and the smoothed classifier of randomized smoothing.
    """
    return torch.logsumexp(logits.log_softmax(1).view(-1, k, logits.shape[1]), dim=1) - math.log(k)


class Attack:
    """Base class: validates inputs, owns the common bookkeeping.

    Capabilities (class attributes that callers read instead of names):
        family: ``"gradient"`` (fixed-budget, white-box), ``"minimal"`` (minimal perturbation) or
            ``"black-box"`` (never sees gradients).  The defaults (a gradient attack) are the
            conservative choice for a subclass that does not say: adaptive evaluation re-runs it.
        uses_gradients: the attack follows input gradients (adaptive evaluation re-runs it on a
            BPDA/EOT view of a defended model; soundness checks compare it with black-box attacks).
        single_step: one gradient step (FGSM) rather than an iterative search.
        minimal: searches the smallest perturbation; robust accuracy at eps is read off ``norms``.
        norm: the threat model, a name in :data:`~.norms.NORMS` (a constructor argument where the
            attack supports several).
    """

    name: ClassVar[str] = "attack"
    family: ClassVar[str] = "gradient"
    uses_gradients: ClassVar[bool] = True
    single_step: ClassVar[bool] = False
    minimal: ClassVar[bool] = False
    norm: str = "linf"

    def __call__(self, classifier: Classifier, x: Tensor, y: Tensor, *, target: Tensor | None = None) -> AttackResult:
        x, y, target = self._check(classifier, x, y, target)
        return self.run(classifier, x, y, target)

    def run(self, classifier: Classifier, x: Tensor, y: Tensor, target: Tensor | None) -> AttackResult:
        raise NotImplementedError

    @property
    def metric(self) -> Norm:
        """The :class:`~.norms.Norm` strategy of :attr:`norm`."""
        return NORMS.get(self.norm)

    def describe(self) -> dict[str, Any]:
        """Constructor arguments, for results.json."""
        if dataclasses.is_dataclass(self):
            return {"attack": self.name, **dataclasses.asdict(self)}
        return {"attack": self.name}

    @staticmethod
    def _check(clf: Classifier, x: Tensor, y: Tensor, target: Tensor | None):
        if x.ndim != 4:
            raise TrustVisionError(f"attack input must be N,C,H,W, got {tuple(x.shape)}")
        if len(y) != len(x):
            raise TrustVisionError(f"attack got {len(x)} images but {len(y)} labels")
        x = x.to(clf.device, torch.float32)
        y = y.to(clf.device, torch.long)
        if target is not None:
            target = torch.as_tensor(target, device=clf.device, dtype=torch.long)
            if target.ndim == 0:
                target = target.expand(len(x)).clone()
            if len(target) != len(x) or int(target.min()) < 0 or int(target.max()) >= clf.num_classes:
                raise TrustVisionError(f"target classes must be (N,) in [0, {clf.num_classes - 1}]")
        return x, y, target

    @staticmethod
    def generator(seed: int | None, device: torch.device) -> torch.Generator | None:
        """A seeded generator on ``device`` (None -> global RNG)."""
        if seed is None:
            return None
        return torch.Generator(device=device).manual_seed(int(seed))


class FixedBudgetAttack(Attack):
    """An attack constrained to ``||delta|| <= eps``."""

    eps: float

    def with_eps(self, eps: float) -> "FixedBudgetAttack":
        """The same attack at budget ``eps`` (a copy)."""
        return dataclasses.replace(self, eps=float(eps))  # type: ignore[type-var]


class MinimalAttack(Attack):
    """An attack that minimises the perturbation size; robust accuracy at eps via ``norms``."""

    family: ClassVar[str] = "minimal"
    minimal: ClassVar[bool] = True


ATTACKS: Registry[type[Attack]] = Registry("attack")
"""Every attack class by name; each registers itself with ``@ATTACKS.register("name")``."""


def input_gradient(classifier: Classifier, x: Tensor, loss_fn) -> tuple[Tensor, Tensor]:
    """Gradient of ``loss_fn(logits).sum()`` w.r.t. ``x``; returns (grad (N,C,H,W), logits (N,K)).

    Parameters are not touched: only ``x`` requires grad, so no parameter
    gradients accumulate in the user's model.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = classifier(x)
        loss = loss_fn(logits)
        if not loss.requires_grad:        # the model cut the graph (e.g. thresholding): zero gradient
            return torch.zeros_like(x), logits.detach()
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True, materialize_grads=True)
    return grad, logits.detach()


def make_attack(name: str, **kwargs) -> Attack:
    """The registered attack ``name`` built with constructor arguments ``kwargs``.

    Raises :class:`TrustVisionError` (one line) for an unknown attack, an argument the attack
    does not take, or an invalid value.

    Example::

        pgd = make_attack("pgd", eps=8 / 255, steps=20, restarts=2)
    """
    cls = ATTACKS.get(name)           # unknown name: "unknown attack 'x'; choose from fgsm, pgd, ..."
    accepted = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise TrustVisionError(f"attack {name!r} has no argument {unknown[0]!r}; it takes {', '.join(accepted)}")
    try:
        return cls(**kwargs)
    except TypeError as e:      # e.g. a value of a type the constructor cannot use
        raise TrustVisionError(f"attack {name!r}: {e}") from None
