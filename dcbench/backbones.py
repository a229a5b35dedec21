"""Extra CIFAR-style backbones: EDC's observer zoo and small batch-norm networks for the CPU.

EDC (spec edc.md §1.1) recovers images against eight observers; the three defined here complete the
set next to :mod:`dcbench.models`' ResNet-18 and ConvNets. They follow the definitions of the CRD
model zoo (``HobbitLong/RepDistiller``) that EDC's CIFAR branches import, in our own code:

- ``mobilenetv2-half``: MobileNetV2 at width ×0.5, expansion 6, stride-2 3×3 stem, 1×1 conv to
  1280, average pooling, linear (CRD ``mobile_half``);
- ``wrn-16-2``: pre-activation Wide-ResNet of depth 16 and widening factor 2, no dropout;
- ``shufflenetv2-0.5``: ShuffleNetV2 ×0.5, 1×1 stem to 24 channels, no max-pool, stages 48/96/192
  of (3, 7, 3) blocks after a down-sampling block each, 1×1 conv to 1024;
- ``resnet8-bn``: a tiny CIFAR ResNet (3×3 stem of 16 channels, one basic block per stage of
  16/32/64 channels, batch norm) for CPU observers (spec §8.3).

Small-input adaptation (all four): the final fixed-size average pool of the reference
(``avg_pool(4)``/``AvgPool2d(8)``/``AvgPool2d(H/32)``, which assume 32×32 inputs) is adaptive
pooling to 1×1, identical at 32 px, and 8×8 digits, 28×28 grey images and 64 px work. Stride-2
layers on a 1×1 map keep it 1×1 (padding 1), as in the reference when a map gets that small.
"""

from __future__ import annotations

import torch
from torch import nn

from dcbench.models import MODELS, BasicBlock, Classifier, ImageSize


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=False),
    ]


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return _conv_bn_relu(in_channels, out_channels, kernel, stride, groups)[:2]


class PooledClassifier(Classifier):
    """``features`` → adaptive average pooling to 1×1 → ``classifier`` (subclasses set both)."""

    features: nn.Module
    pool: nn.Module

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


# ------------------------------------------------------------------------------------------------
# MobileNetV2


