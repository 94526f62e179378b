"""Class activation maps, batched: Grad-CAM, Grad-CAM++, LayerCAM and HiResCAM.

* Grad-CAM — Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017:  ``w_c = mean_ij g_cij``, ``map = ReLU(Σ_c w_c A_c)``.
* Grad-CAM++ — Chattopadhay et al., "Grad-CAM++: Generalized Gradient-based Visual
  Explanations for Deep Convolutional Networks", WACV 2018, closed form (exponential score):
  ``α_cij = g² / (2 g² + (Σ_ab A_cab) g³) = 1 / (2 + S_c g_cij)`` with ``S_c = Σ_ab A_cab``,
  ``w_c = Σ_ij α_cij ReLU(g_cij)``, ``map = ReLU(Σ_c w_c A_c)``.  Guard: α = 0 where g = 0 or where
  ``|2 + S_c g| < PP_GUARD`` (0.01).  With non-negative activations (a layer after a ReLU) ``2 + S g >= 2``
  wherever ``ReLU(g) > 0``, so the guard never acts and the paper's formula holds exactly; on a layer with
  negative activations the denominator can cross zero (α explodes or turns negative): :class:`CAMResult`
  reports the share of negative activations so callers can flag it.
* LayerCAM — Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
  Localization", IEEE TIP 2021:  ``map = ReLU(Σ_c ReLU(g_c) ⊙ A_c)``.
* HiResCAM — Draelos & Carin 2020:  ``map = ReLU(Σ_c g_c ⊙ A_c)``.

Targets: what is explained is a callable (:mod:`.targets`, the pytorch-grad-cam target-object pattern):
a class output, a regression output, a margin, an adversarial class; class indices still work.

Each method is a weighting function ``(A, g) -> weighted (N, K, h, w)`` in the :data:`METHODS`
registry; :func:`cam_from` sums it over channels and rectifies.

Shapes: images ``x`` (N, C, H, W) in [0, 1]; activations ``A`` and gradients ``g`` of the
target layer (N, K, h, w); maps (N, H, W) upsampled bilinearly to the input size and, by
default, min-max normalised per image to [0, 1].

A whole batch takes one forward and one backward pass (the gradient of the *sum* of the
chosen class scores with respect to the layer's output, via :func:`torch.autograd.grad`):
no per-image loops, no host round-trips.  The layer's output is detached inside the forward
hook, so backward stops at the target layer and no parameter ever receives a gradient;
hooks are removed in a ``finally``.  Images go through the :class:`~trustvision.models.classifier.Classifier`,
so its preprocessing (resize, mean/std) applies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..models.classifier import Classifier
from ..registry import Registry
from .targets import resolve

Reshape = Callable[[Tensor], Tensor]
Weighting = Callable[[Tensor, Tensor], Tensor]

METHODS: Registry[Weighting] = Registry("CAM method")
"""CAM methods by name: ``weighted(acts, grads) -> (N, K, h, w)``, the channel-weighted activations that
:func:`cam_from` sums over channels and rectifies.  Add one with ``@METHODS.register("name")``."""


@dataclass
class CAMResult:
    """Maps and what they explain.

    Attributes:
        maps: (N, H, W) float32 maps (in [0, 1] when normalised), on the classifier's device.
        target: (N,) int64 explained classes (-1 where the target is not one class, e.g. a regression score).
        logits: (N, num_classes) fp32 clean logits (model outputs).
        negative_fraction: (N,) share of negative values in the target layer's activations (> 0 makes
            Grad-CAM++ ill-conditioned, see the module docstring).
    """

    maps: Tensor
    target: Tensor
    logits: Tensor
    negative_fraction: Tensor | None = None


# ------------------------------------------------------------------ layers
def _has_conv(m: nn.Module) -> bool:
    return any(isinstance(s, nn.Conv2d) for s in m.modules())


def find_layer(module: nn.Module, layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
    """The target layer: ``(dotted name, module)``.

    Args:
        module: the network (``clf.module``).
        layer: a dotted path (``"layer4"``, ``"features.29"``), a submodule of ``module``, or
            ``None`` for automatic choice: descend through wrappers that hold a single
            conv-containing child, then take the *last* child containing an ``nn.Conv2d`` (ResNet:
            ``layer4``; VGG: ``features``); when that is a bare ``Conv2d`` directly followed by an
            activation module, the activation (its output is what the head sees).
    """
    names = {id(m): n for n, m in module.named_modules()}
    if isinstance(layer, nn.Module):
        if id(layer) not in names:
            raise TrustVisionError("target layer: the given module is not part of the model")
        return names[id(layer)], layer
    if layer:
        try:
            return layer, module.get_submodule(layer)
        except AttributeError:
            some = [n for n, m in module.named_modules() if n and _has_conv(m)][-6:]
            raise TrustVisionError(f"target layer {layer!r} not found in the model; conv layers include "
                                   f"{', '.join(some) or 'none'}") from None
    node, prefix = module, ""
    while True:
        kids = [(n, c) for n, c in node.named_children() if _has_conv(c)]
        if not kids:
            raise TrustVisionError("no nn.Conv2d in the model: name a target layer (and a reshape for transformers)")
        if len(kids) == 1 and not isinstance(kids[0][1], nn.Conv2d) and list(kids[0][1].children()):
            node, prefix = kids[0][1], f"{prefix}{kids[0][0]}."
            continue
        name, child = kids[-1]
        siblings = list(node.named_children())
        pos = [n for n, _ in siblings].index(name)
        if isinstance(child, nn.Conv2d) and pos + 1 < len(siblings):
            nxt_name, nxt = siblings[pos + 1]
            if isinstance(nxt, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU)):
                name, child = nxt_name, nxt
        return prefix + name, child


def vit_reshape(height: int, width: int, skip_tokens: int = 1) -> Reshape:
    """A reshape for transformer blocks: tokens (N, L, D) -> (N, D, height, width), dropping the first
    ``skip_tokens`` (class/distillation) tokens."""
    def reshape(t: Tensor) -> Tensor:
        if t.ndim != 3 or t.shape[1] - skip_tokens != height * width:
            raise TrustVisionError(f"reshape: tokens of shape {tuple(t.shape)} do not form a {height}x{width} "
                                   f"grid after {skip_tokens} skipped token(s)")
        return t[:, skip_tokens:].reshape(t.shape[0], height, width, t.shape[2]).permute(0, 3, 1, 2)
    return reshape


# ------------------------------------------------------------------ maps
@METHODS.register("gradcam")
def _gradcam(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): channel weights = spatial mean of the gradient."""
    return grads.mean((2, 3), keepdim=True) * acts


