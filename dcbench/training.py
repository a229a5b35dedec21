"""Training classifiers from scratch on a (small) training set, several seeds at once.

This is the engine of the hard-label protocol (spec dm_idm_bacon.md §1.5): SGD with momentum and
weight decay, a step decay ×0.1 with a fresh optimiser at the half, DSA on every mini-batch, and one
test pass at the end. Two engines give the same result for a seed (up to floating-point summation
order), since every seed keeps its own initialisation, batch order and augmentation stream:

- the *ensemble*: the seeds' parameters are stacked and one ``vmap(grad(...))`` step updates all of
  them. On a GPU small distilled sets leave a per-seed loop launch-bound, and this removes that.
- the *loop*: one seed after another with ``torch.optim.SGD``. On a CPU the loop is already
  compute-bound at IPC 1 (benchmarks/results/evaluate.md): one convolution over all seeds' images at
  once is only ~1.2× faster than five, and the batched-weight convolution vmap produces runs its
  backward ~10× slower than oneDNN's per-model kernel, so the loop is the CPU default.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from dcbench.augment import DSA
from dcbench.errors import DivergenceError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainRecipe:
    """SGD recipe of the DC/DSA/DM evaluation (defaults are the reference code's)."""

    epochs: int = 1000  # reference semantics: epochs + 1 passes, see lr_decay_pass
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256

    @property
    def num_passes(self) -> int:
        return self.epochs + 1

    @property
    def lr_decay_pass(self) -> int:
        """Index of the last pass at the initial lr (the reference decays after ``E//2 + 1``)."""
        return self.epochs // 2 + 1


def init_model(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model whose default initialisation is drawn from ``seed``.

    Module constructors draw from the global CPU generator; it is forked, so the caller's global RNG
    state is left exactly as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def has_buffers(model: nn.Module) -> bool:
    return any(True for _ in model.buffers())


def train_networks(
    build: Callable[[], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    seeds: Sequence[int],
    recipe: TrainRecipe,
    *,
    augment: DSA | None,
    device: torch.device,
    ensemble: bool | None = None,
    progress: Progress | None = None,
) -> list[nn.Module]:
    """Train one network per seed on ``images``/``labels`` and return the trained networks.

    ``ensemble=None`` picks the vmapped ensemble for buffer-free models on CUDA and the per-seed
    loop otherwise (batch-norm running statistics are buffers; see the module docstring for CPU).
    """
    images = images.to(device)
    labels = labels.to(device)
    models = [init_model(build, s).to(device) for s in seeds]
    gens = [_generator(s, device) for s in seeds]
    if ensemble is None:
        ensemble = device.type == "cuda" and not has_buffers(models[0])
    if ensemble:
        params = _train_ensemble(models, images, labels, gens, recipe, augment, progress)
        with torch.no_grad():
            for i, model in enumerate(models):
                for name, p in model.named_parameters():
                    p.copy_(params[name][i])
        return models
    for i, (model, gen) in enumerate(zip(models, gens)):
        per_seed = None
        if progress is not None:
            per_seed = lambda d, t, i=i: progress(i * t + d, t * len(models))  # noqa: B023
        _train_loop(model, images, labels, gen, recipe, augment, per_seed)
    return models


def train_and_test(
    build: Callable[[], nn.Module],
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    seeds: Sequence[int],
    recipe: TrainRecipe,
    *,
    augment: DSA | None,
    device: torch.device,
    ensemble: bool | None = None,
    progress: Progress | None = None,
) -> list[float]:
    """Train one network per seed (:func:`train_networks`) and return each one's test accuracy."""
    models = train_networks(
        build, train_images, train_labels, seeds, recipe, augment=augment, device=device,
        ensemble=ensemble, progress=progress,
    )  # fmt: skip
    return [test_accuracy(m, test_images, test_labels, device) for m in models]


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device):
    """Index batches of one shuffled pass (the last batch may be short, as DataLoader's)."""
    perm = torch.randperm(n, generator=gen, device=device)
    return perm.split(batch_size)


def _check_finite(loss: torch.Tensor, pass_index: int) -> None:
    if not torch.isfinite(loss).all():
        raise DivergenceError(
            f"training diverged: loss {loss.flatten()[0].item()} in pass {pass_index}"
        )


def _train_loop(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    gen: torch.Generator,
    recipe: TrainRecipe,
    augment: DSA | None,
    progress: Progress | None,
) -> None:
    """The plain reference loop: one model, ``torch.optim.SGD``, re-created at the lr decay."""
    model.train()
    lr = recipe.lr
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    for p in range(recipe.num_passes):
        last = None
        for idx in _batches(images.shape[0], recipe.batch_size, gen, images.device):
            x = images[idx]
            if augment is not None:
                x = augment(x, gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = loss.detach()
        _check_finite(last, p)
        if p == recipe.lr_decay_pass:
            lr *= 0.1
            opt = torch.optim.SGD(
                model.parameters(),
                lr=lr,
                momentum=recipe.momentum,
                weight_decay=recipe.weight_decay,
            )
        if progress is not None:
            progress(p + 1, recipe.num_passes)


def _train_ensemble(
    models: list[nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    gens: list[torch.Generator],
    recipe: TrainRecipe,
    augment: DSA | None,
    progress: Progress | None,
) -> dict[str, torch.Tensor]:
    """All seeds in lock-step: stacked parameters, one vmapped gradient, foreach SGD updates."""
    params, _ = stack_module_state(models)
    params = {k: v.detach().clone() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    base.train()

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(base, p, (x,)), y)

    step = vmap(grad_and_value(loss_fn))
    names = list(params)
    weights = [params[k] for k in names]
    momenta: list[torch.Tensor] | None = None
    lr = recipe.lr
    n = images.shape[0]
    for p in range(recipe.num_passes):
        per_seed = [_batches(n, recipe.batch_size, g, images.device) for g in gens]
        loss = None
        for b in range(len(per_seed[0])):
            xs = []
            for s, gen in enumerate(gens):
                x = images[per_seed[s][b]]
                xs.append(augment(x, gen) if augment is not None else x)
            x = torch.stack(xs)
            y = labels[torch.stack([per_seed[s][b] for s in range(len(gens))])]
            grads, loss = step(dict(zip(names, weights)), x, y)
            g = [grads[k] for k in names]
            # torch.optim.SGD (dampening 0, no Nesterov): d = g + wd·w; m = μ·m + d; w -= lr·m
            torch._foreach_add_(g, weights, alpha=recipe.weight_decay)
            if momenta is None:
                momenta = [t.clone() for t in g]
            else:
                torch._foreach_mul_(momenta, recipe.momentum)
                torch._foreach_add_(momenta, g)
            torch._foreach_add_(weights, momenta, alpha=-lr)
        _check_finite(loss, p)
        if p == recipe.lr_decay_pass:
            lr *= 0.1
            momenta = None  # a fresh optimiser, as the reference re-creates SGD
        if progress is not None:
            progress(p + 1, recipe.num_passes)
    return dict(zip(names, weights))


@torch.inference_mode()
def test_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    batch_size: int = 500,
) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on the given images."""
    model.eval()
    # channels-last activations run the test pass ~1.2× faster on oneDNN (benchmarks/results)
    model = model.to(memory_format=torch.channels_last)
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct / images.shape[0]
