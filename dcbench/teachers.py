"""Teacher/observer networks trained on the full train split: EDC's *squeeze* stage.

EDC (Shao et al., NeurIPS 2024, arXiv 2404.13733; spec edc.md §1) recovers images against K
observers and evaluates its images with the same K networks as a soft-label teacher ensemble.
This module builds, trains and caches such a set; the EDC method (``methods/edc.py``) and the
soft-label evaluator both use it, so a method and its evaluation share one set.

**Recipe** (spec §1.2 with the [R] recommendation): plain cross-entropy, SGD lr 0.05, momentum 0.9,
weight decay 0, batch 64, constant learning rate, RandomCrop with zero padding (4 px at 32 px,
scaled to the image size: 1 px at 8 px, 4 px at 28 px) and a horizontal flip with p = 0.5, except on
digit datasets (:data:`NO_FLIP_DATASETS`: flips change a digit's meaning, spec §8.3). The **final**
weights are kept — the reference writes its checkpoint only when ``epoch % 10 == 0``, so its
CIFAR-10 observers are the 1-epoch models (spec §9.1); we fix that. Each teacher's test accuracy
on the full real test split is recorded. After training, batch-norm running statistics are
re-estimated as an exact average over up to :data:`BN_RECALIBRATION_BATCHES` augmented train batches
under the final weights (the exponential average of a short run still mixes in early weights).
Batches of a single image are skipped (batch norm on a 1×1 map needs two).

**Epochs** (:data:`SQUEEZE_EPOCHS`, per preset and dataset): ``paper`` 10 (CIFAR-10-like data, the
paper's App. G.5 figure and spec §1.2 [R]) and 50 for CIFAR-100 and Tiny-ImageNet; ``fast`` 10 on
digits and the ``tiny`` fixture (seconds per teacher on 2 CPU cores), 1 elsewhere (Fashion-MNIST:
about a minute per small teacher); ``smoke`` 1. A preset not in the table uses the row of the
closest standard preset by its ``iteration_fraction``.

**Caching**: each teacher is one :class:`~dcbench.cache.ArtifactCache` entry of kind ``teacher``
keyed by (dataset, train size, name, model, options, recipe, epochs, augmentation, seed); adding a
name to a list trains only that network, and presets with equal epochs share teachers.

**Names** map explicitly to ``(model, options)`` in :data:`TEACHERS`; :data:`TEACHER_SETS` holds
the named lists. Seeds are ``seed_hash(dataset, name, "teacher", seed)``; the global RNG is never
used (initialisation through :func:`dcbench.training.init_model`, data order and augmentation from
a CPU ``torch.Generator``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcbench.cache import ArtifactCache
from dcbench.data import DatasetInfo, RealData
from dcbench.errors import DcbenchError, DivergenceError
from dcbench.matching import model_builder
from dcbench.protocol import Preset, seed_hash
from dcbench.registry import Registry
from dcbench.training import init_model, test_accuracy

log = logging.getLogger(__name__)

#: Teacher name → (registered model, model options). EDC's eight CIFAR observers (spec §1.1: the
#: DC ConvNets use instance norm) and small batch-norm networks for the CPU (spec §8.3).
TEACHERS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet18": ("resnet18-bn", {}),
    "convnet-w128": ("convnet", {"width": 128}),
    "mobilenetv2-half": ("mobilenetv2-half", {}),
    "wrn-16-2": ("wrn-16-2", {}),
    "shufflenetv2-0.5": ("shufflenetv2-0.5", {}),
    "convnet-d1": ("convnet", {"width": 128, "depth": 1}),
    "convnet-d2": ("convnet", {"width": 128, "depth": 2}),
    "convnet-w32": ("convnet", {"width": 32}),
    "convnetbn-d3-w32": ("convnet-bn", {"width": 32, "depth": 3}),
    "convnetbn-d2-w64": ("convnet-bn", {"width": 64, "depth": 2}),
    "convnetbn-d1-w64": ("convnet-bn", {"width": 64, "depth": 1}),
    "resnet8-bn": ("resnet8-bn", {}),
}

_NAMES: Registry[tuple[str, dict[str, Any]]] = Registry("teacher")
for _name, _entry in TEACHERS.items():
    _NAMES.add(_name, _entry)

#: Named observer lists. ``cifar``: EDC's eight in the round-robin order of spec §1.1; ``cifar5``:
#: its first five (the CIFAR-100/Tiny code); ``small``: four diverse batch-norm networks that a
#: 2-core CPU trains in seconds on digits and minutes on 28×28 data (spec §8.3).
TEACHER_SETS: dict[str, tuple[str, ...]] = {
    "cifar": ("resnet18", "convnet-w128", "mobilenetv2-half", "wrn-16-2", "shufflenetv2-0.5",
              "convnet-d1", "convnet-d2", "convnet-w32"),
    "cifar5": ("resnet18", "convnet-w128", "mobilenetv2-half", "wrn-16-2", "shufflenetv2-0.5"),
    "small": ("convnetbn-d3-w32", "resnet8-bn", "convnetbn-d2-w64", "convnetbn-d1-w64"),
}  # fmt: skip

#: Datasets whose classes are not invariant to a horizontal flip (spec §8.3); the synthetic
#: ``tiny`` fixture's classes are fixed pixel patterns, so it is not flipped either.
NO_FLIP_DATASETS = frozenset({"digits", "mnist", "svhn", "tiny"})

#: Squeeze epochs per preset and dataset (``"*"``: every other dataset); see the module docstring.
SQUEEZE_EPOCHS: dict[str, dict[str, int]] = {
    "paper": {"*": 10, "cifar100": 50, "tinyimagenet": 50},
    "fast": {"*": 1, "digits": 10, "tiny": 10},
    "smoke": {"*": 1},
}

#: Train batches (at most) over which batch-norm running statistics are re-estimated.
BN_RECALIBRATION_BATCHES = 100


@dataclass(frozen=True)
class SqueezeRecipe:
    """Observer training settings of EDC's CIFAR squeeze (spec §1.2); epochs come per preset."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64


