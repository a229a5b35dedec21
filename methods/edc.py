"""EDC: Elucidating the Design space of dataset Condensation — the *recover* stage.

Shao, Zhou, Chen, Shen, "Elucidating the Design Space of Dataset Condensation", NeurIPS 2024
(arXiv 2404.13733); reference code ``shaoshitong/EDC`` @ 80116a7 (spec edc.md).

EDC is squeeze → recover → relabel → post-eval. The squeeze (K observers trained on the full train
split) is :mod:`dcbench.teachers`, shared with the soft-label evaluator; relabel and post-eval
belong to that evaluator. This module is the recover (spec §2): starting from random real images
(§2.1), class-major batches of B synthetic images are optimised one after another, each with a fresh
Adam(η = 0.05, betas (0.5, 0.9)) and a cosine learning rate to 0 over T iterations (§2.9). Iteration
t of a batch uses observer k = g mod K, g a global iteration counter never reset between batches
(§2.2), on one batch-shared RandomResizedCrop(scale (s_min, 1)) + flip view (§2.3), and minimises

    L = CE(φ_k(A(X)), y) + λ_r · Σ_ℓ w_ℓ · R_ℓ + λ_FR · L′_FR                      (§2.9)

- R_ℓ = α · Σ_s ‖s̃(X) − s^G‖ + (1 − α) · Σ_c (n_c / B) · Σ_s ‖s̃(X_c) − s_c‖ (soft category-aware
  matching, Eq. 5; :func:`category_aware_term`), ‖·‖ the Euclidean norm, **not squared**
  (:func:`stat_distance`), over the statistics s of the input of every BatchNorm2d and Conv2d:
  channel mean and variance, and for conv inputs the mean and variance of each 4×4 tile pooled
  over channels (§2.4; :func:`sample_moments`). Global targets s^G: BN running statistics, and
  for convs the batch-weighted pre-pass means; class targets s_c: per-sample statistics averaged
  within the class (:func:`observer_statistics`, one pass per observer over the squeeze-augmented
  real train set, cached);
- w_ℓ = 10 for the first hooked layer, 1 otherwise (:func:`first_layer_weighted_sum`);
- s̃ is the straight-through EMA of a synthetic statistic, λ = 0.8 (§2.5,
  :func:`straight_through_ema`): its value is the smoothed statistic, its gradient the current one;
- L′_FR = KL(softmax(φ_k(A(X))/τ) ‖ softmax(φ_k(A(X_EMA))/τ)), X_EMA ← β·X_EMA + (1 − β)·X
  (Eq. 7, :func:`flatness_kl`), weight 0.25, β 0.99, τ 4, on by default (``flatness``).

Images are clamped to the valid pixel range of the dataset's normalisation before every forward
pass and after every step. The output is the last iterate as float32 in normalised space with hard
labels; ``meta["teachers"]`` names the observer set (names, spec and key, test accuracies,
parameters) so the soft-label evaluator can use the same teachers.

**Reference bugs fixed** (spec §9):

- §9.1 checkpoint cadence: observers keep their final weights (:mod:`dcbench.teachers`);
- §9.2 all K observers are trained with one recipe (ConvNetD1/D2/W32 included);
- §9.4/§9.3 statistics are computed once per observer and cached by the teacher's content key
  (no first-run crash, no name collisions);
- §9.5 the per-class tile mean and tile variance are stored under their own names (not swapped);
- §9.6 the category term is per class for mixed batches: each class present is matched with its
  own statistics, weighted n_c / B (the code compares whole-batch statistics with the batch
  average of the class targets); ``class_var_estimator="per_sample_mean"`` matches the synthetic
  class variance to how the target was built (mean within-image variance), ``"batch"`` (default)
  keeps the code's batch variance;
- §9.7 statistic-EMA buffers are reset for every batch (and belong to one observer's hooks only;
  no verifier passes update them);
- §9.9 flatness follows Eq. 7: KL(current ‖ EMA), summed over classes and averaged over the batch
  (Eq. 7 has no τ² factor), weight 0.25 (the code: KL(EMA ‖ current), mean over B·C, weight 1,
  and never enabled);
- §9.10 α is a setting (default 0.5);
- §9.23 no wall-clock seeds: teachers, statistics passes, initialisation and views come from
  ``torch.Generator``\\ s derived from the seeds;
- §9.11 images are kept as floats (no JPEG, no uint8 truncation).

**Deviations**

- Recover crop: RandomResizedCrop scale (0.5, 1) everywhere, the paper's "weak augmentation"
  (App. K.6; the CIFAR-10 code uses 0.08: ``min_scale=0.08``). No flips on digit datasets
  (§8.3; ``flip`` overrides). The EMA copy gets the identical view.
- Real-image initialisation draws each slot uniformly from its class with replacement (§2.1) and
  flips it with p = 0.5 (where flips are allowed), from the generator.
- Statistics pre-pass: batch 64, the squeeze augmentation, eval mode; N_T is the number of images
  actually passed (the code hard-codes it); batches of one image are skipped.
- ``code_compat`` (the code's batch-averaged class targets and tile swap) is not implemented.
- Datasets without published settings (digits, MNIST, Fashion-MNIST, SVHN) use T = 75 and
  B = all images if IPC·C ≤ 100, else IPC (single-class batches), as CIFAR-10.
- Observers: :func:`dcbench.teachers.default_teacher_names` (EDC's eight under ``paper`` on
  CIFAR-like data; four small batch-norm networks for ``fast``/``smoke`` and small images);
  ``teachers`` names a set or a comma-separated list.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError, DivergenceError
from dcbench.matching import class_labels, class_means
from dcbench.method import Method, Progress, register_method
from dcbench.protocol import Preset, content_key, seed_hash
from dcbench.teachers import (
    TEACHER_SETS,
    TeacherSet,
    augment_flip,
    augmented_batches,
    load_teachers,
)

log = logging.getLogger(__name__)

ESTIMATORS = ("batch", "per_sample_mean")
#: Statistic names of a hooked layer's input: channel moments, and tile moments for conv inputs.
CHANNEL_STATS = ("mean", "var")
TILE_STATS = ("tile_mean", "tile_var")
TILE = 4  # tile side (16×16 on ImageNet-1k; 4×4 on CIFAR/Tiny, spec §2.4)


@dataclass(frozen=True)
class EDCConfig:
    """EDC recover settings; defaults are the paper's CIFAR-10 values (spec §5, §8.2)."""

    iterations: int = 75  # T per batch under the paper preset (scaled by the preset)
    batch_size: int | None = None  # B; None: all images if ipc·C ≤ 100, else ipc (class batches)
    lr: float = 0.05  # Adam η on the images (cosine to 0 over T)
    beta1: float = 0.5
    beta2: float = 0.9
    r_weight: float = 0.01  # λ_r, the statistic-matching weight
    alpha: float = 0.5  # soft category-aware mix: α·global + (1 − α)·per-class
    first_layer_weight: float = 10.0  # w of the first hooked layer
    stat_momentum: float = 0.8  # λ of the straight-through statistic EMA (0: plain matching)
    class_var_estimator: str = "batch"  # synthetic class variance: "batch" | "per_sample_mean"
    flatness: bool = True  # L′_FR of Eq. 7
    flatness_weight: float = 0.25
    flatness_beta: float = 0.99
    flatness_tau: float = 4.0
    min_scale: float = 0.5  # RandomResizedCrop scale (min_scale, 1); 0.08 = CIFAR-10 code
    flip: bool | None = None  # horizontal flips of the views; None: off for digit datasets
    teachers: str | None = None  # a teacher-set name or comma-separated names; None: default
    teacher_seed: int = 0  # which trained observers (shared with the soft-label evaluator)
    stats_batch_size: int = 64  # batch of the statistics pre-pass


