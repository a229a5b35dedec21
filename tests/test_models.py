"""Every registered model × input shape, parameter counts, DC quirks, torch.func support."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from dcbench.errors import DcbenchError
from dcbench.models import MODELS, ConvNet, avg_pool_2x2, build_model, default_convnet_depth

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)]

# embedding dimension per model family and input shape (the classifier's input size)
EMBED_DIMS = {
    "convnet": {8: 128, 28: 2048, 32: 2048, 64: 2048},  # 8 px grey: 12 → 6 → 3 → 1; 64 px: depth 4
    "resnet18": {8: 512, 28: 512, 32: 512, 64: 512},
    "vgg11": {8: 512, 28: 512, 32: 512, 64: 2048},
    "alexnet": {8: 192, 28: 3072, 32: 3072, 64: 12288},
    "mlp": {8: 128, 28: 128, 32: 128, 64: 128},
    # dcbench/backbones.py (EDC's observers)
    "mobilenetv2": {8: 1280, 28: 1280, 32: 1280, 64: 1280},
    "wrn": {8: 128, 28: 128, 32: 128, 64: 128},
    "shufflenetv2": {8: 1024, 28: 1024, 32: 1024, 64: 1024},
    "resnet8": {8: 64, 28: 64, 32: 64, 64: 64},
}

# parameter counts at 3×32×32, 10 classes (spec mtt_and_benchmarks.md §4)
PARAMETER_COUNTS = {
    "convnet": 320_010,
    "convnet-bn": 320_010,
    "convnet-nn": 319_242,
    "resnet18": 11_173_962,
    "resnet18-bn": 11_173_962,
    "vgg11": 9_231_114,
    "vgg11-bn": 9_231_114,
    "alexnet": 1_872_202,
    "mlp": 411_146,
}

BUFFER_FREE = ["convnet", "convnet-ln", "convnet-nn", "resnet18", "vgg11", "alexnet", "mlp"]


def _family(name: str) -> str:
    return name.split("-")[0]


def test_registry_names() -> None:
    expected = {
        "convnet", "convnet-bn", "convnet-ln", "convnet-nn", "resnet18", "resnet18-bn",
        "vgg11", "vgg11-bn", "alexnet", "mlp",
    }  # fmt: skip
    assert expected <= set(MODELS.names())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    channels, height, width = shape
    model = build_model(name, channels, 10, (height, width))
    x = torch.randn(2, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 10)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())

    with torch.no_grad():
        z = model.embed(x)
        assert z.shape == (2, EMBED_DIMS[_family(name)][height])
        assert model.embed_dim == z.shape[1]
        torch.testing.assert_close(model.classify(z), model(x))


@pytest.mark.parametrize("name", list(PARAMETER_COUNTS))
def test_parameter_count(name: str) -> None:
    model = build_model(name, 3, 10, (32, 32))
    assert sum(p.numel() for p in model.parameters()) == PARAMETER_COUNTS[name]


def test_convnet_grey_28_behaves_like_32() -> None:
    model = build_model("convnet", 1, 10, (28, 28))
    first_conv = model.features[0]
    assert first_conv.padding == (3, 3)  # DC quirk, spec dm_idm_bacon.md §1.2
    assert first_conv(torch.zeros(1, 1, 28, 28)).shape == (1, 128, 32, 32)
    assert build_model("convnet", 3, 10, (32, 32)).features[0].padding == (1, 1)


def test_first_conv_padding_for_grey_inputs() -> None:
    assert build_model("alexnet", 1, 10, (28, 28)).features[0].padding == (4, 4)
    assert build_model("alexnet", 3, 10, (32, 32)).features[0].padding == (2, 2)
    assert build_model("vgg11", 1, 10, (28, 28)).features[0].padding == (3, 3)
    assert build_model("vgg11", 3, 10, (32, 32)).features[0].padding == (1, 1)


def test_convnet_depth_from_resolution() -> None:
    assert [default_convnet_depth((s, s)) for s in (8, 28, 32, 64, 128, 256)] == [3, 3, 3, 4, 5, 6]
    assert build_model("convnet", 3, 10, (64, 64)).depth == 4
    assert build_model("convnet", 3, 10, (128, 128)).embed_dim == 2048
    # DM's Tiny ImageNet setting (ConvNet-3 at 64 px) is an explicit override: 8192-d embedding
    assert build_model("convnet", 3, 200, (64, 64), depth=3).embed_dim == 8192


def test_convnet_norms() -> None:
    norms = {
        "convnet": nn.GroupNorm,
        "convnet-bn": nn.BatchNorm2d,
        "convnet-ln": nn.LayerNorm,
    }
    for name, norm_type in norms.items():
        model = build_model(name, 3, 10, (32, 32))
        found = [m for m in model.modules() if isinstance(m, norm_type)]
        assert len(found) == 3
    group_norm = build_model("convnet", 3, 10, (32, 32)).features[1]
    assert (group_norm.num_groups, group_norm.num_channels, group_norm.affine) == (128, 128, True)
    layer_norm = build_model("convnet-ln", 3, 10, (32, 32)).features[1]
    assert layer_norm.normalized_shape == (128, 32, 32) and layer_norm.elementwise_affine
    no_norm = build_model("convnet-nn", 3, 10, (32, 32))
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in no_norm.modules())


@pytest.mark.parametrize(
    "options",
    [
        {"norm": "group"},
        {"norm": "layer", "pooling": "max"},
        {"pooling": "none", "depth": 2},
        {"activation": "leakyrelu"},
        {"activation": "sigmoid", "norm": "batch"},
        {"activation": "swish"},
    ],
)
def test_convnet_class_options(options: dict) -> None:
    model = ConvNet(3, 5, (16, 16), width=16, **options)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize("name", BUFFER_FREE)
def test_buffer_free(name: str) -> None:
    """The evaluator's vmap ensemble needs models without buffers (batch statistics)."""
    assert not list(build_model(name, 3, 10, (32, 32)).buffers())


