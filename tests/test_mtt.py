"""MTT (methods/mtt.py) and expert trajectories (dcbench/trajectories.py)."""

from __future__ import annotations

import dataclasses
import random
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner

from dcbench import trajectories
from dcbench.augment import DSA
from dcbench.cache import ArtifactCache
from dcbench.cli import main as cli
from dcbench.errors import DcbenchError, DivergenceError
from dcbench.matching import class_labels, model_builder
from dcbench.method import METHODS
from dcbench.models import ConvNet, build_model
from dcbench.protocol import PRESETS, Preset
from dcbench.store import ResultStore
from dcbench.training import init_model
from dcbench.trajectories import ExpertRecipe, ParamLayout, functional_forward, train_expert
from dcbench.zca import dataset_zca, evaluation_test_split, unit_pixels
from evaluators.hard import LearnedLrHardLabelEvaluator
from methods.mtt import (
    EXPERT_BUDGETS,
    PAPER_SETTINGS,
    TUNED_SETTINGS,
    MTTConfig,
    expert_budget,
    matching_gradients,
    param_matching_loss,
    plan_inner_steps,
    start_epoch_bound,
    student_step,
)

CPU = torch.device("cpu")
SMOKE = PRESETS.get("smoke")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny shapes gain nothing from threads, and OpenMP waits badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(**changes) -> MTTConfig:
    """A width-8 student, 4 iterations of 3 steps, 2 experts × 3 epochs, gentle learning rates."""
    base = MTTConfig(
        width=8, iterations=4, syn_steps=3, expert_epochs=2, max_start_epoch=2,
        lr_img=10.0, lr_lr=1e-7, num_experts=2, train_epochs=3,
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def _distill(data, ipc=2, seed=0, cache=None, budget=None, **changes):
    method = METHODS.get("mtt")()
    return method.distill(
        data, ipc, _config(**changes), seed=seed, device=CPU,
        budget=budget or PRESETS.get("paper"), cache=cache,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The objective, by hand


def test_param_matching_loss_by_hand():
    start = torch.tensor([0.0, 0.0, 0.0])
    target = torch.tensor([1.0, 1.0, 1.0])
    student = torch.tensor([1.0, 2.0, 3.0])
    # ‖(0, 1, 2)‖² / ‖(−1, −1, −1)‖² = 5 / 3
    assert param_matching_loss(student, start, target).item() == pytest.approx(5 / 3)
    assert param_matching_loss(target, start, target).item() == 0.0
    assert param_matching_loss(start, start, target).item() == 1.0
    # sums, not means: the same ratio whatever the number of parameters
    assert param_matching_loss(student.repeat(4), start.repeat(4), target.repeat(4)).item() == (
        pytest.approx(5 / 3)
    )


@pytest.mark.parametrize("label", [0, 1])
def test_student_step_gradients_in_closed_form(label):
    """Softmax regression with 2 classes, one image x: after one step θ₁ = θ₀ − α(p − e_y)⊗(x, 1),
    L = N/D with N = D − 2αsA + α²s²Q, s = p₁ − [y = 1], u = (−1, 1), A = uᵀE_W x + uᵀE_b,
    Q = 2(‖x‖² + 1), E = θ₀ − θ_target; so ∂N/∂α = −2sA + 2αs²Q and
    ∂N/∂x = −2α(A∇s + s E_Wᵀu) + α²(2sQ∇s + 4s²x), ∇s = p₀p₁(W₀[1] − W₀[0])."""
    g = torch.Generator().manual_seed(3 + label)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2)).double()
    forward = functional_forward(model)
    theta0 = torch.randn(8, generator=g, dtype=torch.float64)
    target = torch.randn(8, generator=g, dtype=torch.float64)
    image = torch.randn(1, 1, 1, 3, generator=g, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([label])

    theta1 = student_step(forward, theta0.clone().requires_grad_(True), image, y, alpha)
    loss = param_matching_loss(theta1, theta0, target)
    grad_x, grad_alpha = torch.autograd.grad(loss, [image, alpha])

    w0, b0 = theta0[:6].view(2, 3).numpy(), theta0[6:].numpy()
    ew, eb = w0 - target[:6].view(2, 3).numpy(), b0 - target[6:].numpy()
    x, a = image.detach().view(3).numpy(), 0.7
    z = w0 @ x + b0
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    u = np.array([-1.0, 1.0])
    s = p[1] - (label == 1)
    big_a = u @ ew @ x + u @ eb
    q = 2 * (x @ x + 1)
    d = (ew**2).sum() + (eb**2).sum()
    grad_s = p[0] * p[1] * (w0[1] - w0[0])
    assert loss.item() == pytest.approx((d - 2 * a * s * big_a + a**2 * s**2 * q) / d, rel=1e-12)
    assert grad_alpha.item() == pytest.approx((-2 * s * big_a + 2 * a * s**2 * q) / d, rel=1e-10)
    expected_x = (
        -2 * a * (big_a * grad_s + s * ew.T @ u) + a**2 * (2 * s * q * grad_s + 4 * s**2 * x)
    ) / d
    np.testing.assert_allclose(grad_x.view(3).numpy(), expected_x, rtol=1e-10)


def test_student_step_is_an_sgd_step_of_the_module():
    net = ConvNet(3, 4, (8, 8), width=8)
    layout = ParamLayout.of(net)
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0])
    w0 = layout.flatten(net).requires_grad_(True)
    w1 = student_step(functional_forward(net, layout), w0, x, y, 0.1, create_graph=False)
    F.cross_entropy(net(x), y).backward()
    expected = torch.cat([(p - 0.1 * p.grad).detach().reshape(-1) for p in net.parameters()])
    assert torch.allclose(w1, expected, atol=1e-6)