@dataclass
class TeacherSet:
    """Trained teachers (eval mode, frozen, on one device) and what determines them."""

    names: tuple[str, ...]
    models: list[nn.Module]
    info: list[dict[str, Any]]
    spec: dict[str, Any]

    @property
    def num_parameters(self) -> int:
        """Parameters of all teachers together (extra stored bytes of a soft-label protocol)."""
        return sum(p.numel() for m in self.models for p in m.parameters())

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the teachers' raw logits on ``x``, without autograd (EDC Eq. 4, spec §3)."""
        with torch.no_grad():
            total = self.models[0](x)
            for model in self.models[1:]:
                total = total + model(x)
            return total / len(self.models)


def teacher_entry(name: str) -> tuple[str, dict[str, Any]]:
    """``(model, options)`` of teacher ``name``; a one-line error naming the valid names."""
    return _NAMES.get(name)


def default_teacher_names(info: DatasetInfo, preset: Preset) -> tuple[str, ...]:
    """The observer list for a dataset and preset.

    Under ``paper`` on RGB images of at least 32 px: EDC's eight CIFAR observers (``cifar``), its
    first five on Tiny-ImageNet (``cifar5``, as the Tiny code). Otherwise — ``fast``/``smoke``, and
    the 8×8 and 28×28 grey datasets at any preset — the CPU list ``small`` (spec §8.3).
    """
    if preset.name == "paper" and info.channels == 3 and min(info.height, info.width) >= 32:
        return TEACHER_SETS["cifar5" if info.name == "tinyimagenet" else "cifar"]
    return TEACHER_SETS["small"]


def squeeze_epochs(dataset: str, preset: Preset) -> int:
    """Training epochs of each teacher for ``dataset`` under ``preset`` (:data:`SQUEEZE_EPOCHS`)."""
    row = SQUEEZE_EPOCHS.get(preset.name)
    if row is None:  # a custom preset: the standard one of the nearest compute share
        fraction = preset.iteration_fraction
        row = SQUEEZE_EPOCHS["paper" if fraction >= 1 else "fast" if fraction >= 0.01 else "smoke"]
    return row.get(dataset, row["*"])


def crop_padding(height: int) -> int:
    """RandomCrop padding: 4 px at 32 px, scaled to the image height (at least 1)."""
    return max(1, round(4 * height / 32))


def augment_flip(dataset: str) -> bool:
    """Whether the squeeze/recover augmentation flips images of ``dataset`` horizontally."""
    return dataset not in NO_FLIP_DATASETS


def squeeze_augment(
    images: torch.Tensor, generator: torch.Generator, *, padding: int, flip: bool
) -> torch.Tensor:
    """RandomCrop(size, zero padding ``padding``) and, if ``flip``, a horizontal flip (p = 0.5).

    Independent draws per image from the CPU ``generator``; works on uint8 (zero = black, as
    torchvision pads PIL images before normalising) and float images alike.
    """
    n, c, h, w = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(device) if flip else None
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[:, :1] + torch.arange(h, device=device)  # n×H
    cols = offsets[:, 1:] + torch.arange(w, device=device)  # n×W
    batch = torch.arange(n, device=device).view(-1, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, -1, 1, 1)
    out = padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if flips is not None:
        out = torch.where(flips.view(-1, 1, 1, 1), out.flip(3), out)
    return out