@pytest.mark.parametrize("name", ["convnet", "convnet-bn", "convnet-ln", "convnet-nn"])
def test_in_place_activation_changes_nothing(name: str) -> None:
    """The ConvNet's in-place ReLU gives the out-of-place outputs and gradients, also second
    order (MTT differentiates through student steps)."""
    torch.manual_seed(0)
    model = build_model(name, 3, 10, (16, 16), width=8)
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    assert any(getattr(m, "inplace", False) for m in model.modules())
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    results = []
    for net in (model, reference):
        loss = net(x).square().sum()
        params = list(net.parameters())
        grads = torch.autograd.grad(loss, [x, *params], create_graph=True)
        second = torch.autograd.grad(grads[1].square().sum(), x)
        results.append([t.detach() for t in (*grads, *second)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 4, 6, 10), (1, 2, 5, 7), (3, 2, 2, 2)])
def test_avg_pool_2x2_matches_aten(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = avg_pool_2x2(x)
    expected = F.avg_pool2d(x, 2, 2)
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(expected)
    (gx,) = torch.autograd.grad(y, x, g)
    (ex,) = torch.autograd.grad(expected, x, g)
    torch.testing.assert_close(gx, ex)
    with torch.no_grad():  # the strided-add path (gradient-free passes)
        torch.testing.assert_close(avg_pool_2x2(x), expected.detach())
        torch.testing.assert_close(avg_pool_2x2(x.float()), expected.detach().float())
    channels_last = x.detach().contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(avg_pool_2x2(channels_last), expected.detach())


def test_avg_pool_2x2_autograd_any_order() -> None:
    """The pool/spread pair: gradcheck, gradgradcheck and MTT-style double backward vs ATen."""
    x = torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(avg_pool_2x2, (x,))
    assert torch.autograd.gradgradcheck(avg_pool_2x2, (x,))
    v = torch.randn(2, 3, 3, 2, dtype=torch.float64)
    results = []
    for pool in (avg_pool_2x2, lambda t: F.avg_pool2d(t, 2, 2)):
        y = pool(x)
        (g,) = torch.autograd.grad((y * v).sum() + y.pow(3).sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        results.append((g.detach(), gg))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_build_model_errors() -> None:
    with pytest.raises(DcbenchError, match="did you mean 'resnet18'"):
        build_model("resnet-18", 3, 10, (32, 32))
    with pytest.raises(DcbenchError, match="unknown option"):
        build_model("resnet18", 3, 10, (32, 32), width=64)
    assert build_model("convnet", 3, 10, (32, 32), width=16).embed_dim == 16 * 4 * 4


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_vmap_over_stacked_copies(name: str) -> None:
    """The evaluator's pattern: several seeds run at once with ``torch.func``."""
    torch.manual_seed(0)
    copies = [build_model(name, 3, 10, (32, 32)) for _ in range(3)]
    x = torch.randn(2, 3, 32, 32)
    y = torch.tensor([1, 7])
    base = copy.deepcopy(copies[0]).to("meta")

    def forward(p: dict, b: dict, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (inputs,))

    def loss(p: dict, b: dict, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(forward(p, b, inputs), y)

    params, buffers = stack_module_state(copies)
    outputs = vmap(forward, in_dims=(0, 0, None))(params, buffers, x)
    with torch.no_grad():
        for i, model in enumerate(copies):
            torch.testing.assert_close(outputs[i], model(x), rtol=1e-4, atol=1e-5)

    # Gradients in float64: in float32 the batched and unbatched kernels round differently and a
    # deep net amplifies that to ~1e-3 relative, which would hide real mismatches.
    copies = [model.double() for model in copies]
    params, buffers = stack_module_state(copies)
    grads = vmap(grad(loss), in_dims=(0, 0, None))(params, buffers, x.double())
    for i, model in enumerate(copies):
        nn.functional.cross_entropy(model(x.double()), y).backward()
        for key, param in model.named_parameters():
            torch.testing.assert_close(grads[key][i], param.grad)