def test_param_layout_round_trip_and_functional_forward():
    net = ConvNet(3, 4, (8, 8), width=8)
    layout = ParamLayout.of(net)
    flat = layout.flatten(net)
    assert flat.numel() == layout.size == sum(p.numel() for p in net.parameters())
    for (name, p), (name2, view) in zip(net.named_parameters(), layout.unflatten(flat).items()):
        assert name == name2 and torch.equal(p, view)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(functional_forward(net, layout)(flat, x), net(x))
    with pytest.raises(ValueError, match="flat vector"):
        layout.unflatten(flat[:-1])


def test_functional_forward_leaves_batch_norm_buffers_alone():
    net = build_model("convnet-bn", 3, 4, (8, 8), width=8)
    before = {k: b.clone() for k, b in net.named_buffers()}
    net.train()
    forward = functional_forward(net)
    forward(ParamLayout.of(net).flatten(net), torch.randn(4, 3, 8, 8))
    assert all(torch.equal(before[k], b) for k, b in net.named_buffers())


# --------------------------------------------------------------------------------------------------
# Inner-step plans and the checkpointed backward pass


def test_plan_chunks_are_popped_from_the_end_and_cover_the_set():
    gen = torch.Generator().manual_seed(0)
    plan = plan_inner_steps(4, 10, 4, DSA(), (8, 8), gen)
    # randperm(10).split(4) = [4, 4, 2], taken from the end; then a new permutation
    assert [s.indices.numel() for s in plan] == [2, 4, 4, 2]
    assert sorted(torch.cat([s.indices for s in plan[:3]]).tolist()) == list(range(10))
    assert all(s.draw is not None and s.draw.num_groups == s.indices.numel() for s in plan)
    assert all(s.draw is None for s in plan_inner_steps(2, 10, 4, DSA("none"), (8, 8), gen))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_checkpointed_gradients_equal_plain_ones(tiny, seed):
    net = init_model(partial(ConvNet, 3, 4, (8, 8), width=4), 0).double()
    layout = ParamLayout.of(net)
    forward = functional_forward(net, layout)
    gen = torch.Generator().manual_seed(seed)
    start = layout.flatten(net)
    target = start + 0.05 * torch.randn(start.shape, generator=gen, dtype=torch.float64)
    images = tiny.normalize(tiny.train_images[::24]).double().requires_grad_(True)  # 8 images
    labels = tiny.train_labels[::24]
    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    dsa = DSA()
    plan = plan_inner_steps(4, 8, 3, dsa, (8, 8), gen)
    plain = matching_gradients(forward, start, target, images, labels, lr, plan, dsa)
    ckpt = matching_gradients(
        forward, start, target, images, labels, lr, plan, dsa, checkpoint=True
    )
    assert plain[0].item() == pytest.approx(ckpt[0].item(), rel=1e-12)
    assert plain[1].abs().sum() > 0 and plain[2].abs() > 0
    assert torch.allclose(plain[1], ckpt[1], rtol=1e-9, atol=1e-12)
    assert torch.allclose(plain[2], ckpt[2], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Experts


def test_expert_trajectory_shape_start_and_prefix_property(tiny):
    build = model_builder(tiny, "convnet", width=8)
    x, y = tiny.train()
    short, _, losses = train_expert(
        build, x, y, 7, ExpertRecipe(epochs=2, batch_size=64), device=CPU
    )
    long, _, _ = train_expert(build, x, y, 7, ExpertRecipe(epochs=3, batch_size=64), device=CPU)
    assert short.shape == (3, ParamLayout.of(build()).size) and len(losses) == 2
    assert torch.equal(short[0], ParamLayout.of(init_model(build, 7)).flatten(init_model(build, 7)))
    assert not torch.equal(short[1], short[0])
    # a constant learning rate: a shorter expert is the start of a longer one with the same seed
    assert torch.equal(long[:3], short)


def test_experts_are_cached_and_reused(tiny, tmp_path, monkeypatch):
    calls = []
    real_train = trajectories.train_expert

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trajectories, "train_expert", counting)
    first = _distill(tiny, ipc=1, cache=ArtifactCache(tmp_path))
    assert len(calls) == 2
    assert len(list(tmp_path.glob("mtt-expert-*.safetensors"))) == 2
    # a new process (fresh cache object), another IPC and seed: no retraining
    second = _distill(tiny, ipc=2, seed=5, cache=ArtifactCache(tmp_path))
    assert len(calls) == 2
    assert first.meta["experts"]["test_accuracy"] == second.meta["experts"]["test_accuracy"]
    # one more expert trains only the new one; a different expert recipe retrains
    _distill(tiny, ipc=1, cache=ArtifactCache(tmp_path), num_experts=3)
    assert len(calls) == 3
    _distill(tiny, ipc=1, cache=ArtifactCache(tmp_path), expert_lr=0.02)
    assert len(calls) == 5


