"""Small architectures sized for 28x28 / 32x32 inputs, addressable as ``trustvision:NAME`` specs.

* ``smallcnn``: two conv blocks + MLP head, the demo model (about 0.1 M parameters).
* ``mlp``: a two-layer perceptron baseline.
* ``lenet``, ``allconv``, ``nin``, ``resnet``, ``densenet``, ``wideresnet``, ``vgg``, ``capsnet``: the Raw
  Zero-Shot zoo (Kotyan et al. 2022's families), in :mod:`trustvision.models.zoo.paper`.
"""
from __future__ import annotations

from torch import nn

from .registry import ARCHITECTURES


@ARCHITECTURES.register("smallcnn")
def smallcnn(num_classes: int = 10, channels: int = 1, width: int = 16) -> nn.Module:
    """Three Conv(3x3)-ReLU blocks (width, 2w, 4w; pooling after the first two), then pool + MLP.

    About 4 MFLOP per 28x28 image, so CPU audits stay fast; works for inputs >= 8x8.
    """
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(4 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )


@ARCHITECTURES.register("mlp")
def mlp(num_classes: int = 10, channels: int = 1, size: int = 28, hidden: int = 256) -> nn.Module:
    """Flatten + two hidden layers."""
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


ARCHS = ARCHITECTURES    # the whole zoo (filled as :mod:`trustvision.models.zoo` imports .paper and .capsnet)
