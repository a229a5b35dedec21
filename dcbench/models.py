"""Networks of the dataset-distillation literature and the model registry.

Every network is a :class:`Classifier`: ``embed(x)`` returns the flattened input of the final
linear layer, ``classify(z)`` is that layer, and ``forward(x) == classify(embed(x))``.
Distribution-matching methods match ``embed`` outputs.

The definitions follow the DC reference code (specs mtt_and_benchmarks.md §4, dm_idm_bacon.md
§1.2) with PyTorch default initialisation. Departures that only matter for inputs the reference
does not handle (8×8, 64×64) are listed in each class docstring. Models with instance norm
(GroupNorm(C, C)) or no norm hold no buffers and use no in-place operations, so several copies can
be trained at once with ``torch.func.stack_module_state`` and
``vmap(grad(functional_call(...)))``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcbench.errors import DcbenchError
from dcbench.registry import Registry

ImageSize = tuple[int, int]
NORMS = ("instance", "batch", "layer", "group", "none")
POOLINGS = ("avg", "max", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid", "swish")


class Classifier(nn.Module):
    """A network split into features (``embed``) and a final linear layer (``classify``)."""

    classifier: nn.Linear

    @property
    def embed_dim(self) -> int:
        """Dimension of ``embed(x)`` (the input size of the final linear layer)."""
        return self.classifier.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features N×embed_dim: the input of the final linear layer."""
        raise NotImplementedError

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits N×num_classes from embeddings N×embed_dim."""
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


ModelFactory = Callable[..., Classifier]
MODELS: Registry[ModelFactory] = Registry("model")


def build_model(
    name: str, channels: int, num_classes: int, image_size: tuple[int, int], **overrides
) -> Classifier:
    """A freshly initialised model ``name`` for C×H×W inputs; ``overrides`` are its keyword options.

    Unknown model names and unknown options are :class:`DcbenchError`\\ s naming the valid choices.
    """
    factory = MODELS.get(name)
    options = [
        p.name
        for p in list(inspect.signature(factory).parameters.values())[3:]
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(overrides) - set(options))
    if unknown:
        valid = ", ".join(options) or "none"
        raise DcbenchError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
            f"valid options: {valid}"
        )
    height, width = image_size
    return factory(channels, num_classes, (int(height), int(width)), **overrides)


# ------------------------------------------------------------------------------------------------
# Building blocks


def _norm(kind: str, channels: int, spatial: ImageSize | None = None) -> nn.Module:
    """Norm layer for C-channel maps of size ``spatial`` (DC ``_get_normlayer``)."""
    if kind == "instance":  # DC's "instancenorm": per-sample per-channel, no running stats
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        if spatial is None:
            raise DcbenchError("layer norm needs the feature-map size")
        return nn.LayerNorm([channels, *spatial], elementwise_affine=True)
    if kind == "group":
        return nn.GroupNorm(4, channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise DcbenchError(f"unknown norm {kind!r}; valid choices: {', '.join(NORMS)}")


def _activation(kind: str) -> nn.Module:
    # In place: the activation follows a norm or a convolution, whose backward passes need their
    # input, not their output, so no saved tensor is overwritten (autograd would raise if one were).
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01, inplace=True)
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "swish":
        return nn.SiLU(inplace=False)
    raise DcbenchError(f"unknown activation {kind!r}; valid choices: {', '.join(ACTIVATIONS)}")


def _sum_2x2(x: torch.Tensor) -> torch.Tensor:
    """Sums of the 2×2 windows of an even-sized contiguous NCHW map: two strided adds."""
    n, c, h, w = x.shape
    rows = x.view(n, c, h // 2, 2 * w)
    rows = rows[..., :w] + rows[..., w:]  # row 2i + row 2i+1
    cols = rows.view(n, c, h // 2, w // 2, 2)
    return cols[..., 0] + cols[..., 1]


class _Pool2x2(torch.autograd.Function):
    """y = ¼ Σ over each 2×2 window. Its adjoint is :class:`_Spread2x2` and vice versa, so both
    are differentiable to any order (MTT's double backward runs through the pool's backward)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _sum_2x2(x).mul_(0.25)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _Spread2x2.apply(grad)