# --------------------------------------------------------------------------------------------------
# The method end to end


def test_distill_end_to_end_on_tiny(tiny, quick_preset):
    distilled = _distill(tiny, ipc=2, budget=SMOKE, num_experts=None, train_epochs=None)
    distilled.validate(tiny.info)
    assert distilled.images.shape == (8, 3, 8, 8)
    assert torch.equal(distilled.labels, class_labels(4, 2))
    assert distilled.meta["iterations"] == SMOKE.iterations(4)
    assert distilled.meta["experts"]["count"] == EXPERT_BUDGETS["smoke"][0] == 2
    assert distilled.meta["experts"]["train_epochs"] == 3
    assert distilled.meta["experts"]["max_start_epoch"] == 2  # min(2, 3 − 2 + 1)
    assert isinstance(distilled.train_lr, float) and distilled.train_lr > 0
    assert distilled.train_lr != 0.01  # α is learned
    assert "zca" not in distilled.meta
    # the images moved away from the real initialisation
    init = tiny.normalize(tiny.train_images[distilled.meta["init_indices"]])
    assert not torch.allclose(init, distilled.images)
    # MTT's own evaluation trains with the learned step size
    (metrics,) = LearnedLrHardLabelEvaluator().evaluate(
        distilled, tiny, "convnet", seeds=[0], device=CPU, budget=quick_preset
    )
    assert metrics["lr"] == distilled.train_lr and 0.0 <= metrics["accuracy"] <= 1.0


def test_checkpointed_distillation_matches_plain(tiny):
    plain = _distill(tiny, iterations=1)
    ckpt = _distill(tiny, iterations=1, checkpoint_inner=True)
    assert torch.allclose(plain.images, ckpt.images, rtol=1e-4, atol=1e-4)
    assert plain.train_lr == pytest.approx(ckpt.train_lr, rel=1e-5)


