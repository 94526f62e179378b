"""Miniature versions of the architecture families of Kotyan, Matsuki & Vargas (PLOS ONE 2022, e0266060).

Every factory takes ``(num_classes, channels, width)`` and returns an ``nn.Module`` mapping images
(B, channels, H, W), H, W >= 16 (sized for 28x28 and 32x32), to logits (B, num_classes).
``width`` is always the number of output channels of the *first* convolution, so that
:mod:`trustvision.models.loading` can read it back from a state dict.  All are far smaller than the
originals (13-95 k parameters, 0.4-8.5 MMAC per 28x28 image) so that a CPU trains each on
4 000 MNIST digits in seconds; BatchNorm is added where the original had none (All-Conv, NiN) so a
few epochs of Adam suffice.

* ``lenet``: LeNet-5 (LeCun et al. 1998): conv5-pool-conv5-pool, FC 120-84.
* ``allconv``: All-CNN-C (Springenberg et al. 2015): strided 3x3 convolutions instead of pooling,
  1x1 class convolution, global average pooling.
* ``nin``: Network-in-Network (Lin et al. 2014): "mlpconv" blocks (kxk conv + two 1x1 convs),
  global average pooling over the class maps.
* ``resnet``: CIFAR ResNet-8 (He et al. 2016): three stages of one basic residual block.
* ``densenet``: DenseNet-BC-style (Huang et al. 2017): two dense blocks (growth rate ``width // 2``)
  with a compressing transition.
* ``wideresnet``: WRN-10-2 (Zagoruyko & Komodakis 2016): pre-activation blocks widened by ``widen``.
* ``vgg``: VGG-style (Simonyan & Zisserman 2015): stacked 3x3 convolutions with max-pooling.
* ``capsnet``: CapsNet with dynamic routing (Sabour et al. 2017), in :mod:`trustvision.models.zoo.capsnet`.
* ``vgg19``, ``mobilenet``: VGG-19-BN and MobileNet v1 miniatures, in :mod:`trustvision.models.zoo.mobile`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .registry import ARCHITECTURES


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, bn: bool = True) -> list[nn.Module]:
    """Conv(k x k, same padding) -> [BatchNorm] -> ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


