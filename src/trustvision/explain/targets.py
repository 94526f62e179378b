"""CAM targets as callables: *what* a class activation map explains.

The target-object pattern of pytorch-grad-cam (``ClassifierOutputTarget(c)``, a callable mapping the model
output to the scalar whose gradient is explained), batched: every target here maps outputs (N, K) to scores
(N,) in one tensor operation, and also accepts one image's output (K,) -> scalar, so the objects are
interchangeable with pytorch-grad-cam's (whose targets are called once per image).

* :class:`ClassifierOutputTarget` — the output (logit) of a class: Grad-CAM's ``y^c`` (Selvaraju et al. 2017).
* :class:`RegressionTarget` — one output of a regression model (e.g. an aesthetics *score*, as in
  Sakaguchi, Takimoto et al., Cogent Engineering 2022), or a user function of the outputs.
* :class:`MarginTarget` — the logit of a class minus the best other logit (the quantity an untargeted attack
  drives below zero; explains what keeps the class ahead).
* :class:`AdversarialTarget` — the class an adversarial example is pushed to, optionally minus the original
  class (explains what makes the model prefer the adversarial class over the true one).

:func:`resolve` turns what :class:`~trustvision.explain.cam.CAM` accepts — None (the predicted class), an
int tensor (N,) of classes, one target for the whole batch, or a list of N per-image callables (ours or
pytorch-grad-cam's) — into scores (N,) and the explained class of each image (-1 where no single class is
explained, e.g. a regression score).

:func:`parse_target` reads the ``explain --target`` texts (``pred``, ``label``, ``class:K``, ``margin``,
``margin:label``, ``score:K``, ``adv``) and :func:`build_target` turns one into the target of N images.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from ..errors import TrustVisionError

Index = Union[int, Sequence[int], Tensor]


def _pick(out: Tensor, idx: Index) -> Tensor:
    """``out[..., idx]``: (K,) -> scalar, (N, K) -> (N,) with ``idx`` an int or (N,) indices."""
    if out.ndim == 1:
        return out[int(idx) if not isinstance(idx, Tensor) else int(idx.reshape(-1)[0])]
    i = torch.as_tensor(idx, device=out.device, dtype=torch.long).reshape(-1)
    if i.numel() == 1:
        i = i.expand(out.shape[0])
    return out.gather(1, i[:, None])[:, 0]


def _check(idx: Index, k: int, what: str) -> None:
    i = torch.as_tensor(idx).reshape(-1)
    if i.numel() and bool(((i < 0) | (i >= k)).any()):
        raise TrustVisionError(f"CAM targets: {what} must lie in 0..{k - 1}, got {i.tolist()[:8]}")


@dataclass
class ClassifierOutputTarget:
    """The output of class ``category`` (an int, or (N,) classes for a batch)."""

    category: Index

    def __call__(self, out: Tensor) -> Tensor:
        return _pick(out, self.category)

    def classes(self, n: int, k: int) -> Tensor:
        _check(self.category, k, "classes")
        return torch.as_tensor(self.category, dtype=torch.long).reshape(-1).expand(n).clone()


@dataclass
class RegressionTarget:
    """Output ``output`` of a (multi-output) regression model, or ``fn(outputs)`` when ``fn`` is given.

    ``fn`` maps (N, K) outputs to (N,) scores (and (K,) to a scalar), e.g. ``lambda o: o[..., 0] - o[..., 1]``.
    """

    output: int = 0
    fn: Callable[[Tensor], Tensor] | None = None

    def __call__(self, out: Tensor) -> Tensor:
        return self.fn(out) if self.fn is not None else _pick(out, self.output)

    def classes(self, n: int, k: int) -> Tensor:
        if self.fn is None:
            _check(self.output, k, "regression output")
        return torch.full((n,), -1, dtype=torch.long)


@dataclass
class MarginTarget:
    """Logit of ``category`` minus the largest other logit: ``z_c - max_{j != c} z_j``."""

    category: Index

    def __call__(self, out: Tensor) -> Tensor:
        o = out if out.ndim == 2 else out[None]
        c = torch.as_tensor(self.category, device=o.device, dtype=torch.long).reshape(-1).expand(o.shape[0])
        zc = o.gather(1, c[:, None])[:, 0]
        others = o.scatter(1, c[:, None], float("-inf")).amax(1)
        m = zc - others
        return m if out.ndim == 2 else m[0]

    def classes(self, n: int, k: int) -> Tensor:
        return ClassifierOutputTarget(self.category).classes(n, k)


@dataclass
class AdversarialTarget:
    """The adversarial class ``target``; with ``source`` (the original class) the score is
    ``z_target - z_source`` (what the model sees *for* the adversarial class *against* the true one)."""

    target: Index
    source: Index | None = None

    def __call__(self, out: Tensor) -> Tensor:
        s = _pick(out, self.target)
        return s if self.source is None else s - _pick(out, self.source)

    def classes(self, n: int, k: int) -> Tensor:
        if self.source is not None:
            _check(self.source, k, "source classes")
        return ClassifierOutputTarget(self.target).classes(n, k)


TARGETS = (ClassifierOutputTarget, RegressionTarget, MarginTarget, AdversarialTarget)
_STACKABLE = {ClassifierOutputTarget: ("category",), MarginTarget: ("category",),
              AdversarialTarget: ("target", "source")}


def _stack(targets: Sequence[Any]) -> Any | None:
    """N per-image targets of one stackable type with int fields -> one batched target (None if not possible)."""
    kind = type(targets[0])
    fields = _STACKABLE.get(kind)
    if fields is None or any(type(t) is not kind for t in targets):
        return None
    vals = {}
    for f in fields:
        col = [getattr(t, f) for t in targets]
        if all(v is None for v in col):
            vals[f] = None
        elif all(isinstance(v, int) for v in col):
            vals[f] = torch.tensor(col, dtype=torch.long)
        else:
            return None
    return kind(**vals)


def resolve(targets: Any, outputs: Tensor) -> tuple[Tensor, Tensor]:
    """Scores (N,) to differentiate and explained classes (N,) (-1 = no single class).

    Args:
        targets: None (predicted class), an int tensor / sequence of ints (N,), one target callable for the
            batch, or a sequence of N per-image callables (each maps one image's output (K,) to a scalar).
        outputs: (N, K) model outputs (logits), attached to the graph.
    """
    n, k = outputs.shape
    if targets is None:
        targets = ClassifierOutputTarget(outputs.detach().argmax(1))
    elif isinstance(targets, Tensor) or (isinstance(targets, Sequence) and targets and
                                         all(isinstance(t, int) for t in targets)):
        t = torch.as_tensor(targets, dtype=torch.long)
        if t.shape != (n,):
            raise TrustVisionError(f"CAM targets must be (N,) classes in 0..{k - 1}, got shape {tuple(t.shape)}")
        targets = ClassifierOutputTarget(t.to(outputs.device))
    elif isinstance(targets, Sequence) and not isinstance(targets, str):
        if len(targets) != n:
            raise TrustVisionError(f"CAM targets: {len(targets)} targets for {n} images")
        stacked = _stack(targets)
        if stacked is None:       # arbitrary per-image callables: N scalar reads of the one batched output
            scores = torch.stack([torch.as_tensor(t(outputs[i])).reshape(()) for i, t in enumerate(targets)])
            explained = [getattr(t, "category", -1) for t in targets]
            return scores, torch.tensor([c if isinstance(c, int) else -1 for c in explained], dtype=torch.long)
        targets = stacked
    if not callable(targets):
        raise TrustVisionError(f"CAM targets: expected classes or a callable target, got {type(targets).__name__}")
    classes = targets.classes(n, k) if hasattr(targets, "classes") else torch.full((n,), -1, dtype=torch.long)
    scores = targets(outputs)
    if scores.shape != (n,):
        raise TrustVisionError(f"CAM target {type(targets).__name__} gave scores of shape {tuple(scores.shape)}; "
                               f"expected ({n},) (one scalar per image)")
    return scores, classes.to(outputs.device)


# ------------------------------------------------------------------ target specs (``explain --target``)
TARGET_SPECS = "pred | label | class:K | margin | margin:label | score:K | adv"
_ALIASES = {"predicted": "pred", "true": "label"}


@dataclass(frozen=True)
class TargetSpec:
    """A parsed ``--target`` text: ``kind`` in pred, label, class, margin, score, adv; ``index`` for class:K and
    score:K; ``of`` (pred or label) the class a margin is taken for."""

    kind: str
    index: int | None = None
    of: str = "pred"

    @property
    def has_class(self) -> bool:
        """False for ``score:K``: the map explains a raw (regression) output, not a class."""
        return self.kind != "score"


def parse_target(spec: str, what: str = "--target") -> TargetSpec:
    """``"pred"``, ``"label"``, ``"class:3"``, ``"margin"``, ``"margin:label"``, ``"score:0"``, ``"adv"``
    (``predicted`` and ``true`` are accepted for pred and label) -> :class:`TargetSpec`; one-line errors."""
    text = _ALIASES.get(str(spec).strip().lower(), str(spec).strip().lower())
    head, sep, arg = text.partition(":")
    if head in ("pred", "label", "adv") and not sep:
        return TargetSpec(head)
    if head == "margin" and arg in ("", "pred", "label"):
        return TargetSpec("margin", of=arg or "pred")
    if head in ("class", "score"):
        if arg.isascii() and arg.isdigit():
            return TargetSpec(head, int(arg))
        raise TrustVisionError(f"{what} {spec!r}: {head}:K needs a non-negative integer K, got {arg!r}")
    raise TrustVisionError(f"{what} {spec!r}: unknown CAM target; choose from {TARGET_SPECS}")


def build_target(spec: TargetSpec, *, pred: Tensor, label: Tensor, num_outputs: int,
                 adv: Tensor | None = None, what: str = "--target") -> Any:
    """The CAM target for ``spec`` over N images, in a form :func:`~.cam.compute_cams` slices per batch.

    Args: pred, label: (N,) predicted and true classes; adv: (N,) classes of the adversarial examples (for
    ``adv``); num_outputs: K, the model's outputs.  Returns an (N,) class tensor, a list of N per-image target
    objects (stacked again into one batched target per batch by :func:`resolve`), or one
    :class:`RegressionTarget`.
    """
    if spec.index is not None and spec.index >= num_outputs:
        raise TrustVisionError(f"{what} {spec.kind}:{spec.index}: the model has {num_outputs} outputs "
                               f"(0..{num_outputs - 1})")
    if spec.kind == "pred":
        return pred.long()
    if spec.kind == "label":
        return label.long()
    if spec.kind == "class":
        return torch.full_like(pred.long(), spec.index)
    if spec.kind == "score":
        return RegressionTarget(spec.index)
    if spec.kind == "margin":
        return [MarginTarget(c) for c in (pred if spec.of == "pred" else label).tolist()]
    if adv is None:
        raise TrustVisionError(f"{what} adv: needs the classes of adversarial examples (an attack)")
    return [AdversarialTarget(c) for c in adv.tolist()]