def test_distill_is_deterministic_and_leaves_the_global_rng_alone(tiny):
    torch_state, py_state, np_state = (
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state(),
    )
    a = _distill(tiny, seed=3)
    b = _distill(tiny, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert torch.equal(a.images, b.images) and a.train_lr == b.train_lr
    assert a.meta["loss_trace"] == b.meta["loss_trace"]
    c = _distill(tiny, seed=4)
    assert not torch.equal(a.images, c.images)


def test_zca_distillation_records_the_transform(tiny):
    distilled = _distill(tiny, zca=True, iterations=1, lr_img=0.0)
    assert distilled.meta["zca"] == {"eps": 0.1, "fit": "train", "input": "unit", "dataset": "tiny"}
    zca = dataset_zca(tiny, 0.1)
    # the set starts from whitened real images (lr_img 0 keeps them there)
    init = zca.apply(unit_pixels(tiny.train_images[distilled.meta["init_indices"]]))
    assert torch.allclose(distilled.images, init, atol=1e-6)
    assert distilled.train_lr != 0.01  # α still learned
    test_x, _ = evaluation_test_split(distilled, tiny)
    assert torch.allclose(test_x, zca.apply(unit_pixels(tiny.test_images)), atol=1e-6)


def test_noise_init_and_batch_syn(tiny):
    distilled = _distill(tiny, init="noise", batch_syn=3, iterations=2)
    assert distilled.meta["init_indices"] is None
    assert torch.isfinite(distilled.images).all()


# --------------------------------------------------------------------------------------------------
# Settings


def test_paper_settings_and_fallback():
    method = METHODS.get("mtt")()
    c10 = method.resolve_config("cifar10", 1)
    assert (c10.syn_steps, c10.expert_epochs, c10.max_start_epoch, c10.zca) == (50, 2, 2, True)
    assert (c10.lr_img, c10.lr_lr, c10.lr_teacher, c10.iterations) == (100.0, 1e-07, 0.01, 5000)
    assert method.resolve_config("cifar100", 50).batch_syn == 125
    tiny_in = method.resolve_config("tinyimagenet", 10)
    assert (tiny_in.depth, tiny_in.batch_syn, tiny_in.lr_img) == (4, 200, 10000.0)
    # datasets without a row: distill.py's argparse defaults
    assert method.resolve_config("fashionmnist", 10) == MTTConfig()
    assert method.resolve_config("cifar10", 10, {"checkpoint_inner": "true"}).checkpoint_inner


def test_tuned_settings_are_separate_and_nearest_ipc_is_used():
    method = METHODS.get("mtt")()
    assert not set(TUNED_SETTINGS) & set(PAPER_SETTINGS)
    for (dataset, ipc), row in TUNED_SETTINGS.items():
        config = method.resolve_config(dataset, ipc)
        assert {k: getattr(config, k) for k in row} == row
        assert config.expert_epochs == 2  # the author's guidance (spec §3.5)
    digits = sorted(k for d, k in TUNED_SETTINGS if d == "digits")
    assert digits, "digits must have tuned rows (MTT diverges there with the argparse defaults)"
    far = method.resolve_config("digits", 1000)
    assert far == method.resolve_config("digits", digits[-1])


def test_blow_up_is_a_one_line_divergence_error(tiny):
    with pytest.raises(DivergenceError, match=r"matching loss .* \(lower lr_img or lr_lr\)") as err:
        _distill(tiny, lr_lr=1e-2, iterations=3)
    assert "\n" not in str(err.value)


def test_a_non_positive_learned_step_size_is_a_divergence_error(tiny, monkeypatch):
    monkeypatch.setattr(torch.optim.SGD, "step", _send_lr_below_zero(torch.optim.SGD.step))
    with pytest.raises(DivergenceError, match="step size ended at .* ≤ 0") as err:
        _distill(tiny, iterations=2)
    assert "\n" not in str(err.value)


def _send_lr_below_zero(step):
    def patched(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() == 0:  # α, the only scalar parameter
                    p.data.fill_(-1e-3)
        return out

    return patched


def test_expert_budget_and_start_bound():
    assert expert_budget(MTTConfig(), PRESETS.get("paper")) == (100, 50)
    assert expert_budget(MTTConfig(), PRESETS.get("fast")) == (5, 15)
    assert expert_budget(MTTConfig(num_experts=1), SMOKE) == (1, 3)
    other = Preset("other", "", 1, 1, 1, 1.0, 1)
    with pytest.raises(DcbenchError, match="num_experts and train_epochs"):
        expert_budget(MTTConfig(), other)
    assert expert_budget(MTTConfig(num_experts=3, train_epochs=4), other) == (3, 4)
    assert start_epoch_bound(20, 2, 50) == 20
    assert start_epoch_bound(40, 2, 15) == 14  # start ≤ 13, target ≤ 15
    with pytest.raises(DcbenchError, match="expert_epochs"):
        start_epoch_bound(2, 4, 3)


@pytest.mark.parametrize(
    "changes, match",
    [({"init": "zeros"}, "init"), ({"syn_steps": 0}, "syn_steps"), ({"batch_syn": 0}, "batch_syn")],
)
def test_bad_settings_are_one_line_errors(tiny, changes, match):
    with pytest.raises(DcbenchError, match=match):
        _distill(tiny, **changes)


def test_end_to_end_run_through_the_cli(tmp_path):
    """``dcbench run --methods mtt``: experts land in the store's cache, the learned-lr evaluator
    trains with α, and a rerun with another IPC reuses the experts."""
    store = tmp_path / "store"
    args = [
        "run", "--methods", "mtt", "--datasets", "tiny", "--store", str(store),
        "--evaluators", "hard-learned-lr", "--eval-seeds", "0", "--device", "cpu",
        "--no-progress", "--set", "width=8", "--set", "expert_epochs=2", "--set", "syn_steps=5",
        "--set", "lr_img=1", "--set", "lr_lr=1e-7",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--ipc", "1"])
    assert result.exit_code == 0, result.output
    experts = sorted(store.rglob("mtt-expert-*.safetensors"))
    assert len(experts) == EXPERT_BUDGETS["smoke"][0]
    stamps = [p.stat().st_mtime_ns for p in experts]
    result = CliRunner().invoke(cli, [*args, "--ipc", "2"])
    assert result.exit_code == 0, result.output
    assert sorted(store.rglob("mtt-expert-*.safetensors")) == experts
    assert [p.stat().st_mtime_ns for p in experts] == stamps
    records = ResultStore(store).to_dataframe(include_failed=True)
    assert (records["status"] == "ok").all() and sorted(records["ipc"]) == [1, 2]