class _Spread2x2(torch.autograd.Function):
    """¼ g copied to every pixel of its 2×2 window: the adjoint of :class:`_Pool2x2`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g: torch.Tensor) -> torch.Tensor:
        n, c, h, w = g.shape
        # Columns doubled (and scaled) in one pass, then each doubled row written twice: ATen's
        # 6-d broadcast copy measured ~2× slower on ConvNet maps.
        rows = (g.unsqueeze(-1).expand(n, c, h, w, 2) * 0.25).view(n, c, h, 2 * w)
        return torch.cat([rows, rows], dim=3).view(n, c, 2 * h, 2 * w)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _Pool2x2.apply(grad)


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, 2)`` (equal up to float rounding), faster on the CPU.

    ATen's CPU average pool for NCHW walks every output pixel's window separately; summing the
    row pairs and then the column pairs as two strided adds over the whole map measures ~7× faster
    forward on ConvNet maps (benchmarks/results/distill.md). With autograd the pool and its
    backward (a copy of ¼ g into each window) are a pair of autograd functions, each the other's
    adjoint, so gradients of any order (MTT's double backward) stay on the fast kernels. Odd
    sizes, other layouts and non-CPU devices use ``F.avg_pool2d``.
    """
    n, c, h, w = x.shape
    if x.device.type != "cpu" or h % 2 or w % 2 or not x.is_contiguous():
        return F.avg_pool2d(x, 2, 2)
    if x.requires_grad and torch.is_grad_enabled():
        return _Pool2x2.apply(x)
    return _sum_2x2(x) * 0.25


