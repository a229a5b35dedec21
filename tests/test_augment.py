"""DSA (spec dm_idm_bacon.md §1.3): each family by hand, the three modes, RNG hygiene."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from dcbench.augment import DSA, DSADraw, DSAParams, crop, cutout, rotate, scale
from dcbench.errors import DcbenchError


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _forced(dsa: DSA, draw: DSADraw, family: str, **values: object) -> DSADraw:
    """``draw`` with every group set to ``family`` and the given parameters (scalars broadcast)."""
    g = draw.num_groups
    changes = {
        key: torch.full((g,), value, dtype=getattr(draw, key).dtype)
        for key, value in values.items()
    }
    return dataclasses.replace(draw, family=torch.full((g,), dsa.families.index(family)), **changes)


def _group(draw: DSADraw, g: int) -> DSADraw:
    """Group ``g`` of ``draw`` as a one-group draw."""
    sliced = {
        f.name: getattr(draw, f.name)[g : g + 1]
        for f in dataclasses.fields(draw)
        if isinstance(getattr(draw, f.name), torch.Tensor)
    }
    return dataclasses.replace(draw, **sliced)


def test_params_defaults_and_strategy() -> None:
    assert DSAParams() == DSAParams(
        flip=0.5, scale=1.2, rotate=15.0, crop=0.125, cutout=0.5,
        brightness=1.0, saturation=2.0, contrast=0.5,
    )  # fmt: skip
    assert DSA().families == ("color", "crop", "cutout", "flip", "scale", "rotate")
    assert DSA("color_crop").families == ("color", "crop")
    with pytest.raises(DcbenchError, match="did you mean 'rotate'"):
        DSA("color_rotat")
    x = torch.randn(2, 3, 8, 8)
    assert DSA("none")(x, _generator()) is x


def test_sampled_ranges() -> None:
    dsa = DSA()
    draw = dsa.sample(20_000, 32, 32, _generator(), one_family=False)
    assert set(draw.family.tolist()) == set(range(6))
    assert -0.5 <= draw.brightness.min() and draw.brightness.max() < 0.5
    assert 0.0 <= draw.saturation.min() and draw.saturation.max() < 2.0
    assert 0.5 <= draw.contrast.min() and draw.contrast.max() < 1.5
    for s in (draw.scale_x, draw.scale_y):
        assert 1 / 1.2 <= s.min() and s.max() < 1.2
    assert -math.radians(15) <= draw.angle.min() and draw.angle.max() < math.radians(15)
    assert abs(draw.flip.float().mean() - 0.5) < 0.02
    assert not torch.equal(draw.scale_x, draw.scale_y)  # drawn independently


@pytest.mark.parametrize(("size", "radius"), [(8, 1), (28, 4), (32, 4), (64, 8)])
def test_crop_shift_range(size: int, radius: int) -> None:
    draw = DSA().sample(5000, size, size, _generator(), one_family=True)
    for shift in (draw.shift_h, draw.shift_w):
        assert set(shift.tolist()) == set(range(-radius, radius + 1))


def test_crop_known_shift() -> None:
    x = torch.arange(1.0, 1 + 2 * 5 * 6).view(1, 2, 5, 6)
    out = crop(x, torch.tensor([1]), torch.tensor([-2]))
    expected = torch.zeros_like(x)
    for i in range(5):
        for j in range(6):
            if 0 <= i + 1 < 5 and 0 <= j - 2 < 6:
                expected[0, :, i, j] = x[0, :, i + 1, j - 2]
    torch.testing.assert_close(out, expected)
    # shifts beyond the image give an empty image; zero shift is the identity
    assert crop(x, torch.tensor([5]), torch.tensor([0])).abs().sum() == 0
    torch.testing.assert_close(crop(x, torch.tensor([0]), torch.tensor([0])), x)


@pytest.mark.parametrize(("size", "side"), [(8, 4), (28, 14), (32, 16)])
def test_cutout_region(size: int, side: int) -> None:
    dsa = DSA()
    draw = dsa.sample(4000, size, size, _generator(), one_family=True)
    # centres uniform in [0, H + (1 − k mod 2)): 0..H inclusive for even k
    assert set(draw.cutout_h.tolist()) == set(range(size + 1))
    x = torch.ones(1, 1, size, size)
    base = dsa.sample(1, size, size, _generator(), one_family=True)
    for c_h, c_w in [(0, 0), (size // 2, 3), (size, size - 1)]:
        forced = _forced(dsa, base, "cutout", cutout_h=c_h, cutout_w=c_w)
        out = dsa.apply(x, forced)
        rows = [i for i in range(size) if c_h - side // 2 <= i < c_h - side // 2 + side]
        cols = [j for j in range(size) if c_w - side // 2 <= j < c_w - side // 2 + side]
        expected = torch.ones(size, size)
        expected[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = 0
        torch.testing.assert_close(out[0, 0], expected)
    # the centred square has exactly side × side zeros
    centred = cutout(x, torch.tensor([size // 2]), torch.tensor([size // 2]), side, side)
    assert int((centred == 0).sum()) == side * side


def test_cutout_odd_side_centres() -> None:
    draw = DSA(params=DSAParams(cutout=0.5)).sample(3000, 10, 10, _generator(), one_family=True)
    assert set(draw.cutout_h.tolist()) == set(range(10))  # k = 5 is odd: centres 0..H−1


def test_flip() -> None:
    dsa = DSA()
    x = torch.randn(3, 3, 4, 5)
    draw = dsa.sample(3, 4, 5, _generator(), one_family=True)
    flipped = dsa.apply(x, _forced(dsa, draw, "flip", flip=True))
    torch.testing.assert_close(flipped, x.flip(3))
    assert torch.equal(flipped[0, 0, 0], x[0, 0, 0].flip(0))
    torch.testing.assert_close(dsa.apply(x, _forced(dsa, draw, "flip", flip=False)), x)


def test_color_by_hand() -> None:
    dsa = DSA()
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]])  # 1 image, 2 channels, 1×2
    draw = dsa.sample(1, 1, 2, _generator(), one_family=True)
    forced = _forced(dsa, draw, "color", brightness=0.5, saturation=0.5, contrast=2.0)
    # brightness +0.5 → [1.5, 3.5], [5.5, 7.5]; saturation ×0.5 around per-pixel channel means
    # (3.5, 5.5) → [2.5, 4.5], [4.5, 6.5]; contrast ×2 around the image mean 4.5
    expected = torch.tensor([[[[0.5, 4.5]], [[4.5, 8.5]]]])
    torch.testing.assert_close(dsa.apply(x, forced), expected)


def test_saturation_is_skipped_for_grey() -> None:
    dsa = DSA()
    x = torch.tensor([[[[1.0, 3.0]]]])
    draw = dsa.sample(1, 1, 2, _generator(), one_family=True)
    forced = _forced(dsa, draw, "color", brightness=0.0, saturation=0.0, contrast=1.0)
    torch.testing.assert_close(dsa.apply(x, forced), x)


def test_scale_and_rotate_by_hand() -> None:
    x = torch.randn(2, 3, 8, 8)
    one = torch.ones(2)
    torch.testing.assert_close(scale(x, one, one), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate(x, torch.zeros(2)), x, atol=1e-5, rtol=0)
    # a quarter turn maps pixel centres onto pixel centres (align_corners=False)
    torch.testing.assert_close(
        rotate(x, torch.full((2,), math.pi / 2)), torch.rot90(x, 1, (2, 3)), atol=1e-5, rtol=0
    )
    # s_x = 2, W = 4: output pixel centres (normalised ±0.25, ±0.75) read input pixel positions
    # −1.5, 0.5, 2.5, 4.5 → [0, (a+b)/2, (c+d)/2, 0] with zero padding
    row = torch.tensor([[[[1.0, 3.0, 5.0, 9.0]]]])
    out = scale(row, torch.tensor([2.0]), torch.tensor([1.0]))
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 2.0, 7.0, 0.0]]]]))


def test_training_mode_one_family_independent_parameters() -> None:
    dsa = DSA()
    draw = dsa.sample(16, 32, 32, _generator(), one_family=True)
    assert len(set(draw.family.tolist())) == 1
    assert len(set(draw.brightness.tolist())) == 16
    x = torch.randn(1, 3, 32, 32).expand(16, -1, -1, -1)
    for seed in range(6):
        out = dsa(x, _generator(seed))
        assert not all(torch.equal(out[0], out[i]) for i in range(1, 16))


def test_siamese_shares_the_transformation() -> None:
    dsa = DSA()
    image = torch.randn(1, 3, 32, 32)
    families = set()
    for seed in range(40):
        real = torch.cat([image, torch.randn(4, 3, 32, 32)])
        syn = torch.cat([torch.randn(2, 3, 32, 32), image])
        real_out, syn_out = dsa.siamese(real, syn, _generator(seed))
        torch.testing.assert_close(real_out[0], syn_out[2], rtol=0, atol=0)
        same = torch.cat([image] * 3)
        a, b = dsa.siamese(same, same, _generator(seed))
        assert all(torch.equal(a[0], a[i]) for i in range(3)) and torch.equal(a, b)
        families.add(dsa.sample(1, 32, 32, _generator(seed), one_family=True).family.item())
    assert families == set(range(6))  # the loop exercised every family


def test_siamese_by_group() -> None:
    dsa = DSA()
    num_classes, per_class_real, per_class_syn = 6, 3, 2
    real = torch.randn(num_classes * per_class_real, 3, 16, 16)
    real_groups = torch.arange(num_classes).repeat_interleave(per_class_real)
    # synthetic image 0 of class c is a copy of real image 0 of class c
    syn = torch.randn(num_classes * per_class_syn, 3, 16, 16)
    syn[::per_class_syn] = real[::per_class_real]
    syn_groups = torch.arange(num_classes).repeat_interleave(per_class_syn)
    saw_mixed = False
    for seed in range(10):
        real_out, syn_out = dsa.siamese_by_group(
            real, real_groups, syn, syn_groups, num_classes, _generator(seed)
        )
        torch.testing.assert_close(real_out[::per_class_real], syn_out[::per_class_syn])
        draw = dsa.sample(num_classes, 16, 16, _generator(seed), one_family=False)
        saw_mixed |= len(set(draw.family.tolist())) > 1
        # the vectorised pass equals applying each class's draw to that class alone
        for c in range(num_classes):
            alone = dsa.apply(
                real[real_groups == c], _group(draw, c), torch.zeros(3, dtype=torch.long)
            )
            torch.testing.assert_close(real_out[real_groups == c], alone)
    assert saw_mixed  # different classes get different families


def test_determinism_and_rng_hygiene() -> None:
    dsa = DSA()
    x = torch.randn(8, 3, 32, 32)
    state = torch.get_rng_state()
    for seed in range(8):
        torch.testing.assert_close(dsa(x, _generator(seed)), dsa(x, _generator(seed)))
        dsa.siamese(x, x, _generator(seed))
        dsa.siamese_by_group(x, torch.arange(8) % 4, x, torch.arange(8) % 4, 4, _generator(seed))
    assert torch.equal(torch.get_rng_state(), state)
    outputs = [dsa(x, _generator(seed)) for seed in range(4)]
    assert not all(torch.equal(outputs[0], o) for o in outputs[1:])


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_gradient_flows(family: str) -> None:
    dsa = DSA()
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    draw = _forced(dsa, dsa.sample(4, 16, 16, _generator(), one_family=True), family)
    dsa.apply(x, draw).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_apply_checks_shapes() -> None:
    dsa = DSA()
    draw = dsa.sample(2, 8, 8, _generator(), one_family=True)
    with pytest.raises(ValueError, match="groups"):
        dsa.apply(torch.zeros(3, 1, 8, 8), draw)
    with pytest.raises(ValueError, match="8×8"):
        dsa.apply(torch.zeros(2, 1, 9, 9), draw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda() -> None:
    dsa = DSA()
    x = torch.randn(8, 3, 32, 32, device="cuda", requires_grad=True)
    groups = torch.arange(8, device="cuda") % 4
    cuda_generator = torch.Generator("cuda").manual_seed(0)
    for generator in (cuda_generator, _generator()):
        out = dsa(x, generator)
        a, b = dsa.siamese_by_group(x, groups, x, groups, 4, generator)
        assert out.device == a.device == x.device
        torch.testing.assert_close(a, b)
        (out.sum() + a.sum()).backward()
