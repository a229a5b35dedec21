"""The training engines of the hard-label protocol and the hard evaluator."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from dcbench.augment import DSA
from dcbench.distilled import DistilledSet
from dcbench.errors import DivergenceError
from dcbench.models import ConvNet
from dcbench.training import TrainRecipe, _train_ensemble, _train_loop, init_model, train_and_test
from evaluators.hard import HardLabelEvaluator


def _small(info):
    return partial(ConvNet, info.channels, info.num_classes, (info.height, info.width), width=8)


def test_recipe_follows_reference_epoch_semantics():
    r = TrainRecipe(epochs=1000)
    assert r.num_passes == 1001 and r.lr_decay_pass == 501  # 502 passes at 0.01, 499 at 0.001
    assert TrainRecipe(epochs=300).lr_decay_pass == 151


def test_init_model_is_seeded_and_leaves_global_rng_alone(tiny):
    state = torch.get_rng_state()
    a, b = init_model(_small(tiny.info), 7), init_model(_small(tiny.info), 7)
    c = init_model(_small(tiny.info), 8)
    assert torch.equal(torch.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("augment", [None, DSA()])
def test_ensemble_matches_per_seed_loop(tiny, augment):
    """The vmapped ensemble is the loop's SGD (momentum, weight decay, lr drop, fresh optimiser)."""
    x, y = tiny.train()
    x, y = x[::6], y[::6]  # 32 images: two mini-batches of 16 per pass
    recipe = TrainRecipe(epochs=4, batch_size=16, lr=0.05)
    seeds = [3, 4]
    build = _small(tiny.info)

    def gens():
        return [torch.Generator().manual_seed(s) for s in seeds]

    loop_models = [init_model(build, s) for s in seeds]
    for m, g in zip(loop_models, gens()):
        _train_loop(m, x, y, g, recipe, augment, None)
    ens = _train_ensemble(
        [init_model(build, s) for s in seeds], x, y, gens(), recipe, augment, None
    )
    for i, m in enumerate(loop_models):
        for name, p in m.named_parameters():
            assert torch.allclose(ens[name][i], p.detach(), atol=2e-5, rtol=1e-4), name


def test_engines_give_the_same_accuracies(tiny):
    x, y = tiny.train()
    tx, ty = tiny.test()
    run = partial(
        train_and_test, _small(tiny.info), x[::4], y[::4], tx, ty, [1, 2], TrainRecipe(epochs=3),
        augment=DSA(), device=torch.device("cpu"),
    )  # fmt: skip
    assert run(ensemble=True) == run(ensemble=False)


def test_divergence_is_a_clear_error(tiny):
    x, y = tiny.train()
    tx, ty = tiny.test()
    with pytest.raises(DivergenceError, match="training diverged"):
        train_and_test(
            _small(tiny.info), x * 1e30, y, tx, ty, [0], TrainRecipe(epochs=1, lr=1e10),
            augment=None, device=torch.device("cpu"),
        )  # fmt: skip


def test_hard_evaluator_learns_and_is_deterministic(tiny, quick_preset):
    budget = dataclasses.replace(quick_preset, eval_epochs=20)
    x, y = tiny.train()
    idx = torch.cat([idx[:5] for idx in tiny.class_indices])
    distilled = DistilledSet(x[idx], y[idx])
    ev = HardLabelEvaluator()
    run = partial(
        ev.evaluate, distilled, tiny, "convnet", seeds=[11, 12], device=torch.device("cpu"),
        budget=budget,
    )  # fmt: skip
    first, second = run(), run()
    assert [m["accuracy"] for m in first] == [m["accuracy"] for m in second]
    assert all(m["accuracy"] > 0.5 for m in first)  # 4 classes: chance is 0.25
    assert first[0]["train_images"] == 20 and first[0]["epochs"] == 20


def test_hard_evaluator_applies_the_decoder_and_the_learned_lr(tiny, quick_preset):
    x, y = tiny.train()
    idx = torch.cat([idx[:2] for idx in tiny.class_indices])
    distilled = DistilledSet(x[idx], y[idx], decoder="partition2x2", train_lr=0.02)
    metrics = HardLabelEvaluator(use_train_lr=True).evaluate(
        distilled, tiny, "mlp", seeds=[0], device=torch.device("cpu"), budget=quick_preset
    )
    assert metrics[0]["train_images"] == 32 and metrics[0]["lr"] == 0.02
    fixed = HardLabelEvaluator().recipe(distilled, quick_preset)
    assert fixed.lr == 0.01