class AvgPool2x2(nn.Module):
    """2×2 average pooling with stride 2 (:func:`avg_pool_2x2`); no parameters or buffers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)


def _conv_out(size: int, kernel: int, padding: int, stride: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _can_pool(height: int, width: int) -> bool:
    """Whether a 2×2 stride-2 pool leaves a non-empty map (small-input adaptation)."""
    return height >= 2 and width >= 2


def default_convnet_depth(image_size: ImageSize) -> int:
    """ConvNet depth for a resolution: 3 up to 32 px, then one more per doubling (64 → 4, 128 → 5).

    This is the literature's rule of ending with a 4×4 map (ConvNetD4 for Tiny ImageNet, spec
    mtt_and_benchmarks.md §4.1); sizes between powers of two round up.
    """
    size = max(image_size)
    if size <= 32:
        return 3
    return max(3, math.ceil(math.log2(size / 4)))


# ------------------------------------------------------------------------------------------------
# ConvNet


class ConvNet(Classifier):
    """DC's ConvNet: ``depth`` × [conv 3×3 → norm → activation → pool], flatten, linear.

    ``norm`` is one of instance (GroupNorm(C, C), the default), batch, layer (LayerNorm over
    C×H×W), group (GroupNorm(4, C)) or none; ``pooling`` avg, max or none; ``activation`` relu,
    leakyrelu, sigmoid or swish. ``depth=None`` picks :func:`default_convnet_depth`. The first conv
    has padding 3 for 1-channel inputs (reference quirk, so 28 px grey gives 32×32 maps, spec
    dm_idm_bacon.md §1.2).

    Small-input adaptations: feature-map sizes (classifier input, LayerNorm shapes) are computed
    from the actual shapes, so 1-channel inputs other than 28 px work (8 px grey: 12 → 6 → 3 → 1);
    a pool that would act on a map smaller than 2×2 is left out.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        image_size: ImageSize,
        width: int = 128,
        depth: int | None = None,
        norm: str = "instance",
        pooling: str = "avg",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise DcbenchError(f"unknown pooling {pooling!r}; valid choices: {', '.join(POOLINGS)}")
        depth = default_convnet_depth(image_size) if depth is None else depth
        height, width_px = image_size
        layers: list[nn.Module] = []
        in_channels = channels
        for d in range(depth):
            padding = 3 if channels == 1 and d == 0 else 1  # DC quirk, spec §1.2
            layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=padding))
            height, width_px = _conv_out(height, 3, padding), _conv_out(width_px, 3, padding)
            if norm != "none":
                layers.append(_norm(norm, width, (height, width_px)))
            layers.append(_activation(activation))
            if pooling != "none" and _can_pool(height, width_px):
                layers.append(AvgPool2x2() if pooling == "avg" else nn.MaxPool2d(2, 2))
                height, width_px = height // 2, width_px // 2
            in_channels = width
        self.depth = depth
        self.features = nn.Sequential(*layers)
        self.feature_shape = (width, height, width_px)
        self.classifier = nn.Linear(width * height * width_px, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


def _convnet_factory(norm: str, description: str) -> ModelFactory:
    def build(
        channels: int,
        num_classes: int,
        image_size: ImageSize,
        *,
        width: int = 128,
        depth: int | None = None,
        pooling: str = "avg",
        activation: str = "relu",
    ) -> Classifier:
        return ConvNet(channels, num_classes, image_size, width, depth, norm, pooling, activation)

    build.__doc__ = f"ConvNet with {description} (width 128, depth 3 at ≤32 px, +1 per doubling)."
    return build


MODELS.add("convnet", _convnet_factory("instance", "instance norm, DC's default"))
MODELS.add("convnet-bn", _convnet_factory("batch", "BatchNorm2d"))
MODELS.add("convnet-ln", _convnet_factory("layer", "LayerNorm over C×H×W"))
MODELS.add("convnet-nn", _convnet_factory("none", "no normalisation"))


# ------------------------------------------------------------------------------------------------
# ResNet-18


class BasicBlock(nn.Module):
    """ResNet basic block: conv 3×3 → norm → ReLU → conv 3×3 → norm, plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                _norm(norm, planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))  # out-of-place (the reference uses +=)


class ResNet18(Classifier):
    """DC's CIFAR-style ResNet-18: 3×3 stride-1 stem, no max-pool, stages 64/128/256/512.

    ``norm`` is instance (GroupNorm(C, C), DC's default for "ResNet18") or batch.

    Small-input adaptation: the reference's ``avg_pool2d(4)`` (which assumes a 4×4 final map, i.e.
    28–32 px inputs) is replaced by adaptive average pooling to 1×1 — identical at 28 and 32 px, and
    it gives a 512-d embedding at 8 px and 64 px where the reference fails.
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: ImageSize, norm: str = "instance"
    ) -> None:
        super().__init__()
        if norm not in ("instance", "batch"):
            raise DcbenchError(f"unknown ResNet norm {norm!r}; valid choices: instance, batch")
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        self.norm1 = _norm(norm, 64)
        self.relu = nn.ReLU(inplace=False)
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(
                    BasicBlock(in_planes, planes, stride, norm),
                    BasicBlock(planes, planes, 1, norm),
                )
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.pool(out).flatten(1)


