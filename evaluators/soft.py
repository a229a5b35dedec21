"""The soft-label evaluation protocol: EDC's post-evaluation with a fixed teacher ensemble
(spec edc.md §3, §4.1, §8.2–§8.4; DD-Ranking's "any recipe" track, mtt_and_benchmarks.md §2.2).

A fresh student per evaluation seed is trained on the distilled images (decoded first when the set
names a decoder); at every step a frozen teacher ensemble relabels the exact augmented, CutMixed
batch the student sees with its mean raw logits (EDC Eq. 4). The teachers are the same for every
method evaluated under the track (``dcbench.teachers``: trained once on the real train split and
cached); the record names them and counts their parameters as extra stored bytes.

The recipe (:class:`SoftRecipe`, paper values from EDC's CIFAR-10 code, spec §4.1):

- loss ``mse_gt``: MSE(student logits, teacher mean logits) averaged over B·C, + 0.025·CE(student,
  hard label). As in the code, CutMix does not mix the hard label of the CE term (spec §9.13).
  ``kl``: batchmean KL(softmax(z_T/T) ‖ softmax(z_S/T)), ×T² when ``kl_t_squared``;
- AdamW lr 1e-3, betas (0.9, 0.999), weight decay 0.01 on parameters named ``weight`` with ≥ 2
  dimensions (convolutions, linear layers); norm parameters and biases get none;
- batch 25, shuffled, no drop-last; E epochs from the preset (``eval_epochs``: 30 smoke, 300 fast,
  1000 paper); MultiStepLR with milestones at 0.8/0.9/0.95·E (rounded) and γ 0.5, stepped per
  epoch, or EDC's smoothing schedule lr(i) = η·½(1 + cos(iπ/(ζE))) with ζ = 2 (spec §4.2);
- an EMA of the parameters, θ_EMA ← 0.99·θ_EMA + 0.01·θ after every step, starting from the initial
  weights; runs shorter than 500 steps (the ``smoke``/``fast`` presets at small IPC) use
  1 − 5/steps instead, so the initial weights keep ≤ e^−5 of the average (spec §4.3, §8.3: the
  EMA horizon must fit the step count; at 30 steps 0.99 would leave 74 % of the random
  initialisation in the tested network). For testing only the parameters are swapped: buffers
  (batch-norm running statistics) are the live model's, as in the reference code (spec §9.14);
  the default ConvNet has none;
- per-sample augmentation RandAugment (torchvision's, 2 ops, magnitude 9 of 31) →
  RandomResizedCrop (scale (0.08, 1) as the CIFAR-10 code, (0.5, 1) for CIFAR-100, Tiny-ImageNet
  and the small grey datasets; ratio (3/4, 4/3); bilinear) → horizontal flip p 0.5, then CutMix
  (λ ~ Beta(1, 1), one box per batch pasted from a random permutation) on every batch. Digit
  datasets (``digits``, ``mnist``, ``svhn``; and the ``tiny`` test fixture) are never flipped, as
  their teachers (``dcbench.teachers.NO_FLIP_DATASETS``), and 8×8 ``digits`` skip RandAugment
  (16-level 8×8 images, spec §8.3);
- one test of the final-epoch EMA student (``accuracy``); the live student's final accuracy is
  recorded beside it (``accuracy_live``). No best-of-N, no test-set selection (spec §9.15).

``soft-noaug`` is the identical recipe without the student augmentations, for DD-Ranking's
augmentation-robust score: no RandAugment, no RandomResizedCrop, no flip and no CutMix; the student
sees the stored (decoded) images as they are and the teachers label exactly those images. Since the
teachers are frozen and in eval mode, their labels are then the same every epoch and are computed
once.

Deviations, all documented choices: RandAugment runs per image on 8-bit pixels (the set clamped to
[0, 1] and rounded, as saving it to PNG does in the reference pipeline) with torchvision's
implementation seeded from the evaluation's generator; RandomResizedCrop and flips are applied in
normalised space (both commute with the per-channel normalisation) and vectorised over the batch;
sets distilled in ZCA space (MTT) are mapped back to normalised pixels, since the teachers were
trained on normalised images; stored soft labels of a set are ignored (the track relabels); the
``full`` upper bound is not evaluated under this track (its reference is the teachers' accuracy,
recorded as ``teacher_accuracy``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError
from dcbench.evaluator import Evaluator, Progress, register_evaluator
from dcbench.models import build_model
from dcbench.protocol import Preset
from dcbench.teachers import augment_flip, default_teacher_names, load_teachers
from dcbench.training import _batches, _check_finite, _generator, init_model, test_accuracy

LOSSES = ("mse_gt", "kl")
SCHEDULES = ("multistep", "smoothing")


@dataclass(frozen=True)
class SoftRecipe:
    """EDC's student recipe (defaults: the CIFAR-10 code and paper, spec §4.1)."""

    epochs: int = 1000
    batch_size: int = 25
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    schedule: str = "multistep"
    milestones: tuple[float, ...] = (0.8, 0.9, 0.95)  # fractions of the epochs
    gamma: float = 0.5
    zeta: float = 2.0  # smoothing schedule
    ema_decay: float = 0.99
    ema_horizon: float | None = 5.0  # None: always ema_decay (see effective_ema_decay)
    loss: str = "mse_gt"
    ce_weight: float = 0.025
    temperature: float = 1.0  # kl only
    kl_t_squared: bool = False
    augment: bool = True  # False: no RandAugment, crop, flip or CutMix (soft-noaug)
    randaugment: bool = True
    randaugment_ops: int = 2
    randaugment_magnitude: int = 9
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    cutmix: bool = True  # λ ~ Beta(1, 1), every batch

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise DcbenchError(
                f"unknown soft loss {self.loss!r}; valid choices: {', '.join(LOSSES)}"
            )
        if self.schedule not in SCHEDULES:
            raise DcbenchError(
                f"unknown schedule {self.schedule!r}; valid choices: {', '.join(SCHEDULES)}"
            )

    def milestone_epochs(self) -> list[int]:
        """The MultiStepLR milestones scaled to this recipe's epochs (800/900/950 at 1000)."""
        return [int(round(f * self.epochs)) for f in self.milestones]

    def effective_ema_decay(self, steps: int) -> float:
        """The EMA decay of a run of ``steps`` optimiser steps: ``ema_decay`` (0.99), lowered to
        1 − horizon/steps for short runs so that the initial weights keep at most e^−horizon
        (≈ 0.7 %) of the final average. EDC's EMA 0.999 over 2000 steps scores 13 % (spec §4.3):
        the horizon must fit the step count. Every ``paper`` run (≥ 1000 steps) keeps 0.99."""
        if self.ema_horizon is None:
            return self.ema_decay
        return min(self.ema_decay, max(0.0, 1.0 - self.ema_horizon / steps))

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (0-based) ``epoch``; the schedule is stepped per epoch."""
        if self.schedule == "multistep":
            passed = sum(1 for m in self.milestone_epochs() if m <= epoch)
            return self.lr * self.gamma**passed
        return self.lr * 0.5 * (1 + math.cos(epoch * math.pi / (self.zeta * self.epochs)))


#: Per-dataset departures from the CIFAR-10 defaults: RandomResizedCrop scale (0.5, 1) for
#: CIFAR-100 and Tiny-ImageNet (their code, spec §4.4) and the small grey datasets (spec §8.3); no
#: RandAugment on 16-level 8×8 digits (spec §8.3). Flips follow ``dcbench.teachers``: never on
#: digit datasets (or the ``tiny`` fixture, whose classes are fixed pixel patterns).
DATASET_SETTINGS: dict[str, dict[str, Any]] = {
    "cifar100": {"crop_scale": (0.5, 1.0)},
    "tinyimagenet": {"crop_scale": (0.5, 1.0)},
    "digits": {"crop_scale": (0.5, 1.0), "randaugment": False},
    "mnist": {"crop_scale": (0.5, 1.0)},
    "fashionmnist": {"crop_scale": (0.5, 1.0)},
}


def soft_recipe(dataset: str, budget: Preset, *, augment: bool = True) -> SoftRecipe:
    """The recipe for ``dataset`` under ``budget`` (epochs = the preset's ``eval_epochs``)."""
    settings = {"flip": augment_flip(dataset), **DATASET_SETTINGS.get(dataset, {})}
    return replace(SoftRecipe(), epochs=budget.eval_epochs, augment=augment, **settings)


# --- pieces of one step (pure functions of tensors and a generator) ----------------------------


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: ``weight_decay`` on ≥2-D parameters named ``weight``, 0 on the
    rest (norm parameters and biases), as EDC's code."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and name.endswith("weight") else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


@torch.no_grad()
def ema_update_(ema: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float) -> None:
    """θ_EMA ← decay·θ_EMA + (1 − decay)·θ, in place."""
    torch._foreach_mul_(list(ema), decay)
    torch._foreach_add_(list(ema), list(params), alpha=1 - decay)


@torch.no_grad()
def ensemble_logits(teachers: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Mean raw logits of the teachers on ``x`` (EDC Eq. 4)."""
    out = teachers[0](x)
    for teacher in teachers[1:]:
        out = out + teacher(x)
    return out / len(teachers)


def soft_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, recipe: SoftRecipe
) -> torch.Tensor:
    """The student's loss on one batch (``mse_gt`` or ``kl``, see the module docstring)."""
    if recipe.loss == "mse_gt":
        return F.mse_loss(student, teacher) + recipe.ce_weight * F.cross_entropy(student, labels)
    t = recipe.temperature
    loss = F.kl_div(
        F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean"
    )
    return loss * t * t if recipe.kl_t_squared else loss


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=gen.device, dtype=torch.float64) * (high - low) + low


def crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """RandomResizedCrop boxes (top, left, h, w) for ``n`` images, torchvision's rule: the first
    of ``attempts`` draws (area fraction in ``scale``, log-uniform aspect in ``ratio``) that fits,
    else the central crop clamped to ``ratio``. Returns an n×4 int64 tensor."""
    area = height * width
    target = _uniform(n * attempts, *scale, gen).view(n, attempts) * area
    log_r = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), gen)
    aspect = torch.exp(log_r).view(n, attempts)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.int8).argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    found = fits.any(dim=1)
    u_top, u_left = _uniform(n, 0, 1, gen), _uniform(n, 0, 1, gen)
    top = torch.floor(u_top * (height - h + 1)).long()
    left = torch.floor(u_left * (width - w + 1)).long()
    in_ratio = width / height
    if in_ratio < ratio[0]:
        cw, ch = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        cw, ch = int(round(height * ratio[1])), height
    else:
        cw, ch = width, height
    fallback = torch.tensor([(height - ch) // 2, (width - cw) // 2, ch, cw], device=gen.device)
    boxes = torch.stack([top, left, h, w], dim=1)
    return torch.where(found[:, None], boxes, fallback)


def _resize_matrix(start: torch.Tensor, size: torch.Tensor, out: int, full: int) -> torch.Tensor:
    """Per image, the out×full matrix of bilinear resizing (``align_corners=False``) of the
    segment [start, start + size) to ``out`` samples."""
    n = start.shape[0]
    pos = torch.arange(out, device=start.device, dtype=torch.float32)
    src = ((pos + 0.5)[None] * (size[:, None].float() / out) - 0.5).clamp_min(0)
    low = src.floor().long()
    frac = src - low
    low = torch.minimum(low, size[:, None] - 1)
    high = torch.minimum(low + 1, size[:, None] - 1)
    matrix = torch.zeros(n, out, full, device=start.device)
    matrix.scatter_add_(2, (start[:, None] + low)[..., None], (1 - frac)[..., None])
    matrix.scatter_add_(2, (start[:, None] + high)[..., None], frac[..., None])
    return matrix


def resized_crop(x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Crop each image of ``x`` to its box and resize it back to H×W (bilinear). Boxes never
    exceed the image, so this only upsamples and antialiasing changes nothing."""
    _, _, height, width = x.shape
    rows = _resize_matrix(boxes[:, 0], boxes[:, 2], height, height)
    cols = _resize_matrix(boxes[:, 1], boxes[:, 3], width, width)
    return rows[:, None] @ x @ cols[:, None].transpose(-1, -2)


def random_flip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image horizontally with probability ``p``."""
    do = torch.rand(x.shape[0], generator=gen, device=gen.device) < p
    return torch.where(do[:, None, None, None], x.flip(-1), x)


def cutmix(x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, tuple[int, ...]]:
    """EDC's CutMix: λ ~ Beta(1, 1), cut (⌊W·√(1−λ)⌋, ⌊H·√(1−λ)⌋) around a uniform integer
    centre, clipped, pasted from a random permutation of the batch (one box per batch). Returns
    the mixed batch and the box (y1, y2, x1, x2)."""
    n, _, height, width = x.shape
    lam = float(torch.rand((), generator=gen, device=gen.device))
    r = math.sqrt(1.0 - lam)
    cut_w, cut_h = int(width * r), int(height * r)
    cx = int(torch.randint(width, (), generator=gen, device=gen.device))
    cy = int(torch.randint(height, (), generator=gen, device=gen.device))
    x1, x2 = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    y1, y2 = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    perm = torch.randperm(n, generator=gen, device=gen.device)
    mixed = x.clone()
    mixed[:, :, y1:y2, x1:x2] = x[perm][:, :, y1:y2, x1:x2]
    return mixed, (y1, y2, x1, x2)


class Augmenter:
    """The per-sample augmentation chain and CutMix of a recipe, on normalised images."""

    def __init__(self, recipe: SoftRecipe, mean: Sequence[float], std: Sequence[float]) -> None:
        self.recipe = recipe
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self._randaugment = None
        if recipe.augment and recipe.randaugment:
            from torchvision.transforms import v2

            self._randaugment = v2.RandAugment(
                num_ops=recipe.randaugment_ops, magnitude=recipe.randaugment_magnitude
            )

    def randaugment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """torchvision's RandAugment per image on 8-bit pixels, seeded from ``gen``."""
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        pixels = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        seeds = torch.randint(2**62, (x.shape[0],), generator=gen, device=gen.device).tolist()
        out = torch.empty_like(pixels)
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
            for i, seed in enumerate(seeds):
                torch.manual_seed(seed)
                out[i] = self._randaugment(pixels[i])
        return (out.float() / 255 - mean) / std

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        recipe = self.recipe
        if not recipe.augment:
            return x
        if self._randaugment is not None:
            x = self.randaugment(x, gen)
        _, _, height, width = x.shape
        boxes = crop_boxes(x.shape[0], height, width, recipe.crop_scale, recipe.crop_ratio, gen)
        x = resized_crop(x, boxes)
        if recipe.flip:
            x = random_flip(x, gen)
        if recipe.cutmix:
            x, _ = cutmix(x, gen)
        return x


# --- the training function ----------------------------------------------------------------------


@dataclass
class SoftResult:
    """A trained student: the live network, its EMA twin and the last epoch's mean loss."""

    model: nn.Module
    ema_model: nn.Module
    loss: float
    ema_decay: float


def train_student(
    build: Callable[[], nn.Module],
    images: torch.Tensor,
    labels: torch.Tensor,
    teachers: Sequence[nn.Module],
    recipe: SoftRecipe,
    *,
    seed: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    progress: Progress | None = None,
) -> SoftResult:
    """Train one student from scratch on ``images`` with the teachers' mean logits on every
    augmented batch (the recipe in the module docstring). Initialisation, batch order and every
    augmentation draw come from ``seed``; the same seed gives the same student."""
    for teacher in teachers:
        teacher.eval()
        teacher.requires_grad_(False)
    images, labels = images.to(device), labels.to(device)
    gen = _generator(seed, device)
    model = init_model(build, seed).to(device)
    model.train()
    params = [p for p in model.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(
        decay_groups(model, recipe.weight_decay), lr=recipe.lr, betas=recipe.betas, foreach=True
    )
    augment = Augmenter(recipe, mean, std)
    fixed_targets = None if recipe.augment else ensemble_logits(teachers, images)
    steps = math.ceil(images.shape[0] / recipe.batch_size)
    ema_decay = recipe.effective_ema_decay(steps * recipe.epochs)
    loss_sum = torch.zeros((), device=device)
    for epoch in range(recipe.epochs):
        for group in opt.param_groups:
            group["lr"] = recipe.lr_at(epoch)
        loss_sum = torch.zeros((), device=device)
        batches = _batches(images.shape[0], recipe.batch_size, gen, device)
        for idx in batches:
            x = augment(images[idx], gen)
            # the teachers label the final, post-CutMix input (spec §3)
            target = (
                fixed_targets[idx] if fixed_targets is not None else ensemble_logits(teachers, x)
            )
            loss = soft_loss(model(x), target, labels[idx], recipe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema_update_(ema, params, ema_decay)
            loss_sum += loss.detach()
        _check_finite(loss_sum, epoch)
        if progress is not None:
            progress(epoch + 1, recipe.epochs)
    ema_model = copy.deepcopy(model)  # parameters from the EMA, buffers from the live model
    with torch.no_grad():
        for p, e in zip(ema_model.parameters(), ema):
            p.copy_(e)
    return SoftResult(model, ema_model, float(loss_sum) / steps, ema_decay)


def soft_images(
    distilled: DistilledSet, data: RealData, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images in normalised space (decoded; ZCA sets mapped back) and labels."""
    images, labels = distilled.decoded()
    spec = distilled.meta.get("zca")
    if spec is not None:
        from dcbench.zca import zca_from_meta

        pixels = zca_from_meta(data, spec).invert(images.cpu())  # [0, 1] pixel space
        mean = torch.tensor(data.info.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.info.std).view(1, -1, 1, 1)
        images = (pixels - mean) / std
    return images.to(device), labels.to(device)


# --- the evaluator ------------------------------------------------------------------------------


@register_evaluator("soft")
class SoftLabelEvaluator(Evaluator):
    """Final-epoch EMA accuracy of students trained with a teacher ensemble's logits."""

    protocol_version = 1
    label_kind = "soft"
    augment = True

    def __init__(self, teachers: Sequence[str] | None = None) -> None:
        self.teacher_names = tuple(teachers) if teachers is not None else None

    def recipe(self, dataset: str, budget: Preset) -> SoftRecipe:
        return soft_recipe(dataset, budget, augment=self.augment)

    def evaluate(
        self,
        distilled: DistilledSet,
        data: RealData,
        model_name: str,
        *,
        seeds: list[int],
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> list[dict[str, Any]]:
        info = data.info
        distilled.validate(info)
        if distilled.reference is not None:
            raise DcbenchError(
                f"the {self.name} evaluator trains on distilled sets only, not on the whole "
                "train split; its upper bound is the teachers' accuracy (teacher_accuracy)"
            )
        names = self.teacher_names or default_teacher_names(info, budget)
        teacher_set = load_teachers(data, names, budget=budget, device=device, cache=cache)
        images, labels = soft_images(distilled, data, device)
        test_images, test_labels = data.test(device)
        recipe = self.recipe(info.name, budget)
        build = partial(
            build_model, model_name, info.channels, info.num_classes, (info.height, info.width)
        )
        teacher_accuracy = _ensemble_accuracy(teacher_set.models, test_images, test_labels)
        teacher_meta = {
            "teacher_names": list(teacher_set.names),
            "teacher_params": int(teacher_set.num_parameters),
            "teacher_bytes": 4 * int(teacher_set.num_parameters),  # fp32
            "teacher_train_seconds": float(sum(t["train_seconds"] for t in teacher_set.info)),
            "teacher_test_accuracy": [float(t["test_accuracy"]) for t in teacher_set.info],
            "teacher_accuracy": teacher_accuracy,
        }
        out = []
        for i, seed in enumerate(seeds):
            per_seed = None
            if progress is not None:
                per_seed = lambda d, t, i=i: progress(i * t + d, t * len(seeds))  # noqa: E731
            start = time.perf_counter()
            result = train_student(
                build, images, labels, teacher_set.models, recipe, seed=seed, mean=info.mean,
                std=info.std, device=device, progress=per_seed,
            )  # fmt: skip
            out.append({
                "accuracy": test_accuracy(result.ema_model, test_images, test_labels, device),
                "accuracy_live": test_accuracy(result.model, test_images, test_labels, device),
                "train_images": int(images.shape[0]),
                "epochs": recipe.epochs,
                "lr": recipe.lr,
                "loss": result.loss,
                "ema_decay": result.ema_decay,
                "eval_seconds": time.perf_counter() - start,
                **teacher_meta,
            })  # fmt: skip
        return out


@register_evaluator("soft-noaug")
class SoftLabelNoAugEvaluator(SoftLabelEvaluator):
    """The soft-label protocol without student augmentation (DD-Ranking's ARS "naug" arm)."""

    augment = False


@torch.no_grad()
def _ensemble_accuracy(
    teachers: Sequence[nn.Module], images: torch.Tensor, labels: torch.Tensor, batch: int = 500
) -> float:
    correct = 0
    for start in range(0, images.shape[0], batch):
        logits = ensemble_logits(teachers, images[start : start + batch])
        correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    return correct / max(1, images.shape[0])
