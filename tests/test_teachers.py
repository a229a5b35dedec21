"""Teacher/observer sets: names, augmentation, training, caching, the ensemble logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dcbench.teachers as teachers_module
from dcbench.cache import ArtifactCache
from dcbench.data import DatasetInfo
from dcbench.errors import DcbenchError
from dcbench.models import build_model
from dcbench.protocol import PRESETS, Preset
from dcbench.teachers import (
    TEACHER_SETS,
    TEACHERS,
    crop_padding,
    default_teacher_names,
    load_teachers,
    recalibrate_batch_norm,
    squeeze_augment,
    squeeze_epochs,
    teacher_entry,
)

SMOKE = PRESETS.get("smoke")
CPU = torch.device("cpu")
PAIR = ("convnetbn-d1-w64", "resnet8-bn")


def _info(name: str, channels: int, size: int) -> DatasetInfo:
    return DatasetInfo(name, 10, channels, size, size, (0.5,) * channels, (0.5,) * channels,
                       tuple(map(str, range(10))))  # fmt: skip


def test_bad_name_is_a_one_line_error_listing_valid_names() -> None:
    with pytest.raises(DcbenchError) as err:
        teacher_entry("resnet-18")
    message = str(err.value)
    assert "\n" not in message and "resnet8-bn" in message and "convnet-w32" in message


def test_every_set_name_is_a_teacher() -> None:
    assert len(TEACHER_SETS["cifar"]) == 8 and TEACHER_SETS["cifar"][0] == "resnet18"
    for names in TEACHER_SETS.values():
        assert set(names) <= set(TEACHERS)


@pytest.mark.parametrize("shape", [(1, 8), (1, 28), (3, 32)])
def test_every_teacher_builds_at_small_sizes(shape: tuple[int, int]) -> None:
    channels, size = shape
    for model, options in TEACHERS.values():
        net = build_model(model, channels, 10, (size, size), **options)
        assert net(torch.zeros(2, channels, size, size)).shape == (2, 10)


def test_default_names_and_epochs() -> None:
    paper, fast = PRESETS.get("paper"), PRESETS.get("fast")
    assert default_teacher_names(_info("cifar10", 3, 32), paper) == TEACHER_SETS["cifar"]
    assert default_teacher_names(_info("cifar10", 3, 32), fast) == TEACHER_SETS["small"]
    assert default_teacher_names(_info("digits", 1, 8), paper) == TEACHER_SETS["small"]
    assert squeeze_epochs("cifar10", paper) == 10 and squeeze_epochs("cifar100", paper) == 50
    assert squeeze_epochs("digits", fast) == 10 and squeeze_epochs("fashionmnist", fast) == 1
    custom = Preset("quick", "t", 4, 1, 2, iteration_fraction=0.0, min_iterations=2)
    assert squeeze_epochs("digits", custom) == 1


def test_crop_padding_scales_with_size() -> None:
    assert (crop_padding(32), crop_padding(8), crop_padding(28), crop_padding(64)) == (4, 1, 4, 8)


def test_squeeze_augment_is_a_shifted_crop_and_seeded() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    a = squeeze_augment(x, torch.Generator().manual_seed(1), padding=1, flip=True)
    b = squeeze_augment(x, torch.Generator().manual_seed(1), padding=1, flip=True)
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    same = squeeze_augment(x, torch.Generator().manual_seed(1), padding=0, flip=False)
    assert torch.equal(same, x)
    # every output row is a row of the zero-padded input (shifted by at most one pixel)
    padded = torch.nn.functional.pad(x.float(), (1, 1, 1, 1))
    unfolded = padded.unfold(2, 8, 1).unfold(3, 8, 1)  # 2×3×3×3×8×8 crops
    c = squeeze_augment(x, torch.Generator().manual_seed(2), padding=1, flip=False).float()
    for i in range(2):
        assert any(torch.equal(unfolded[i, :, r, s], c[i]) for r in range(3) for s in range(3))


def test_batch_norm_recalibration_is_the_exact_mean() -> None:
    net = nn.Sequential(nn.BatchNorm2d(2))
    batches = [(torch.randn(4, 2, 3, 3) + k,) for k in range(3)]
    recalibrate_batch_norm(net, batches)
    expected = torch.stack([b[0].mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    torch.testing.assert_close(net[0].running_mean, expected)
    assert not net.training and net[0].momentum == 0.1


def test_load_train_cache_and_logits(tiny, tmp_path, monkeypatch) -> None:
    calls: list[str] = []
    train = teachers_module.train_teacher

    def counting(data, name, **kwargs):
        calls.append(name)
        return train(data, name, **kwargs)

    monkeypatch.setattr(teachers_module, "train_teacher", counting)
    seen: list[tuple[int, int]] = []
    ts = load_teachers(tiny, PAIR[:1], budget=SMOKE, device=CPU, cache=ArtifactCache(tmp_path),
                       progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert calls == [PAIR[0]] and seen[-1] == (1, 1)
    # adding a teacher trains only that one; a new cache object on the same store reuses files
    ts = load_teachers(tiny, PAIR, budget=SMOKE, device=CPU, cache=ArtifactCache(tmp_path))
    assert calls == list(PAIR)
    again = load_teachers(tiny, PAIR, budget=SMOKE, device=CPU, cache=ArtifactCache(tmp_path))
    assert calls == list(PAIR)
    assert again.spec == ts.spec and again.info == ts.info
    for info, name in zip(ts.info, PAIR):
        assert info["name"] == name and 0.0 <= info["test_accuracy"] <= 1.0
        assert info["epochs"] == 1 and info["train_seconds"] >= 0 and info["num_parameters"] > 0
    for model in ts.models:
        assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert ts.num_parameters == sum(i["num_parameters"] for i in ts.info)
    x, _ = tiny.test()
    expected = (ts.models[0](x) + ts.models[1](x)) / 2
    torch.testing.assert_close(ts.logits(x), expected)
    assert not ts.logits(x).requires_grad
    for a, b in zip(ts.models, again.models):
        for (k, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), k


def test_teachers_learn_and_are_deterministic(tiny) -> None:
    fast = PRESETS.get("fast")  # 10 epochs on the tiny fixture
    a = load_teachers(tiny, PAIR[:1], budget=fast, device=CPU, cache=None)
    b = load_teachers(tiny, PAIR[:1], budget=fast, device=CPU, cache=None)
    assert a.info[0]["test_accuracy"] > 0.5
    assert a.info[0]["test_accuracy"] == b.info[0]["test_accuracy"]
    assert all(
        torch.equal(p, q) for p, q in zip(a.models[0].parameters(), b.models[0].parameters())
    )


def test_empty_list_is_an_error(tiny) -> None:
    with pytest.raises(DcbenchError, match="valid names"):
        load_teachers(tiny, (), budget=SMOKE, device=CPU, cache=None)