@MODELS.register("resnet18")
def resnet18(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """ResNet-18 with instance norm (DC/MTT cross-architecture "ResNet18")."""
    return ResNet18(channels, num_classes, image_size, norm="instance")


@MODELS.register("resnet18-bn")
def resnet18_bn(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """ResNet-18 with BatchNorm2d."""
    return ResNet18(channels, num_classes, image_size, norm="batch")


# ------------------------------------------------------------------------------------------------
# VGG-11

# fmt: off
VGG11_CONFIG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M",
                                       512, 512, "M")
# fmt: on


class VGG11(Classifier):
    """DC's VGG-11: conv 3×3 → norm → ReLU blocks with 2×2 max-pools, then a single linear layer.

    ``norm`` is instance (GroupNorm(C, C), DC's "VGG11") or batch. The first conv has padding 3
    for 1-channel inputs (reference quirk). The reference's trailing ``AvgPool2d(1)`` is the
    identity and is left out. No dropout, no 4096-wide head.

    Small-input adaptations: max-pools that would act on a map smaller than 2×2 are left out (8 px
    inputs reach 1×1 after three pools), and the classifier input is computed from the final map
    (512 at 8–32 px, 512·2·2 = 2048 at 64 px, where the reference fails).
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: ImageSize, norm: str = "instance"
    ) -> None:
        super().__init__()
        if norm not in ("instance", "batch"):
            raise DcbenchError(f"unknown VGG norm {norm!r}; valid choices: instance, batch")
        height, width = image_size
        layers: list[nn.Module] = []
        in_channels = channels
        for i, item in enumerate(VGG11_CONFIG):
            if item == "M":
                if _can_pool(height, width):
                    layers.append(nn.MaxPool2d(2, 2))
                    height, width = height // 2, width // 2
                continue
            out_channels = int(item)
            padding = 3 if channels == 1 and i == 0 else 1  # DC quirk for 28 px grey inputs
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, padding=padding),
                _norm(norm, out_channels),
                nn.ReLU(inplace=False),
            ]
            height, width = _conv_out(height, 3, padding), _conv_out(width, 3, padding)
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.feature_shape = (in_channels, height, width)
        self.classifier = nn.Linear(in_channels * height * width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


@MODELS.register("vgg11")
def vgg11(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """VGG-11 with instance norm (DC's "VGG11")."""
    return VGG11(channels, num_classes, image_size, norm="instance")


@MODELS.register("vgg11-bn")
def vgg11_bn(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """VGG-11 with BatchNorm2d."""
    return VGG11(channels, num_classes, image_size, norm="batch")


# ------------------------------------------------------------------------------------------------
# AlexNet and MLP


class AlexNet(Classifier):
    """DC's AlexNet: five convs (128, 192, 256, 192, 192 channels), three max-pools, no norm.

    The first conv (5×5) has padding 4 for 1-channel inputs, 2 otherwise (reference quirk, so 28 px
    grey gives 32×32 maps).

    Small-input adaptations: the classifier input is computed from the final map (192·4·4 = 3072 at
    28–32 px as in the reference, 192 at 8 px, 192·8·8 at 64 px), and a max-pool that would act on a
    map smaller than 2×2 is left out.
    """

    def __init__(self, channels: int, num_classes: int, image_size: ImageSize) -> None:
        super().__init__()
        height, width = image_size
        layers: list[nn.Module] = []
        in_channels = channels
        first_padding = 4 if channels == 1 else 2
        spec = (  # (out channels, kernel, padding, pool after)
            (128, 5, first_padding, True),
            (192, 5, 2, True),
            (256, 3, 1, False),
            (192, 3, 1, False),
            (192, 3, 1, True),
        )
        for out_channels, kernel, padding, pool in spec:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel, padding=padding),
                nn.ReLU(inplace=False),
            ]
            height, width = _conv_out(height, kernel, padding), _conv_out(width, kernel, padding)
            if pool and _can_pool(height, width):
                layers.append(nn.MaxPool2d(2, 2))
                height, width = height // 2, width // 2
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.feature_shape = (in_channels, height, width)
        self.classifier = nn.Linear(in_channels * height * width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


@MODELS.register("alexnet")
def alexnet(channels: int, num_classes: int, image_size: ImageSize) -> Classifier:
    """DC's AlexNet (no norm)."""
    return AlexNet(channels, num_classes, image_size)


class MLP(Classifier):
    """Two hidden ReLU layers of ``width`` units on the flattened image (DC's MLP).

    The input size is C·H·W of the actual images (the reference hard-codes 784 or 3072).
    """

    def __init__(
        self, channels: int, num_classes: int, image_size: ImageSize, width: int = 128
    ) -> None:
        super().__init__()
        height, width_px = image_size
        self.hidden = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(channels * height * width_px, width),
            nn.ReLU(inplace=False),
            nn.Linear(width, width),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(width, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(x)


@MODELS.register("mlp")
def mlp(channels: int, num_classes: int, image_size: ImageSize, *, width: int = 128) -> Classifier:
    """MLP C·H·W → 128 → 128 → classes."""
    return MLP(channels, num_classes, image_size, width)


from dcbench import backbones  # noqa: E402,F401  (registers the extra architectures)