PP_GUARD = 1e-2
"""Grad-CAM++ guard: α = 0 where ``|2 + S g| < PP_GUARD`` (α would exceed 1/PP_GUARD = 100; it is at most 1/2
when activations are non-negative)."""


@METHODS.register("gradcam++")
def _gradcam_pp(acts: Tensor, grads: Tensor) -> Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018): closed-form pixel weights alpha on the positive gradient.

    ``α = g² / (2g² + S g³) = 1 / (2 + S g)`` (S the channel's activation sum), 0 where g = 0 or where
    ``|2 + S g| < PP_GUARD`` (a denominator near zero: only possible with negative activations).
    """
    d = 2 + acts.sum((2, 3), keepdim=True) * grads            # denominator / g², (N, K, h, w)
    ok = (grads != 0) & (d.abs() >= PP_GUARD)
    alpha = torch.where(ok, 1.0 / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d))
    return (alpha * grads.clamp_min(0)).sum((2, 3), keepdim=True) * acts


@METHODS.register("layercam")
def _layercam(acts: Tensor, grads: Tensor) -> Tensor:
    """LayerCAM (Jiang et al., IEEE TIP 2021): element-wise positive gradient times activation."""
    return grads.clamp_min(0) * acts


@METHODS.register("hirescam")
def _hirescam(acts: Tensor, grads: Tensor) -> Tensor:
    """HiResCAM (Draelos & Carin 2020): element-wise gradient times activation."""
    return grads * acts


def cam_from(acts: Tensor, grads: Tensor, method: str) -> Tensor:
    """Raw maps (N, h, w) from activations and gradients (N, K, h, w) for ``method`` (see module doc)."""
    return METHODS.get(method)(acts, grads).sum(1).clamp_min(0)


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalise each map (N, H, W) to [0, 1]; constant maps become 0."""
    flat = maps.flatten(1)
    lo, hi = flat.amin(1), flat.amax(1)
    span = (hi - lo).clamp_min(1e-12).view(-1, 1, 1)
    return torch.where((hi > lo).view(-1, 1, 1), (maps - lo.view(-1, 1, 1)) / span, torch.zeros_like(maps))


def activations_and_grads(clf: Classifier, x: Tensor, target: Any, layer: nn.Module,
                          reshape: Reshape | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One forward + one backward: ``(A, g, target, logits)``.

    Args:
        x: (N, C, H, W) pixels on the classifier's device.  target: what to explain (see
            :func:`.targets.resolve`): None (predicted class), (N,) classes, one callable target, or N of them.
        layer: a submodule of ``clf.module``.  reshape: maps the layer output to (N, K, h, w).
    Returns: A, g (N, K, h, w) detached; target (N,); logits (N, num_classes) detached.
    """
    store: list[Tensor] = []

    def hook(_m: nn.Module, _inp, out):
        if not isinstance(out, Tensor):
            raise TrustVisionError("target layer returns a tuple/list; choose a layer that returns one tensor")
        leaf = out.detach().requires_grad_(True)   # backward stops here: no parameter gradients
        store.append(leaf)
        return leaf.clone()                         # a non-leaf, so in-place ops after the layer still work

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = clf(x)
            if not store:
                raise TrustVisionError("the target layer was not used in the forward pass")
            if isinstance(target, Tensor) and not target.is_floating_point() and target.shape == (len(x),) and \
                    bool(((target < 0) | (target >= clf.num_classes)).any()):
                raise TrustVisionError(f"CAM targets must be (N,) classes in 0..{clf.num_classes - 1}")
            scores, tgt = resolve(target, logits)
            acts = store[-1]
            (grads,) = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
    finally:
        handle.remove()
    if grads is None:
        grads = torch.zeros_like(acts)
    acts, grads = acts.detach(), grads.detach()
    if reshape is not None:
        acts, grads = reshape(acts), reshape(grads)
    if acts.ndim != 4:
        raise TrustVisionError(f"target layer output has shape {tuple(acts.shape)}; expected (N, K, h, w) "
                               "(pass a reshape for token outputs)")
    return acts.float(), grads.float(), tgt, logits.detach()


class CAM:
    """A batched class-activation-map explainer.

    Args:
        method: ``"gradcam"``, ``"gradcam++"``, ``"layercam"``, ``"hirescam"`` or any other :data:`METHODS` entry.
        layer: target layer (dotted name, submodule or ``None`` for automatic, see :func:`find_layer`).
        reshape: for token outputs, e.g. ``vit_reshape(14, 14)``.
        normalize: min-max normalise each map to [0, 1].

    Example::

        res = CAM("gradcam++")(clf, x)        # x (N, C, H, W) in [0, 1] -> res.maps (N, H, W)
    """

    def __init__(self, method: str = "gradcam++", layer: str | nn.Module | None = None, *,
                 reshape: Reshape | None = None, normalize: bool = True) -> None:
        METHODS.get(method)            # unknown: "unknown CAM method 'x'; choose from gradcam, ..."
        self.method, self.layer, self.reshape, self.normalize = method, layer, reshape, normalize

    def layer_name(self, clf: Classifier) -> str:
        """Dotted name of the layer used for ``clf``."""
        return find_layer(clf.module, self.layer)[0]

    def __call__(self, clf: Classifier, x: Tensor, target: Any = None) -> CAMResult:
        """Maps (N, H, W) for images ``x`` (N, C, H, W) on the classifier's device.

        ``target``: None (predicted class), (N,) classes, a target object of :mod:`.targets` (e.g.
        ``RegressionTarget(0)``, ``MarginTarget(3)``) or a list of N per-image targets (pytorch-grad-cam's too).
        """
        _, layer = find_layer(clf.module, self.layer)
        acts, grads, tgt, logits = activations_and_grads(clf, x, target, layer, self.reshape)
        maps = cam_from(acts, grads, self.method)
        maps = F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        neg = (acts < 0).flatten(1).float().mean(1)
        return CAMResult(normalize_maps(maps) if self.normalize else maps, tgt, logits, neg)


def compute_cams(clf: Classifier, x: Tensor, target: Any = None, *, method: str = "gradcam++",
                 layer: str | nn.Module | None = None, batch_size: int = 128,
                 reshape: Reshape | None = None) -> CAMResult:
    """:class:`CAM` over a whole tensor (any device) in device batches; results on the CPU.

    Args: x (N, C, H, W) in [0, 1]; target: None, (N,) classes, a list of N targets (both sliced per batch),
    or one target object applied to every batch (its fields must then be per-image scalars).
    Returns maps (N, H, W), target (N,), logits (N, K), negative_fraction (N,).
    """
    cam = CAM(method, layer, reshape=reshape)
    parts = []
    for i in range(0, len(x), batch_size):
        t = target
        if isinstance(target, Tensor):
            t = target[i:i + batch_size].to(clf.device)
        elif isinstance(target, (list, tuple)):
            t = target[i:i + batch_size]
        r = cam(clf, x[i:i + batch_size].to(clf.device), t)
        parts.append((r.maps.cpu(), r.target.cpu(), r.logits.cpu(), r.negative_fraction.cpu()))
    if not parts:
        return CAMResult(torch.zeros(0, *x.shape[-2:]), torch.zeros(0, dtype=torch.long),
                         torch.zeros(0, clf.num_classes), torch.zeros(0))
    return CAMResult(*(torch.cat(p) for p in zip(*parts)))
