"""The extra backbones (EDC's observer zoo, small CPU networks): shapes, gradients, sizes."""

from __future__ import annotations

import pytest
import torch

from dcbench.backbones import channel_shuffle
from dcbench.models import MODELS, build_model

NEW = ["mobilenetv2-half", "wrn-16-2", "shufflenetv2-0.5", "resnet8-bn"]
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)]
EMBED_DIMS = {"mobilenetv2-half": 1280, "wrn-16-2": 128, "shufflenetv2-0.5": 1024, "resnet8-bn": 64}
# parameters at 3×32×32 with 10 classes (WRN-16-2 ≈ 0.69 M as in the CRD zoo)
PARAMETER_COUNTS = {
    "mobilenetv2-half": 697_546,
    "wrn-16-2": 691_674,
    "shufflenetv2-0.5": 351_466,
    "resnet8-bn": 78_042,
}


def test_registered() -> None:
    assert set(NEW) <= set(MODELS.names())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", NEW)
def test_forward_backward(name: str, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape[0], 10, shape[1:])
    x = torch.randn(2, *shape, requires_grad=True)
    model(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        z = model.embed(x)
        assert z.shape == (2, EMBED_DIMS[name]) and model.embed_dim == EMBED_DIMS[name]
        torch.testing.assert_close(model.classify(z), model(x))


@pytest.mark.parametrize("name", NEW)
def test_parameter_count(name: str) -> None:
    model = build_model(name, 3, 10, (32, 32))
    assert sum(p.numel() for p in model.parameters()) == PARAMETER_COUNTS[name]


def test_mobilenet_stem_has_stride_two() -> None:
    model = build_model("mobilenetv2-half", 3, 10, (32, 32))
    stem = model.features[0]
    assert stem.stride == (2, 2) and stem.out_channels == 16


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
