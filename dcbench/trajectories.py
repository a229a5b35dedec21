"""Expert training trajectories and flat-parameter networks for trajectory matching (MTT).

Spec mtt_and_benchmarks.md §3.2 (``buffer.py``), §3.8 and §3.9. An *expert* is a network trained
on the real train split from a random initialisation with plain SGD; its *trajectory* is the
flattened parameter vector θ*_0 (initialisation), θ*_1, …, θ*_E (after every epoch), stored as one
(E+1)×P float32 tensor in the order of ``named_parameters()`` (:class:`ParamLayout`).

Instead of MTT's ``ReparamModule`` (which deletes a module's parameters and re-attaches views of a
flat vector), :func:`functional_forward` evaluates an unchanged module with parameters taken from
any flat vector through ``torch.func.functional_call``, so a student step
θ̂_{n+1} = θ̂_n − α ∇ℓ(θ̂_n) can be chained by autograd without touching the module.

Experts are stored in the :class:`~dcbench.cache.ArtifactCache` one per entry (kind
``mtt-expert``), keyed by everything that determines them (dataset and train split size, model
spec, input space, recipe, seed, index): every IPC, distillation seed and rerun reuses them, a
larger expert count reuses the smaller count's experts, and an interrupted buffer run resumes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from dcbench.augment import DEFAULT_STRATEGY, DSA
from dcbench.cache import ArtifactCache
from dcbench.errors import DcbenchError, DivergenceError
from dcbench.training import init_model, test_accuracy

log = logging.getLogger(__name__)

Builder = Callable[[], nn.Module]
#: ``forward(w, x)``: the logits of a network whose parameters are the flat vector ``w``.
FlatForward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: A lazily prepared split: ``() -> (images, labels)`` on the training device.
Split = Callable[[], tuple[torch.Tensor, torch.Tensor]]

EXPERT_KIND = "mtt-expert"


# --------------------------------------------------------------------------------------------------
# Flat parameters


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and sizes of a module's parameters, in ``named_parameters()`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, module: nn.Module) -> ParamLayout:
        params = list(module.named_parameters())
        return cls(tuple(n for n, _ in params), tuple(tuple(p.shape) for _, p in params))

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def size(self) -> int:
        """P, the length of the flat vector."""
        return sum(self.numels)

    def flatten(self, module: nn.Module) -> torch.Tensor:
        """The module's parameters as one detached 1-D vector (a copy)."""
        params = dict(module.named_parameters())
        if tuple(params) != self.names:
            raise ValueError("the module's parameters do not match this layout")
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: view}`` of a flat vector (differentiable views, no copy)."""
        if flat.dim() != 1 or flat.numel() != self.size:
            raise ValueError(
                f"expected a flat vector of {self.size} values, got {tuple(flat.shape)}"
            )
        pieces = flat.split(self.numels)
        return {n: p.view(s) for n, p, s in zip(self.names, pieces, self.shapes)}


def functional_forward(module: nn.Module, layout: ParamLayout | None = None) -> FlatForward:
    """``forward(w, x)`` = ``module(x)`` with the parameters of the flat vector ``w``.

    The module is never modified. Buffers (batch-norm running statistics) are passed as fresh
    copies on every call, so a train-mode batch norm uses batch statistics and its running-stat
    updates are discarded, as MTT's student (the running statistics are never read in train mode).
    """
    layout = layout if layout is not None else ParamLayout.of(module)
    buffers = dict(module.named_buffers())

    def forward(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tensors = layout.unflatten(w)
        if buffers:
            tensors.update({k: b.clone() for k, b in buffers.items()})
        return functional_call(module, tensors, (x,))

    return forward


# --------------------------------------------------------------------------------------------------
# Expert training


@dataclass(frozen=True)
class ExpertRecipe:
    """How an expert trains (``buffer.py`` defaults): plain SGD, DSA on every batch, constant lr.

    ``buffer.py`` hard-codes momentum 0 and weight decay 0 (its ``--decay`` ×0.1 step is off by
    default and not supported here).
    """

    epochs: int = 50  # --train_epochs
    lr: float = 0.01  # --lr_teacher of buffer.py
    batch_size: int = 256  # --batch_train
    momentum: float = 0.0
    weight_decay: float = 0.0
    augment: str = DEFAULT_STRATEGY  # --dsa_strategy ("none": no augmentation)


def train_expert(
    build: Builder,
    images: torch.Tensor,
    labels: torch.Tensor,
    seed: int,
    recipe: ExpertRecipe,
    *,
    device: torch.device,
) -> tuple[torch.Tensor, nn.Module, list[float]]:
    """Train one expert; returns its (E+1)×P float32 trajectory (CPU), the final network and
    the mean training loss of every epoch.

    Initialisation, batch order and DSA draws come from ``seed`` (global RNG untouched). An epoch
    is one pass over a fresh random permutation in batches of ``recipe.batch_size`` (the last one
    short, as a shuffling ``DataLoader``), each batch augmented with independent DSA draws per
    image (one family per batch), a cross-entropy loss and one SGD step.
    """
    model = init_model(build, seed).to(device)
    model.train()
    layout = ParamLayout.of(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    augment = DSA(recipe.augment)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )  # fmt: skip
    snapshots = [layout.flatten(model).cpu()]
    losses: list[float] = []
    n = images.shape[0]
    for epoch in range(recipe.epochs):
        total = torch.zeros((), device=device)
        for idx in torch.randperm(n, generator=generator, device=device).split(recipe.batch_size):
            x = augment(images[idx], generator)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * idx.numel()
        mean_loss = float(total) / n
        if not math.isfinite(mean_loss):
            raise DivergenceError(f"expert training diverged: loss {mean_loss} in epoch {epoch}")
        losses.append(mean_loss)
        snapshots.append(layout.flatten(model).cpu())
    return torch.stack(snapshots), model, losses


def expert_trajectories(
    build: Builder,
    spec: dict[str, Any],
    recipe: ExpertRecipe,
    count: int,
    seed_of: Callable[[int], int],
    *,
    train_split: Split,
    test_split: Split | None,
    device: torch.device,
    cache: ArtifactCache | None,
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """The trajectories (CPU, (E+1)×P each) and infos of experts 0..count−1, trained or cached.

    ``spec`` names what the experts depend on besides the recipe, the index and the seed (dataset,
    train size, model, input space); expert k is drawn from ``seed_of(k)``. ``train_split`` and
    ``test_split`` are called only if some expert must be trained. The info holds the final test
    accuracy (when ``test_split`` is given), the per-epoch training losses and the creation time.
    """
    if count < 1:
        raise DcbenchError(f"the number of experts must be positive, got {count}")
    if recipe.epochs < 1:
        raise DcbenchError(f"experts must train for at least one epoch, got {recipe.epochs}")
    prepared: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    size = ParamLayout.of(init_model(build, 0)).size

    def split(name: str, make: Split) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in prepared:
            prepared[name] = make()
        return prepared[name]

    trajectories, infos = [], []
    for k in range(count):
        seed = seed_of(k)
        key = {**spec, "recipe": asdict(recipe), "index": k, "seed": seed}

        def create(seed: int = seed, k: int = k) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            log.info("training expert %d/%d (%d epochs)", k + 1, count, recipe.epochs)
            images, labels = split("train", train_split)
            trajectory, model, losses = train_expert(
                build, images, labels, seed, recipe, device=device
            )
            info: dict[str, Any] = {"epochs": recipe.epochs, "train_loss": losses}
            if test_split is not None:
                test_x, test_y = split("test", test_split)
                info["test_accuracy"] = test_accuracy(model, test_x, test_y, device)
            return {"trajectory": trajectory}, info

        if cache is None:
            tensors, info = create()
        else:
            tensors, info = cache.get(EXPERT_KIND, key, create)
        trajectory = tensors["trajectory"]
        if tuple(trajectory.shape) != (recipe.epochs + 1, size):
            raise DcbenchError(
                f"expert {k} has a trajectory of shape {tuple(trajectory.shape)}, expected "
                f"{(recipe.epochs + 1, size)} (stale cache entry?)"
            )
        trajectories.append(trajectory)
        infos.append(dict(info))
    return trajectories, infos