# ------------------------------------------------------------------ LeNet
@ARCHITECTURES.register("lenet")
def lenet(num_classes: int = 10, channels: int = 1, width: int = 6) -> nn.Module:
    """LeNet-5: Conv5(width)-ReLU-MaxPool-Conv5(16)-ReLU-MaxPool-[AdaptiveAvgPool 5x5]-FC120-FC84-FC.

    (B, channels, H, W) -> (B, num_classes); the adaptive pool makes 28x28 and 32x32 both give 16x5x5.
    """
    return nn.Sequential(
        nn.Conv2d(channels, width, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(5), nn.Flatten(),
        nn.Linear(16 * 25, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
    )


# ------------------------------------------------------------------ All-Conv
@ARCHITECTURES.register("allconv")
def allconv(num_classes: int = 10, channels: int = 1, width: int = 16) -> nn.Module:
    """All-CNN-C, miniature: 3x3 convs, stride-2 convs in place of pooling, 1x1 class conv, global average pool.

    (B, channels, H, W) -> (B, num_classes).
    """
    w = width
    return nn.Sequential(
        *_cbr(channels, w), *_cbr(w, w, stride=2),
        *_cbr(w, 2 * w), *_cbr(2 * w, 2 * w, stride=2),
        *_cbr(2 * w, 2 * w), *_cbr(2 * w, 2 * w, k=1),
        nn.Conv2d(2 * w, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


# ------------------------------------------------------------------ Network in Network
def _mlpconv(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [*_cbr(cin, cout, k), *_cbr(cout, cout, 1), *_cbr(cout, cout, 1)]


@ARCHITECTURES.register("nin")
def nin(num_classes: int = 10, channels: int = 1, width: int = 16) -> nn.Module:
    """Network-in-Network, miniature: three mlpconv blocks (5x5, 3x3, 3x3 each + two 1x1), the last one
    emitting one map per class, global average pooling.  (B, channels, H, W) -> (B, num_classes).
    """
    w = width
    return nn.Sequential(
        *_mlpconv(channels, w, 5), nn.MaxPool2d(3, 2, padding=1),
        *_mlpconv(w, 2 * w, 3), nn.AvgPool2d(3, 2, padding=1),
        *_cbr(2 * w, 2 * w, 3), *_cbr(2 * w, 2 * w, 1),
        nn.Conv2d(2 * w, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


# ------------------------------------------------------------------ ResNet / WideResNet
class BasicBlock(nn.Module):
    """ResNet basic block (post-activation): conv3-BN-ReLU-conv3-BN + shortcut (1x1 conv when shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.short(x))


class PreActBlock(nn.Module):
    """Wide-ResNet block (pre-activation): BN-ReLU-conv3-BN-ReLU-conv3 + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = torch.relu(self.bn1(x))
        skip = x if self.short is None else self.short(o)
        o = self.conv1(o)
        o = self.conv2(torch.relu(self.bn2(o)))
        return o + skip


class _StagedNet(nn.Module):
    """Stem conv -> stages of blocks -> [final BN-ReLU] -> global average pool -> linear head."""

    def __init__(self, channels: int, stem: int, widths: list[int], block: type[nn.Module], num_classes: int,
                 pre_act: bool) -> None:
        super().__init__()
        # names chosen so that the stem is the first 4-D weight both in registration and in alphabetical
        # (safetensors) order: trustvision.models.loading reads ``width`` back from it
        self.conv_stem = nn.Conv2d(channels, stem, 3, 1, 1, bias=pre_act)
        self.stem_act = nn.Identity() if pre_act else nn.Sequential(nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        blocks, cin = [], stem
        for i, w in enumerate(widths):
            blocks.append(block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True)) if pre_act else nn.Identity()
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.final(self.layers(self.stem_act(self.conv_stem(x))))
        return self.head(x.mean((2, 3)))


@ARCHITECTURES.register("resnet")
def resnet(num_classes: int = 10, channels: int = 1, width: int = 8) -> nn.Module:
    """CIFAR ResNet-8: stem conv3(width), basic blocks of width, 2*width, 4*width (strides 1, 2, 2), GAP, FC.

    (B, channels, H, W) -> (B, num_classes).
    """
    return _StagedNet(channels, width, [width, 2 * width, 4 * width], BasicBlock, num_classes, pre_act=False)


@ARCHITECTURES.register("wideresnet")
def wideresnet(num_classes: int = 10, channels: int = 1, width: int = 8, widen: int = 2) -> nn.Module:
    """WRN-10-k: stem conv3(width), pre-activation blocks of k*width, 2k*width, 4k*width (strides 1, 2, 2).

    (B, channels, H, W) -> (B, num_classes).
    """
    w = width * widen
    return _StagedNet(channels, width, [w, 2 * w, 4 * w], PreActBlock, num_classes, pre_act=True)


# ------------------------------------------------------------------ DenseNet
class _DenseLayer(nn.Module):
    """BN-ReLU-conv3(growth); output is the input concatenated with the new maps."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, growth, 3, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.f(x)], 1)


@ARCHITECTURES.register("densenet")
def densenet(num_classes: int = 10, channels: int = 1, width: int = 16, layers: int = 3) -> nn.Module:
    """DenseNet, miniature: stem conv3(width) + 2x2 avg-pool, dense block (``layers`` layers, growth width/2),
    transition (BN-ReLU-conv1 to half the maps, avg-pool), dense block, BN-ReLU, GAP, FC.

    (B, channels, H, W) -> (B, num_classes).
    """
    g = max(width // 2, 1)
    mods: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.AvgPool2d(2)]
    c = width
    for block in range(2):
        for _ in range(layers):
            mods.append(_DenseLayer(c, g))
            c += g
        if block == 0:
            mods += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
            c //= 2
    mods += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes)]
    return nn.Sequential(*mods)


# ------------------------------------------------------------------ VGG
@ARCHITECTURES.register("vgg")
def vgg(num_classes: int = 10, channels: int = 1, width: int = 16) -> nn.Module:
    """VGG-style: [conv3(w)] pool [conv3(2w)] pool [conv3(4w) x2] pool, GAP, FC(4w)-ReLU-FC.

    (B, channels, H, W) -> (B, num_classes); BN after each convolution (as in VGG-BN).
    """
    w = width
    return nn.Sequential(
        *_cbr(channels, w), nn.MaxPool2d(2),
        *_cbr(w, 2 * w), nn.MaxPool2d(2),
        *_cbr(2 * w, 4 * w), *_cbr(4 * w, 4 * w), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, num_classes),
    )


# CapsNet registers itself in its own module; imported here, after the families above, so that the
# registry lists the zoo in the paper's order whichever module is imported first.
from .capsnet import capsnet  # noqa: E402
from .mobile import mobilenet, vgg19  # noqa: E402,F401

PAPER_ARCHS: dict[str, Callable[..., nn.Module]] = {
    name: ARCHITECTURES.get(name)
    for name in ("lenet", "allconv", "nin", "resnet", "densenet", "wideresnet", "vgg", "capsnet", "vgg19",
                 "mobilenet")
}
"""The convolutional Raw Zero-Shot zoo (Kotyan et al. 2022's families), by ``trustvision:NAME``."""

ZOO_12: tuple[str, ...] = (*PAPER_ARCHS, "mlp", "smallcnn")
"""Twelve networks: the ten above plus the authors' two MNIST models (MLP, and a plain "Conv" net, here
``smallcnn``).  See docs/zeroshot.md for the authors' list and what could not be built."""
