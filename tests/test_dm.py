"""Distribution Matching (methods/dm.py) and the matching building blocks (dcbench/matching.py)."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from dcbench.augment import DSA
from dcbench.errors import DcbenchError
from dcbench.matching import (
    ClassBatchSampler,
    class_labels,
    class_means,
    embed,
    mean_matching_loss,
    random_network,
    siamese_augment,
)
from dcbench.method import METHODS
from dcbench.models import ConvNet
from dcbench.protocol import PRESETS
from methods.dm import DMConfig, dm_loss, dm_objective

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from threads, and OpenMP waits badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**changes) -> DMConfig:
    return dataclasses.replace(DMConfig(width=8, iterations=4), **changes)


def _distill(data, ipc=2, seed=0, **changes):
    method = METHODS.get("dm")()
    return method.distill(
        data, ipc, _config(**changes), seed=seed, device=CPU, budget=PRESETS.get("paper")
    )


# --------------------------------------------------------------------------------------------------
# The objective, by hand


def test_dm_loss_by_hand():
    # class 0: real rows (1, 2), (3, 4) → mean (2, 3); synthetic (0, 1) → gap (2, 2) → 8
    # class 1: real row (5, -1); synthetic rows (1, 1), (3, -1) → mean (2, 0) → gap (3, -1) → 10
    real = torch.tensor([[1.0, 2.0], [5.0, -1.0], [3.0, 4.0]])
    real_class = torch.tensor([0, 1, 0])
    syn = torch.tensor([[0.0, 1.0], [1.0, 1.0], [3.0, -1.0]])
    syn_class = torch.tensor([0, 1, 1])
    loss = dm_loss(real, real_class, syn, syn_class, 2)
    assert loss.item() == pytest.approx(18.0)
    # a sum over dimensions and classes, not a mean
    assert dm_loss(real[[0, 2]], real_class[[0, 2]], syn[:1], syn_class[:1], 2).item() == 8.0


def test_dm_loss_gradient_by_hand():
    """d/ds of ‖μ_r − mean(s)‖² for one class with two synthetic rows is −(μ_r − μ_s)."""
    real = torch.tensor([[2.0, 0.0]])
    syn = torch.tensor([[0.0, 0.0], [0.0, 2.0]], requires_grad=True)
    loss = dm_loss(real, torch.tensor([0]), syn, torch.tensor([0, 0]), 1)
    loss.backward()
    # μ_s = (0, 1), gap μ_r − μ_s = (2, −1); ∂/∂s_i = −2·gap/2
    assert torch.equal(syn.grad, torch.tensor([[-2.0, 1.0], [-2.0, 1.0]]))


def test_class_means_and_absent_classes():
    emb = torch.tensor([[1.0], [3.0], [10.0]])
    means, counts = class_means(emb, torch.tensor([2, 2, 0]), 3)
    assert torch.equal(means, torch.tensor([[10.0], [0.0], [2.0]]))
    assert counts.tolist() == [1, 0, 2]
    with pytest.raises(ValueError):
        mean_matching_loss(emb, torch.tensor([0, 0, 1]), emb[:1], torch.tensor([0]), 2)


# --------------------------------------------------------------------------------------------------
# Building blocks


def test_class_batch_sampler_draws_distinct_images_of_each_class(tiny):
    sampler = ClassBatchSampler(tiny, CPU)
    gen = torch.Generator().manual_seed(0)
    idx, classes = sampler.sample_indices(5, gen)
    assert classes.tolist() == class_labels(4, 5).tolist()
    assert torch.equal(tiny.train_labels[idx], classes)
    for c in range(4):
        assert idx[classes == c].unique().numel() == 5
    # capped by the class size: the whole class (48 images), each once
    idx, classes = sampler.sample_indices(1000, gen)
    assert idx.numel() == 4 * 48 and idx.unique().numel() == 4 * 48
    batch = sampler.sample(3, torch.Generator().manual_seed(1))
    again = sampler.sample(3, torch.Generator().manual_seed(1))
    assert torch.equal(batch.images, again.images)
    assert torch.equal(batch.images, tiny.normalize(tiny.train_images[batch.indices]))


@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_embedding_equals_one_pass(threads):
    """Chunks (and worker threads for the gradient-free pass) do not change the embeddings."""
    torch.set_num_threads(threads)
    net = random_network(partial(ConvNet, 1, 3, (12, 12), width=8), 0, CPU)
    x = torch.randn(37, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    whole = net.embed(x)
    for chunk in (1, 5, 37, None):
        free = embed(net, x, requires_grad=False, chunk_size=chunk)
        assert not free.requires_grad
        assert torch.allclose(free, whole, atol=1e-6)
    xg = x.clone().requires_grad_(True)
    (grad_whole,) = torch.autograd.grad(net.embed(xg).square().sum(), xg)
    (grad_chunks,) = torch.autograd.grad(embed(net, xg, chunk_size=4).square().sum(), xg)
    assert torch.allclose(grad_chunks, grad_whole, atol=1e-6)
    assert torch.get_num_threads() == threads


def test_siamese_augment_pairs_real_and_synthetic_images_of_a_class():
    """Real and synthetic images of one class get the same draw; classes get different draws."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 8, 8, generator=gen)  # one image per class
    classes = torch.arange(4)
    dsa = DSA()
    real_classes = classes.repeat_interleave(3)  # three copies of each class's image
    for seed in range(12):  # enough draws to meet every family
        g = torch.Generator().manual_seed(seed)
        real, syn = siamese_augment(dsa, images[real_classes], real_classes, images, classes, 4, g)
        assert torch.allclose(real, syn[real_classes], atol=1e-6)
    # identical inputs in different classes are (almost surely) transformed differently
    same = images[:1].expand(4, -1, -1, -1)
    g = torch.Generator().manual_seed(3)
    _, syn = siamese_augment(dsa, same, classes, same, classes, 4, g)
    assert not all(torch.allclose(syn[0], syn[c]) for c in range(1, 4))