#: Paper settings per (dataset, ipc) (spec §5): CIFAR-10 B = all (T 75), CIFAR-100/Tiny B = 100,
#: T = 2000.
PAPER_SETTINGS: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): {"batch_size": 10},
    ("cifar10", 10): {"batch_size": 100},
    ("cifar10", 50): {"batch_size": 500},
    **{("cifar100", ipc): {"iterations": 2000, "batch_size": 100} for ipc in (1, 10, 50)},
    **{("tinyimagenet", ipc): {"iterations": 2000, "batch_size": 100} for ipc in (1, 10, 50)},
}


# --------------------------------------------------------------------------------------------------
# Pure loss terms


def stat_distance(synthetic: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖synthetic − target‖₂ over the last dimension, **not squared** (spec §0, §2.6).

    One value per leading row (a scalar for vectors).
    """
    return (synthetic - target).norm(dim=-1)


def category_aware_term(
    global_distance: torch.Tensor,
    class_distances: torch.Tensor,
    class_counts: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """α·global + (1 − α)·Σ_c (n_c / B)·class_c: soft category-aware matching (Eq. 5, §2.6 [R]).

    ``class_distances`` (G,) are the distances of the G classes present, ``class_counts`` (G,)
    their numbers of images n_c (B = Σ n_c).
    """
    weights = class_counts.to(class_distances.dtype) / class_counts.sum()
    return alpha * global_distance + (1 - alpha) * (weights * class_distances).sum()


def first_layer_weighted_sum(terms: torch.Tensor, first_weight: float) -> torch.Tensor:
    """Σ_ℓ w_ℓ·R_ℓ with w = ``first_weight`` for the first hooked layer, 1 otherwise (§2.6)."""
    return first_weight * terms[0] + terms[1:].sum()


def straight_through_ema(
    current: torch.Tensor, buffer: torch.Tensor | None, momentum: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straight-through EMA of a statistic (spec §2.5): ``(matched, new buffer)``.

    The buffer is sg(current) on first use, then λ·buffer + (1 − λ)·sg(current). The matched
    statistic is buffer + current − sg(current): its value is the buffer, its gradient the
    current statistic's. λ = 0 gives plain matching.
    """
    detached = current.detach()
    new = detached if buffer is None else momentum * buffer + (1 - momentum) * detached
    return new + current - detached, new


def flatness_kl(logits: torch.Tensor, ema_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """L′_FR of Eq. 7: KL(softmax(z/τ) ‖ softmax(z_EMA/τ)), summed over classes, batch mean.

    The EMA logits are a constant (no gradient flows into them).
    """
    log_p = F.log_softmax(logits / tau, dim=1)
    log_q = F.log_softmax(ema_logits.detach() / tau, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def cosine_lr(step: int, total: int, base: float) -> float:
    """η_t = ½·η·(1 + cos(π t / T)) for t = 0..T−1, no warm-up (spec §2.9)."""
    return 0.5 * base * (1 + math.cos(math.pi * step / total))


# --------------------------------------------------------------------------------------------------
# Statistics of a layer input


def hooked_layers(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every BatchNorm2d and Conv2d of ``model`` in registration order, and whether it is a conv."""
    return [
        (m, isinstance(m, nn.Conv2d))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))
    ]


class LayerInputs:
    """Context manager capturing the input of every hooked layer during forward passes."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = hooked_layers(model)
        self.inputs: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles: list[Any] = []

    def __enter__(self) -> LayerInputs:
        for i, (module, _) in enumerate(self.layers):
            self._handles.append(module.register_forward_pre_hook(self._hook(i)))
        return self

    def _hook(self, i: int):
        def store(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            self.inputs[i] = args[0]

        return store

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def tiles(a: torch.Tensor) -> torch.Tensor:
    """B×C×H×W → B×P×(C·16): the non-overlapping 4×4 tiles, pooled over channels (§2.4).

    Maps whose sides are not multiples of 4 are first resized bilinearly to 4⌈H/4⌉×4⌈W/4⌉.
    """
    b, c, h, w = a.shape
    hh, ww = TILE * math.ceil(h / TILE), TILE * math.ceil(w / TILE)
    if (hh, ww) != (h, w):
        a = F.interpolate(a, size=(hh, ww), mode="bilinear", align_corners=False)
    a = a.reshape(b, c, hh // TILE, TILE, ww // TILE, TILE).permute(0, 2, 4, 1, 3, 5)
    return a.reshape(b, (hh // TILE) * (ww // TILE), c * TILE * TILE)


def sample_moments(a: torch.Tensor, conv: bool) -> dict[str, torch.Tensor]:
    """Per-sample statistics of a layer input a (B×C×H×W), biased variances.

    ``mean``/``var``: B×C over (h, w); for conv inputs also ``tile_mean``/``tile_var``: B×P over
    (channels, 4×4 pixels) of each tile.
    """
    var, mean = torch.var_mean(a.flatten(2), dim=2, unbiased=False)
    out = {"mean": mean, "var": var}
    if conv:
        tile_var, tile_mean = torch.var_mean(tiles(a), dim=2, unbiased=False)
        out["tile_mean"], out["tile_var"] = tile_mean, tile_var
    return out


def pool_moments(
    per_sample: dict[str, torch.Tensor], groups: torch.Tensor, num_groups: int, estimator: str
) -> dict[str, torch.Tensor]:
    """Statistics of groups of samples (G×d each) from per-sample ones (equal pixels per sample).

    Means are group means of the per-sample means. ``estimator="batch"``: the variance over all
    the group's pixels (the batch statistic: mean within-sample variance + variance of the sample
    means); ``"per_sample_mean"``: the mean within-sample variance (how class targets are built).
    """
    out = {}
    for mean_key, var_key in (CHANNEL_STATS, TILE_STATS):
        if mean_key not in per_sample:
            continue
        mean, _ = class_means(per_sample[mean_key], groups, num_groups)
        var, _ = class_means(per_sample[var_key], groups, num_groups)
        if estimator == "batch":
            second, _ = class_means(per_sample[mean_key].square(), groups, num_groups)
            var = var + second - mean.square()
        out[mean_key], out[var_key] = mean, var
    return out


@dataclass
class LayerTargets:
    """Targets of one hooked layer: global (d each) and per-class (num_classes×d each)."""

    conv: bool
    global_: dict[str, torch.Tensor]
    per_class: dict[str, torch.Tensor]


def observer_statistics(
    model: nn.Module,
    data: RealData,
    *,
    generator: torch.Generator,
    batch_size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """One pass over the squeeze-augmented real train set through ``model`` (eval mode) (§1.3).

    Returns flat tensors ``{layer}.global.{stat}`` and ``{layer}.class.{stat}`` per hooked layer:
    BN global targets are the module's running statistics; conv global targets the
    batch-size-weighted mean of the batch statistics (channel and tile moments); class targets the
    per-sample statistics averaged over the class's images, for every layer.
    """
    model.eval()
    num_classes = data.info.num_classes
    sums: dict[str, torch.Tensor] = {}
    counts = torch.zeros(num_classes, device=device)
    total = 0
    with torch.no_grad(), LayerInputs(model) as hooks:
        for x, y, _ in augmented_batches(data, generator, batch_size, device=device):
            model(x)
            counts += torch.bincount(y, minlength=num_classes)
            total += y.numel()
            for i, ((_, conv), a) in enumerate(zip(hooks.layers, hooks.inputs)):
                per_sample = sample_moments(a, conv)
                for key, value in per_sample.items():
                    by_class = value.new_zeros(num_classes, value.shape[1]).index_add_(0, y, value)
                    _accumulate(sums, f"{i}.class.{key}", by_class)
                if conv:
                    batch = pool_moments(per_sample, torch.zeros_like(y), 1, "batch")
                    for key, value in batch.items():
                        _accumulate(sums, f"{i}.global.{key}", value[0] * y.numel())
    out: dict[str, torch.Tensor] = {}
    for key, value in sums.items():
        divisor = total if ".global." in key else counts.clamp(min=1)[:, None]
        out[key] = value / divisor
    for i, (module, conv) in enumerate(hooked_layers(model)):
        if not conv:
            out[f"{i}.global.mean"] = module.running_mean.detach().clone()
            out[f"{i}.global.var"] = module.running_var.detach().clone()
    return out


def _accumulate(sums: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    sums[key] = value if key not in sums else sums[key] + value


def layer_targets(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[LayerTargets]:
    """The flat statistics of :func:`observer_statistics` as one :class:`LayerTargets` per layer."""
    targets = []
    for i, (_, conv) in enumerate(hooked_layers(model)):
        keys = CHANNEL_STATS + (TILE_STATS if conv else ())
        targets.append(
            LayerTargets(
                conv,
                {k: tensors[f"{i}.global.{k}"] for k in keys},
                {k: tensors[f"{i}.class.{k}"] for k in keys},
            )
        )
    return targets


def teacher_statistics(
    teachers: TeacherSet,
    data: RealData,
    *,
    batch_size: int,
    device: torch.device,
    cache: ArtifactCache | None,
) -> list[list[LayerTargets]]:
    """Targets of every observer, each computed once per cache (kind ``edc-statistics``)."""
    out = []
    for model, spec in zip(teachers.models, teachers.spec["teachers"]):
        stats_spec = {"teacher": spec, "batch_size": batch_size, "tile": TILE, "version": 1}
        seed = seed_hash(content_key(stats_spec), "edc-statistics")

        def create(model: nn.Module = model, seed: int = seed):
            generator = torch.Generator().manual_seed(seed)
            tensors = observer_statistics(
                model, data, generator=generator, batch_size=batch_size, device=device
            )
            return tensors, {"layers": len(hooked_layers(model))}

        tensors, _ = create() if cache is None else cache.get("edc-statistics", stats_spec, create)
        tensors = {k: v.to(device) for k, v in tensors.items()}
        out.append(layer_targets(model, tensors))
    return out


# --------------------------------------------------------------------------------------------------
# The recover objective


@dataclass
class StatisticLoss:
    """Σ_ℓ w_ℓ·R_ℓ of one observer on a synthetic batch, with per-batch EMA buffers."""

    alpha: float
    first_weight: float
    momentum: float
    estimator: str
    buffers: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def __call__(
        self,
        observer: int,
        inputs: Sequence[torch.Tensor],
        targets: Sequence[LayerTargets],
        labels: torch.Tensor,
    ) -> torch.Tensor:
        present, groups, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        whole = torch.zeros_like(labels)
        terms = []
        for layer, (a, target) in enumerate(zip(inputs, targets)):
            per_sample = sample_moments(a, target.conv)
            batch = pool_moments(per_sample, whole, 1, "batch")
            per_class = pool_moments(per_sample, groups, present.numel(), self.estimator)
            global_distance = a.new_zeros(())
            class_distances = a.new_zeros(present.numel())
            for key in batch:
                value = self._smooth((observer, layer, "global", key), batch[key][0])
                global_distance = global_distance + stat_distance(value, target.global_[key])
                value = self._smooth((observer, layer, "class", key), per_class[key])
                class_target = target.per_class[key][present]
                class_distances = class_distances + stat_distance(value, class_target)
            terms.append(category_aware_term(global_distance, class_distances, counts, self.alpha))
        return first_layer_weighted_sum(torch.stack(terms), self.first_weight)

    def _smooth(self, key: tuple, value: torch.Tensor) -> torch.Tensor:
        matched, self.buffers[key] = straight_through_ema(
            value, self.buffers.get(key), self.momentum
        )
        return matched


def crop_box(
    height: int, width: int, min_scale: float, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(top, left, h, w)``: scale (min_scale, 1), ratio (3/4, 4/3).

    torchvision's sampler (10 tries, then the central crop of clamped ratio) on ``generator``.
    """
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target = area * (min_scale + (1 - min_scale) * u[0])
        ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        h, w = height, round(height * (4 / 3))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def shared_view(
    x: torch.Tensor, box: tuple[int, int, int, int], flip: bool
) -> torch.Tensor:  # fmt: skip
    """The batch-shared view: crop ``box``, bilinear resize back to H×W, optional flip (§2.3)."""
    top, left, h, w = box
    out = x[:, :, top : top + h, left : left + w]
    if (h, w) != tuple(x.shape[-2:]):
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out.flip(3) if flip else out


def pixel_bounds(data: RealData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel [−m/s, (1 − m)/s]: the valid range of normalised pixels (1×C×1×1 each)."""
    mean = torch.tensor(data.info.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.info.std, device=device).view(1, -1, 1, 1)
    return -mean / std, (1 - mean) / std


def real_initialisation(
    data: RealData, ipc: int, generator: torch.Generator, *, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-major real images (normalised), one uniform draw per slot with replacement (§2.1).

    Each image is flipped with p = 0.5 when ``flip``. Returns the images and their train indices.
    """
    picks = [
        idx[torch.randint(idx.numel(), (ipc,), generator=generator)] for idx in data.class_indices
    ]
    indices = torch.cat(picks)
    images = data.normalize(data.train_images[indices])
    if flip:
        flips = torch.rand(indices.numel(), generator=generator) < 0.5
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(3), images)
    return images, indices


def resolve_teacher_names(spec: str | None) -> tuple[str, ...] | None:
    """``teachers`` setting → names: a :data:`TEACHER_SETS` name, a comma list, or ``None``."""
    if spec is None or not spec.strip():
        return None
    if spec.strip() in TEACHER_SETS:
        return TEACHER_SETS[spec.strip()]
    return tuple(name.strip() for name in spec.split(",") if name.strip())


@dataclass
class RecoverState:
    """What persists across batches: the global observer counter and the loss trace."""

    counter: int = 0
    trace: list[tuple[int, float, float]] = field(default_factory=list)


def recover_batch(
    x0: torch.Tensor,
    labels: torch.Tensor,
    teachers: TeacherSet,
    targets: Sequence[Sequence[LayerTargets]],
    config: EDCConfig,
    *,
    iterations: int,
    bounds: tuple[torch.Tensor, torch.Tensor],
    flip: bool,
    generator: torch.Generator,
    state: RecoverState,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise one batch for ``iterations`` steps (§2.9, procedure per batch).

    Returns the last iterate and the total loss of every iteration; ``state`` carries the global
    observer counter across batches and collects (counter, first loss, last loss) per batch.
    """
    low, high = bounds
    x = x0.clone().clamp_(low, high).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=config.lr, betas=(config.beta1, config.beta2))
    x_ema = x.detach().clone()
    statistic_loss = StatisticLoss(
        config.alpha, config.first_layer_weight, config.stat_momentum, config.class_var_estimator
    )  # fresh EMA buffers for every batch (§9.7)
    height, width = x.shape[-2:]
    num_observers = len(teachers.models)
    losses: list[float] = []
    for t in range(iterations):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(t, iterations, config.lr)
        box = crop_box(height, width, config.min_scale, generator)
        flipped = flip and bool(torch.rand(1, generator=generator) < 0.5)
        k = state.counter % num_observers
        state.counter += 1
        model = teachers.models[k]
        with torch.no_grad():
            x.clamp_(low, high)
        with LayerInputs(model) as hooks:
            logits = model(shared_view(x, box, flipped))
        loss = F.cross_entropy(logits, labels)
        loss = loss + config.r_weight * statistic_loss(k, hooks.inputs, targets[k], labels)
        if config.flatness:
            with torch.no_grad():
                ema_logits = model(shared_view(x_ema, box, flipped))
            loss = loss + config.flatness_weight * flatness_kl(
                logits, ema_logits, config.flatness_tau
            )
            x_ema.mul_(config.flatness_beta).add_(x.detach(), alpha=1 - config.flatness_beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(low, high)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(f"EDC diverged: loss {value} at iteration {t}")
        losses.append(value)
    if losses:
        state.trace.append((state.counter, round(losses[0], 6), round(losses[-1], 6)))
    return x.detach(), losses


def batch_size_for(config: EDCConfig, ipc: int, num_classes: int) -> int:
    """B: the setting, else all images if ipc·C ≤ 100, else ipc (single-class batches)."""
    if config.batch_size is not None:
        return config.batch_size
    total = ipc * num_classes
    return total if total <= 100 else ipc


@register_method("edc")
class EDC(Method):
    """EDC recover: multi-observer statistic matching with soft category-aware targets."""

    Config = EDCConfig
    paper_settings = PAPER_SETTINGS
    label_kind = "soft"

    def distill(
        self,
        data: RealData,
        ipc: int,
        config: EDCConfig,
        *,
        seed: int,
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> DistilledSet:
        _check(config, ipc, data)
        device = torch.device(device)
        teachers = load_teachers(
            data, resolve_teacher_names(config.teachers), budget=budget, device=device,
            cache=cache, seed=config.teacher_seed, progress=progress,
        )  # fmt: skip
        targets = teacher_statistics(
            teachers, data, batch_size=config.stats_batch_size, device=device, cache=cache
        )
        generator = torch.Generator().manual_seed(seed)
        flip = augment_flip(data.info.name) if config.flip is None else config.flip
        images, init_indices = real_initialisation(data, ipc, generator, flip=flip)
        labels = class_labels(data.info.num_classes, ipc)
        batch = batch_size_for(config, ipc, data.info.num_classes)
        iterations = budget.iterations(config.iterations)
        bounds = pixel_bounds(data, device)
        state = RecoverState()
        out = []
        starts = range(0, images.shape[0], batch)
        for b, start in enumerate(starts):
            x, _ = recover_batch(
                images[start : start + batch].to(device), labels[start : start + batch].to(device),
                teachers, targets, config, iterations=iterations, bounds=bounds, flip=flip,
                generator=generator, state=state,
            )  # fmt: skip
            out.append(x.cpu())
            if progress is not None:
                progress(b + 1, len(starts))
        meta = {
            "iterations": iterations,
            "batch_size": batch,
            "loss_trace": state.trace,
            "init_indices": init_indices.tolist(),
            "teachers": {
                "names": list(teachers.names),
                "spec": teachers.spec,
                "key": content_key(teachers.spec),
                "info": teachers.info,
                "num_parameters": teachers.num_parameters,
            },
        }
        return DistilledSet(torch.cat(out), labels, meta=meta)


def _check(config: EDCConfig, ipc: int, data: RealData) -> None:
    if ipc < 1:
        raise DcbenchError(f"ipc must be a positive integer, got {ipc}")
    if config.class_var_estimator not in ESTIMATORS:
        raise DcbenchError(
            f"unknown class_var_estimator {config.class_var_estimator!r}; "
            f"valid choices: {', '.join(ESTIMATORS)}"
        )
    if config.iterations < 0:
        raise DcbenchError(f"iterations must be ≥ 0, got {config.iterations}")
    if config.batch_size is not None and config.batch_size < 1:
        raise DcbenchError(f"batch_size must be positive, got {config.batch_size}")
    if not 0 < config.min_scale <= 1:
        raise DcbenchError(f"min_scale must lie in (0, 1], got {config.min_scale}")
    if not 0 <= config.alpha <= 1:
        raise DcbenchError(f"alpha must lie in [0, 1], got {config.alpha}")