def augmented_batches(
    data: RealData,
    generator: torch.Generator,
    batch_size: int,
    *,
    device: torch.device,
    max_batches: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One shuffled pass of normalised, squeeze-augmented train batches ``(x, y, indices)``.

    The order and augmentation come from the CPU ``generator``; batches of one image are skipped.
    """
    padding, flip = crop_padding(data.info.height), augment_flip(data.info.name)
    order = torch.randperm(data.train_labels.numel(), generator=generator)
    for i, idx in enumerate(order.split(batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        if idx.numel() < 2:
            continue
        x = squeeze_augment(data.train_images[idx], generator, padding=padding, flip=flip)
        yield data.normalize(x, device), data.train_labels[idx].to(device), idx


def recalibrate_batch_norm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]]) -> None:
    """Re-estimate every batch-norm layer's running statistics as an exact mean over ``batches``.

    ``batches`` yields ``(x, …)`` tuples; the model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        model.eval()
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches
    model.train()
    with torch.no_grad():
        for x, *_ in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def train_teacher(
    data: RealData,
    name: str,
    *,
    epochs: int,
    seed: int,
    device: torch.device,
    recipe: SqueezeRecipe | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train teacher ``name`` on the full train split (the squeeze recipe) and test it.

    Returns the network (eval mode, final weights) and its info: name, test accuracy (fraction
    of the full real test split), training seconds, parameter count and epochs. ``progress(e)``
    is called after each epoch.
    """
    recipe = recipe or SqueezeRecipe()
    model_name, options = teacher_entry(name)
    build = model_builder(data, model_name, **options)
    start = time.perf_counter()
    model = init_model(build, seed).to(device)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
    )  # fmt: skip
    model.train()
    for epoch in range(epochs):
        loss = torch.zeros(())
        for x, y, _ in augmented_batches(data, generator, recipe.batch_size, device=device):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if not math.isfinite(float(loss.detach())):
            raise DivergenceError(f"teacher {name} diverged in epoch {epoch}")
        if progress is not None:
            progress(epoch + 1)
    recalibrate_batch_norm(
        model,
        augmented_batches(
            data, generator, recipe.batch_size, device=device,
            max_batches=BN_RECALIBRATION_BATCHES,
        ),
    )  # fmt: skip
    seconds = time.perf_counter() - start
    test_x, test_y = data.test(device)
    accuracy = test_accuracy(model, test_x, test_y, device)
    info = {
        "name": name,
        "test_accuracy": accuracy,
        "train_seconds": round(seconds, 3),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
    }
    log.info("teacher %s on %s: %.2f%% after %d epochs (%.1f s)", name, data.info.name,
             100 * accuracy, epochs, seconds)  # fmt: skip
    return model.eval().requires_grad_(False), info


def teacher_spec(data: RealData, name: str, *, epochs: int, seed: int) -> dict[str, Any]:
    """Everything that determines teacher ``name`` on ``data`` (its cache key)."""
    model_name, options = teacher_entry(name)
    return {
        "dataset": data.info.name,
        "train_size": int(data.train_labels.numel()),
        "name": name,
        "model": model_name,
        "options": options,
        "recipe": asdict(SqueezeRecipe()),
        "epochs": epochs,
        "augment": {"crop_padding": crop_padding(data.info.height),
                    "flip": augment_flip(data.info.name)},
        "bn_recalibration_batches": BN_RECALIBRATION_BATCHES,
        "seed": seed_hash(data.info.name, name, "teacher", seed),
    }  # fmt: skip


def load_teachers(
    data: RealData,
    names: Sequence[str] | None = None,
    *,
    budget: Preset,
    device: torch.device,
    cache: ArtifactCache | None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> TeacherSet:
    """The teachers ``names`` (default: :func:`default_teacher_names`) trained on ``data``.

    Each teacher is trained once per cache (kind ``teacher``, :func:`teacher_spec`) and reused
    afterwards; ``progress(done, total)`` counts training epochs over the whole set (cached
    teachers count as done at once).
    """
    device = torch.device(device)
    names = tuple(default_teacher_names(data.info, budget) if names is None else names)
    if not names:
        raise DcbenchError(f"the teacher list is empty; valid names: {', '.join(TEACHERS)}")
    for name in names:
        teacher_entry(name)  # fail before training anything
    epochs = squeeze_epochs(data.info.name, budget)
    total = epochs * len(names)
    models, infos, specs = [], [], []
    for i, name in enumerate(names):
        spec = teacher_spec(data, name, epochs=epochs, seed=seed)
        done = i * epochs
        report = None if progress is None else (lambda e, d=done: progress(d + e, total))

        def create(
            name: str = name, spec: dict = spec, report: Callable | None = report
        ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
            model, info = train_teacher(
                data, name, epochs=epochs, seed=spec["seed"], device=device, progress=report
            )
            return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, info

        state, info = create() if cache is None else cache.get("teacher", spec, create)
        model_name, options = teacher_entry(name)
        model = init_model(model_builder(data, model_name, **options), spec["seed"])
        model.load_state_dict(state)
        models.append(model.to(device).eval().requires_grad_(False))
        infos.append({k: info[k] for k in ("name", "test_accuracy", "train_seconds",
                                           "num_parameters", "epochs")})  # fmt: skip
        specs.append(spec)
        if progress is not None:
            progress(done + epochs, total)
    set_spec = {
        "dataset": data.info.name,
        "names": list(names),
        "epochs": epochs,
        "seed": seed,
        "squeeze": asdict(SqueezeRecipe()),
        "teachers": specs,
    }
    return TeacherSet(names, models, infos, set_spec)