def test_dm_objective_is_zero_when_real_batches_equal_the_synthetic_set(tiny):
    """With the siamese pairing, identical real and synthetic sets match under any DSA draw."""
    build = partial(ConvNet, 3, 4, (8, 8), width=8)
    net = random_network(build, 0, CPU)
    syn = tiny.normalize(tiny.train_images[[0, 1, 48, 49, 96, 97, 144, 145]])
    syn_class = class_labels(4, 2)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        loss = dm_objective(net, syn, syn_class, syn, syn_class, 4, DSA(), g)
        assert loss.item() < 1e-8
    # a real batch in a different order, of more images, is not matched exactly
    g = torch.Generator().manual_seed(0)
    other = tiny.normalize(tiny.train_images[[2, 3, 50, 51, 98, 99, 146, 147]])
    assert dm_objective(net, other, syn_class, syn, syn_class, 4, DSA(), g).item() > 1e-4


def test_dm_objective_equals_the_reference_per_class_loop(tiny):
    """One batched pass = main_DM.py's loop: per class, augment real and synthetic with that
    class's draw, embed each separately, add ‖mean real − mean syn‖² (spec §2.2)."""
    build = partial(ConvNet, 3, 4, (8, 8), width=8)
    net = random_network(build, 2, CPU)
    real = ClassBatchSampler(tiny, CPU).sample(7, torch.Generator().manual_seed(0))
    syn = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    syn_class = class_labels(4, 2)
    dsa = DSA()
    for seed in range(4):
        batched = dm_objective(
            net, real.images, real.classes, syn, syn_class, 4, dsa,
            torch.Generator().manual_seed(seed),
        )  # fmt: skip
        draw = dsa.sample(4, 8, 8, torch.Generator().manual_seed(seed), one_family=False)
        expected = torch.tensor(0.0)
        for c in range(4):
            r, s = real.images[real.classes == c], syn[syn_class == c]
            r = dsa.apply(r, draw, torch.full((r.shape[0],), c))
            s = dsa.apply(s, draw, torch.full((s.shape[0],), c))
            gap = net.embed(r).mean(0) - net.embed(s).mean(0)
            expected = expected + (gap**2).sum()
        assert batched.item() == pytest.approx(expected.item(), rel=1e-5)