class InvertedResidual(nn.Module):
    """1×1 expansion → BN → ReLU → depthwise 3×3 → BN → ReLU → 1×1 projection → BN (+ input)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, hidden, 1),
            *_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            *_conv_bn(hidden, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


#: (expansion, channels at width 1, blocks, stride of the first block) per stage (CRD's table).
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip


class MobileNetV2(PooledClassifier):
    """CIFAR MobileNetV2 (CRD): stride-2 stem, inverted residual stages, 1×1 conv to 1280."""

    def __init__(
        self, channels: int, num_classes: int, image_size: ImageSize, width_mult: float = 0.5
    ) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        layers: list[nn.Module] = [*_conv_bn_relu(channels, in_channels, 3, stride=2)]
        for expansion, base, blocks, stride in MOBILENETV2_STAGES:
            out_channels = int(base * width_mult)
            for i in range(blocks):
                layers.append(
                    InvertedResidual(in_channels, out_channels, stride if i == 0 else 1, expansion)
                )
                in_channels = out_channels
        last = 1280  # CRD widens the last conv only for width_mult > 1
        layers += _conv_bn_relu(in_channels, last, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)


@MODELS.register("mobilenetv2-half")
def mobilenetv2_half(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """CIFAR MobileNetV2 at width ×0.5 (CRD ``mobile_half``, EDC's "MobileNetV2")."""
    return MobileNetV2(channels, num_classes, image_size, width_mult=0.5)


# ------------------------------------------------------------------------------------------------
# Wide-ResNet


class PreActBlock(nn.Module):
    """Pre-activation WRN block: BN → ReLU → conv 3×3 → BN → ReLU → conv 3×3, plus shortcut.

    When the width changes, the shortcut is a 1×1 conv on the pre-activated input (as WRN's
    ``convShortcut``); otherwise it is the raw input.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None = None
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(PooledClassifier):
    """Pre-activation Wide-ResNet-``depth``-``widen`` (CRD ``wrn``), dropout 0."""

    def __init__(
        self, channels: int, num_classes: int, image_size: ImageSize, depth: int, widen: int
    ) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)]
        in_channels = widths[0]
        for out_channels, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(blocks):
                layers.append(PreActBlock(in_channels, out_channels, stride if i == 0 else 1))
                in_channels = out_channels
        layers += [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)


@MODELS.register("wrn-16-2")
def wrn_16_2(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """Wide-ResNet-16-2, pre-activation, no dropout (EDC's "WRN_16_2")."""
    return WideResNet(channels, num_classes, image_size, depth=16, widen=2)


# ------------------------------------------------------------------------------------------------
# ShuffleNetV2


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups (ShuffleNet's channel shuffle)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """Stride-1 unit: half the channels pass, the other half go 1×1 → depthwise 3×3 → 1×1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        half = channels - self.split
        self.branch = nn.Sequential(
            *_conv_bn_relu(half, half, 1),
            *_conv_bn(half, half, 3, groups=half),
            *_conv_bn_relu(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = x[:, : self.split], x[:, self.split :]
        return channel_shuffle(torch.cat([keep, self.branch(work)], dim=1), 2)


class ShuffleDownBlock(nn.Module):
    """Stride-2 unit: two branches (depthwise-first and pointwise-first), concatenated."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            *_conv_bn(in_channels, in_channels, 3, 2, groups=in_channels),
            *_conv_bn_relu(in_channels, mid, 1),
        )
        self.right = nn.Sequential(
            *_conv_bn_relu(in_channels, mid, 1),
            *_conv_bn(mid, mid, 3, 2, groups=mid),
            *_conv_bn_relu(mid, mid, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


#: Output channels of the three stages and of the last 1×1 conv, and blocks per stage (CRD, ×0.5).
SHUFFLENETV2_HALF = ((48, 96, 192, 1024), (3, 7, 3))


class ShuffleNetV2(PooledClassifier):
    """CIFAR ShuffleNetV2 (CRD): 1×1 stem (24), down-sampling block + blocks per stage, 1×1 conv."""

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize) -> None:
        super().__init__()
        widths, blocks = SHUFFLENETV2_HALF
        layers: list[nn.Module] = [*_conv_bn_relu(channels, 24, 1)]
        in_channels = 24
        for out_channels, n in zip(widths[:3], blocks):
            layers.append(ShuffleDownBlock(in_channels, out_channels))
            layers += [ShuffleBlock(out_channels) for _ in range(n)]
            in_channels = out_channels
        layers += _conv_bn_relu(in_channels, widths[3], 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], num_classes)


@MODELS.register("shufflenetv2-0.5")
def shufflenetv2_half(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """CIFAR ShuffleNetV2 ×0.5 (CRD ``ShuffleV2`` with net_size 0.5, EDC's "ShuffleNetV2_0_5")."""
    return ShuffleNetV2(channels, num_classes, image_size)


# ------------------------------------------------------------------------------------------------
# A tiny ResNet for CPU observers


class TinyResNet(PooledClassifier):
    """CIFAR ResNet with one batch-norm basic block per stage of 16/32/64 channels (ResNet-8)."""

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn_relu(channels, 16, 3)]
        in_channels = 16
        for out_channels, stride in ((16, 1), (32, 2), (64, 2)):
            layers.append(BasicBlock(in_channels, out_channels, stride, "batch"))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)


@MODELS.register("resnet8-bn")
def resnet8_bn(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """A tiny CIFAR ResNet-8 with BatchNorm2d (16/32/64 channels), for CPU observers."""
    return TinyResNet(channels, num_classes, image_size)
