"""Two more families of the networks Kotyan, Matsuki & Vargas list in their code (RepresentationMetrics,
``code/run.py``): VGG19 (their CIFAR-10 model 8, beside VGG16) and MobileNet (Howard et al. 2017, in their
ImageNet list), as miniatures for 28x28 / 32x32 inputs.

* ``vgg19``: VGG-19-style (Simonyan & Zisserman 2015), 16 convolutions in five stages (2-2-4-4-4 as in
  the original), BN after each convolution (VGG19-BN), pooling after the first three stages only (a
  28x28 input has no room for five), global average pooling, FC-ReLU-FC.
* ``mobilenet``: MobileNet v1 (Howard et al. 2017): a standard 3x3 stem, then depthwise-separable blocks
  (3x3 depthwise conv-BN-ReLU, 1x1 pointwise conv-BN-ReLU), strides 1, 2, 1, 2, 1, global average pooling,
  linear head.

Both are ``factory(num_classes, channels, width)``; ``width`` is the first convolution's output channels
(the ``0.weight`` key of the state dict, which :mod:`trustvision.models.loading` reads back).
Images (B, channels, H, W), H, W >= 8 -> logits (B, num_classes).
"""
from __future__ import annotations

from torch import nn

from .registry import ARCHITECTURES


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv(k x k, same padding, no bias) -> BatchNorm -> ReLU."""
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


@ARCHITECTURES.register("vgg19")
def vgg19(num_classes: int = 10, channels: int = 1, width: int = 8) -> nn.Module:
    """VGG-19-BN, miniature: stages of 2, 2, 4, 4, 4 conv3 layers of widths w, 2w, 4w, 4w, 4w (max-pool after
    the first three stages), GAP, FC(4w)-ReLU-FC.  (B, channels, H, W) -> (B, num_classes)."""
    w = width
    layers: list[nn.Module] = []
    cin = channels
    for stage, (reps, cout) in enumerate(zip((2, 2, 4, 4, 4), (w, 2 * w, 4 * w, 4 * w, 4 * w))):
        for _ in range(reps):
            layers += _cbr(cin, cout)
            cin = cout
        if stage < 3:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(cin, cin), nn.ReLU(inplace=True), nn.Linear(cin, num_classes))


@ARCHITECTURES.register("mobilenet")
def mobilenet(num_classes: int = 10, channels: int = 1, width: int = 16) -> nn.Module:
    """MobileNet v1, miniature: conv3(w) stem, five depthwise-separable blocks (w->2w s1, 2w->4w s2, 4w->4w s1,
    4w->8w s2, 8w->8w s1), GAP, linear.  (B, channels, H, W) -> (B, num_classes)."""
    w = width
    layers: list[nn.Module] = [*_cbr(channels, w)]
    for cin, cout, stride in ((w, 2 * w, 1), (2 * w, 4 * w, 2), (4 * w, 4 * w, 1), (4 * w, 8 * w, 2),
                              (8 * w, 8 * w, 1)):
        layers += [*_cbr(cin, cin, 3, stride, groups=cin), *_cbr(cin, cout, 1)]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes))