def test_objective_decreases_on_a_fixed_network(tiny):
    build = partial(ConvNet, 3, 4, (8, 8), width=8)
    net = random_network(build, 1, CPU)
    sampler = ClassBatchSampler(tiny, CPU)
    real = sampler.sample(32, torch.Generator().manual_seed(0))
    syn = tiny.normalize(tiny.train_images[[0, 48, 96, 144]]).requires_grad_(True)
    syn_class = torch.arange(4)
    opt = torch.optim.SGD([syn], lr=DMConfig.lr_img, momentum=DMConfig.momentum)
    none = DSA("none")
    losses = []
    for _ in range(10):
        g = torch.Generator().manual_seed(0)
        loss = dm_objective(net, real.images, real.classes, syn, syn_class, 4, none, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.6 * losses[0]


# --------------------------------------------------------------------------------------------------
# The method


def test_dm_output_shapes_labels_and_real_initialisation(tiny):
    out = _distill(tiny, ipc=3, iterations=0)
    assert out.images.shape == (12, 3, 8, 8) and out.images.dtype == torch.float32
    assert out.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    idx = torch.tensor(out.meta["init_indices"])
    assert torch.equal(tiny.train_labels[idx], out.labels)  # class-major real initialisation
    assert all(idx[out.labels == c].unique().numel() == 3 for c in range(4))  # distinct per class
    assert torch.equal(out.images, tiny.normalize(tiny.train_images[idx]))
    out.validate(tiny.info)


def test_dm_is_deterministic_changes_the_images_and_leaves_the_global_rng_alone(tiny):
    state = torch.get_rng_state()
    a = _distill(tiny, seed=5)
    b = _distill(tiny, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.images, b.images) and a.meta == b.meta
    c = _distill(tiny, seed=6)
    assert not torch.equal(a.images, c.images)
    start = tiny.normalize(tiny.train_images[torch.tensor(a.meta["init_indices"])])
    assert not torch.allclose(a.images, start)  # the updates moved the images
    assert len(a.meta["loss_trace"]) == 4 and a.meta["iterations"] == 4


def test_dm_progress_is_called_every_iteration_and_the_preset_scales_iterations(tiny):
    calls = []
    method = METHODS.get("dm")()
    smoke = PRESETS.get("smoke")
    method.distill(
        tiny, 1, DMConfig(width=8), seed=0, device=CPU, budget=smoke,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    n = smoke.iterations(20000)
    assert calls == [(i + 1, n) for i in range(n)]


def test_dm_noise_init_and_config_errors(tiny):
    out = _distill(tiny, ipc=1, init="noise", iterations=1)
    assert out.meta["init_indices"] is None and out.images.shape == (4, 3, 8, 8)
    with pytest.raises(DcbenchError, match="init"):
        _distill(tiny, init="zeros")
    with pytest.raises(DcbenchError, match="exceeds"):
        _distill(tiny, ipc=49)


def test_dm_paper_settings_resolve():
    method = METHODS.get("dm")()
    assert method.resolve_config("cifar10", 10).lr_img == 1.0
    assert method.resolve_config("cifar10", 100).lr_img == 10.0
    assert method.resolve_config("tinyimagenet", 10).depth == 4
    assert method.resolve_config("cifar10", 100, {"lr_img": "3"}).lr_img == 3.0
    assert list(METHODS.names())[:5] == ["full", "random", "herding", "kcenter", "dm"]
