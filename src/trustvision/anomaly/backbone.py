"""Feature backbones for PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

PatchCore reads intermediate feature maps of a frozen CNN (the paper: ``layer2`` and ``layer3`` of an
ImageNet WideResNet-50).  Offline there are no ImageNet weights, so a :class:`Backbone` is either

* ``torchvision:NAME`` / ``timm:NAME`` / ``trustvision:NAME`` with a weights file the user gives
  (``--backbone torchvision:wide_resnet50_2 --backbone-weights FILE``), loaded with the project's safe
  loaders (:func:`trustvision.models.weights.read_state_dict`: safetensors or ``torch.load(weights_only=True)``);
  torchvision/timm backbones get ImageNet mean/std normalisation unless told otherwise; or
* ``demo`` (the default): the zoo's CIFAR ResNet-8 (``trustvision:resnet``, width 16, 3 channels) trained here,
  offline, on the bundled natural-photo crops of :func:`trustvision.data.bundled.natural_images` with the
  self-made task "which photograph does this 32x32 crop come from" (10 photographs).  Why: it is the
  natural-photo pretraining the UAP work already uses, it needs no download, it trains in well under a minute
  on a CPU and is cached once per machine (:func:`trustvision.training.cached_model`), and natural photos
  teach generic edge/texture filters — the property PatchCore relies on.  Its stages ``layers.1`` and
  ``layers.2`` (strides 2 and 4) play the roles of ``layer2``/``layer3``.

Features are read with forward hooks; the forward pass stops after the last requested layer.
Shapes: ``x`` (N, C, H, W) in [0, 1] -> list of (N, C_l, H_l, W_l), one per layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import TrustVisionError
from ..persist import digest

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEMO_LAYERS = ("layers.1", "layers.2")
DEFAULT_LAYERS = ("layer2", "layer3")


class _Stop(Exception):
    """Raised by the last hook: the rest of the network is not needed."""


class Backbone(nn.Module):
    """A frozen CNN whose intermediate ``layers`` give PatchCore its patch features.

    Args:
        module: the network (kept in eval mode, parameters frozen; never trained here).
        layers: names of submodules (``module.named_modules()``) whose outputs are read, shallow to deep.
        mean, std: per-channel normalisation applied inside (inputs stay [0, 1] pixels); None: none.
        name: how reports name it.
    """

    def __init__(self, module: nn.Module, layers: Sequence[str], *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, name: str = "backbone") -> None:
        super().__init__()
        self.net = module.eval().requires_grad_(False)
        self.layers, self.name = tuple(layers), name
        named = dict(self.net.named_modules())
        missing = [n for n in self.layers if n not in named]
        if missing:
            some = [n for n in named if n and "." not in n][:12]
            raise TrustVisionError(f"backbone {name}: no layer {missing[0]!r}; top-level layers are {', '.join(some)}")
        self._targets = [named[n] for n in self.layers]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) if mean else None)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) if std else None)

    def train(self, mode: bool = True) -> "Backbone":      # frozen: BatchNorm statistics never change
        return super().train(False)

    @property
    def channels(self) -> int:
        """Input channels of the stem convolution (3 when it cannot be read)."""
        conv = next((m for m in self.net.modules() if isinstance(m, nn.Conv2d)), None)
        return int(conv.in_channels) if conv is not None else 3

    def fingerprint(self) -> str:
        """:func:`~trustvision.persist.digest` of the weights, layers and normalisation (for model reuse)."""
        sd = self.net.state_dict()
        return digest(self.name, self.layers, [sd[k] for k in sorted(sd)],
                      None if self.mean is None else self.mean, None if self.std is None else self.std)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(N, C, H, W) in [0, 1] -> [(N, C_l, H_l, W_l) for each layer]; autograd flows when ``x`` requires it."""
        if x.shape[1] != self.channels:
            if x.shape[1] == 1 and self.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                raise TrustVisionError(f"backbone {self.name} takes {self.channels}-channel images, got {x.shape[1]}")
        if self.mean is not None:
            x = (x - self.mean) / self.std
        found: dict[int, Tensor] = {}
        last = len(self._targets) - 1

        def hook(i: int):
            def fn(_m, _inp, out):
                found[i] = out[0] if isinstance(out, (tuple, list)) else out
                if len(found) == len(self._targets) and i == last:
                    raise _Stop
            return fn

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(self._targets)]
        try:
            self.net(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if len(found) != len(self._targets):
            raise TrustVisionError(f"backbone {self.name}: layers {self.layers} were not all reached in forward")
        return [found[i] for i in range(len(self._targets))]


def demo_backbone(*, seed: int = 0, epochs: int = 6, width: int = 16, progress=None) -> Backbone:
    """The offline demo backbone (see the module docstring), trained once per machine and cached."""
    from ..data.bundled import natural_images
    from ..data.dataset import Dataset
    from ..models.zoo.paper import resnet
    from ..training import cached_model
    from ..training.trainer import train_classifier

    def fit(module: nn.Module) -> nn.Module:
        x, which = natural_images(4000, 32, seed=seed, with_labels=True)
        data = Dataset(x, which, [str(i) for i in range(int(which.max()) + 1)], "natural-photos")
        return train_classifier(module, data, epochs=epochs, seed=seed, progress=progress)

    key = {"name": "patchcore-demo-resnet8", "seed": seed, "epochs": epochs, "width": width, "n": 4000, "v": 1,
           "torch": torch.__version__.split("+")[0]}
    module, _, _ = cached_model(key, lambda: resnet(10, 3, width), fit)
    return Backbone(module, DEMO_LAYERS, name=f"demo ResNet-8 (natural-photo crops, seed {seed})")


def load_backbone(spec: str = "demo", weights: str | Path | None = None, *, layers: Sequence[str] | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None, seed: int = 0) -> Backbone:
    """A :class:`Backbone` from a spec: ``demo`` or an architecture spec (+ ``weights`` file, never downloaded).

    ``layers`` default to ``layer2, layer3`` (torchvision/timm ResNets) or ``layers.1, layers.2`` (the zoo's
    staged nets ``trustvision:resnet``/``wideresnet``, and the demo).
    Without ``weights`` an architecture has random weights (allowed, flagged by the section).
    """
    if spec == "demo":
        if weights is not None:
            raise TrustVisionError("--backbone-weights goes with an architecture spec, not with --backbone demo")
        bb = demo_backbone(seed=seed)
        return bb if layers is None else Backbone(bb.net, layers, name=bb.name)
    from ..models.architectures import build_architecture, parse_arch
    from ..models.weights import channels_in, classes_in, load_into, read_state_dict
    parsed = parse_arch(spec)
    if parsed is None or parsed[0] not in ("torchvision", "timm", "trustvision"):
        raise TrustVisionError(f"--backbone {spec!r}: use demo, torchvision:NAME, timm:NAME or trustvision:NAME")
    file = Path(weights) if weights is not None else None
    if file is not None and not file.is_file():
        raise TrustVisionError(f"--backbone-weights {file}: no such file")
    sd = read_state_dict(file, False) if file is not None else None
    module, _, _ = build_architecture(spec, classes_in(sd) if sd else None, (channels_in(sd) if sd else None) or 3,
                                      sd, None)
    if sd is not None:
        load_into(module, sd, file, spec)
    imagenet = parsed[0] in ("torchvision", "timm")
    mean = mean if mean is not None else (IMAGENET_MEAN if imagenet else None)
    std = std if std is not None else (IMAGENET_STD if imagenet else None)
    layers = layers or (DEMO_LAYERS if parsed[0] == "trustvision" else DEFAULT_LAYERS)
    return Backbone(module, layers, mean=mean, std=std,
                    name=spec + (f" ({file.name})" if file else " (random weights)"))
