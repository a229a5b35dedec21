"""Distribution Matching (DM).

Zhao & Bilen, "Dataset Condensation with Distribution Matching", WACV 2023 (arXiv 2110.04181);
reference code ``VICO-UoE/DatasetCondensation`` ``main_DM.py`` @ 53f63a6 (spec dm_idm_bacon.md §2).

The synthetic set starts from ``ipc`` distinct random real images per class. Every iteration draws a
fresh randomly initialised ConvNet ψ (frozen, never trained), a real batch B_c of ``batch_real``
images of every class and one siamese DSA transformation A_c per class, shared by the class's real
and synthetic images, and takes one SGD step (lr ``lr_img``, momentum 0.5, no weight decay; momentum
carried across iterations) on the whole synthetic tensor S for

    L(S) = Σ_c ‖ mean_{x∈B_c} ψ(A_c(x)) − mean_{s∈S_c} ψ(A_c(s)) ‖²₂      (:func:`dm_loss`)

with ψ the flattened input of the ConvNet's classifier (2048-d at 28/32 px, spec §1.2).

Deviations from the reference code (none changes the algorithm):

- Randomness: real batches, DSA draws and a noise initialisation come from one ``torch.Generator``
  seeded with ``seed``; the network of iteration ``it`` is drawn from ``seed_hash(seed, "dm-net",
  it)``. The reference seeds networks and DSA from the wall clock and re-seeds the global RNG
  (spec §1.3, §9.13); the global RNG is left untouched here.
- No intermediate evaluations: the reference evaluates every 2000 iterations (and before the
  first update); the runner evaluates the final set once. The reference loop runs
  ``Iteration + 1`` updates and evaluates *before* the last one (spec §9.10); we run
  ``iterations`` updates and return the set the reference evaluates at ``it = Iteration``.
- DSA scale/rotate resample with ``align_corners=False`` (torch ≥ 1.3; DM pinned torch 1.2, whose
  default was ``True``; spec §9.18).
- All classes go through the network together (real images under ``no_grad``, on the CPU in
  cache-sized chunks; synthetic images in one batch) instead of one pass per class. With instance
  norm every image is normalised on its own, so the embeddings are the reference's (up to
  floating-point summation order); for batch-norm models one batch of all classes is the
  reference's ``ConvNetBN`` branch. A real batch is a uniformly random subset of the class, as
  the reference's ``permutation(class)[:batch_real]``, drawn for all classes at once.
- ``init="noise"`` draws N(0, 1) pixels in normalised space from the generator, as the reference's
  ``torch.randn``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from dcbench.augment import DEFAULT_STRATEGY, DSA
from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError, DivergenceError
from dcbench.matching import (
    ClassBatchSampler,
    class_labels,
    embed,
    mean_matching_loss,
    model_builder,
    random_network,
    siamese_augment,
)
from dcbench.method import Method, Progress, register_method
from dcbench.models import Classifier
from dcbench.protocol import Preset, seed_hash
from dcbench.sampling import sample_per_class

log = logging.getLogger(__name__)

INITS = ("real", "noise")


@dataclass(frozen=True)
class DMConfig:
    """DM's settings; defaults are ``main_DM.py``'s with the README command (spec §2.3)."""

    iterations: int = 20000  # image updates under the paper preset (scaled by the preset)
    lr_img: float = 1.0  # SGD learning rate of the synthetic images
    momentum: float = 0.5  # SGD momentum of the synthetic images (no weight decay)
    batch_real: int = 256  # real images per class per iteration (capped by the class size)
    init: str = "real"  # "real": random real images; "noise": N(0, 1) in normalised space
    dsa_strategy: str = DEFAULT_STRATEGY  # siamese DSA families ("none" disables)
    model: str = "convnet"  # embedding network (a fresh random one per iteration)
    width: int | None = None  # model width (None: the model's default, 128 for the ConvNet)
    depth: int | None = None  # ConvNet depth (None: 3 up to 32 px, 4 at 64 px)


#: Paper settings per (dataset, ipc). DM README: "--lr_img 10 for --ipc = 100/200/500/1000/1250"
#: on CIFAR-10 (1 otherwise and on CIFAR-100). Tiny ImageNet: depth 4 at 64 px, as DC-bench's DM
#: Tiny sets (``res_DM_…_ConvNetD4_…``, spec mtt_and_benchmarks.md §1.2) and the depth rule there.
PAPER_SETTINGS: dict[tuple[str, int], dict[str, Any]] = {
    **{("cifar10", ipc): {"lr_img": 10.0} for ipc in (100, 200, 500, 1000, 1250)},
    **{("tinyimagenet", ipc): {"depth": 4} for ipc in (1, 10, 50)},
}


def dm_loss(
    real_emb: torch.Tensor,
    real_class: torch.Tensor,
    syn_emb: torch.Tensor,
    syn_class: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """DM's objective: Σ_c ‖mean of c's real embeddings − mean of c's synthetic ones‖².

    The squared differences are summed over the embedding dimensions (not averaged) and over the
    classes, as ``main_DM.py`` does (spec §2.1; first moment only, a linear-kernel MMD).
    """
    return mean_matching_loss(real_emb, real_class, syn_emb, syn_class, num_classes)


def dm_objective(
    net: Classifier,
    real: torch.Tensor,
    real_class: torch.Tensor,
    syn: torch.Tensor,
    syn_class: torch.Tensor,
    num_classes: int,
    dsa: DSA,
    generator: torch.Generator,
) -> torch.Tensor:
    """One iteration's loss: siamese DSA per class, embeddings (real: no graph), :func:`dm_loss`."""
    real_aug, syn_aug = siamese_augment(
        dsa, real, real_class, syn, syn_class, num_classes, generator
    )
    real_emb = embed(net, real_aug, requires_grad=False)
    syn_emb = embed(net, syn_aug)
    return dm_loss(real_emb, real_class, syn_emb, syn_class, num_classes)


def initial_images(
    data: RealData, ipc: int, init: str, generator: torch.Generator
) -> tuple[torch.Tensor, list[int] | None]:
    """The starting synthetic set (class-major, normalised) and the real indices it copies."""
    info = data.info
    if init == "real":
        idx = sample_per_class(data, ipc, generator)
        return data.normalize(data.train_images[idx]), idx.tolist()
    shape = (info.num_classes * ipc, *info.image_shape)
    return torch.randn(shape, generator=generator), None


@register_method("dm")
class DistributionMatching(Method):
    """DM: match per-class mean embeddings of real and synthetic images under random ConvNets."""

    Config = DMConfig
    paper_settings = PAPER_SETTINGS

    def distill(
        self,
        data: RealData,
        ipc: int,
        config: DMConfig,
        *,
        seed: int,
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> DistilledSet:
        _check(config, ipc)
        num_classes = data.info.num_classes
        device = torch.device(device)
        generator = torch.Generator().manual_seed(seed)
        build = model_builder(data, config.model, width=config.width, depth=config.depth)
        sampler = ClassBatchSampler(data, device)
        dsa = DSA(config.dsa_strategy)

        images, init_indices = initial_images(data, ipc, config.init, generator)
        syn = images.to(device).requires_grad_(True)
        labels = class_labels(num_classes, ipc)
        syn_class = labels.to(device)
        optimizer = torch.optim.SGD([syn], lr=config.lr_img, momentum=config.momentum)

        total = budget.iterations(config.iterations)
        every = max(1, math.ceil(total / 20))
        trace: list[tuple[int, float]] = []
        for it in range(total):
            net = random_network(build, seed_hash(seed, "dm-net", it), device)
            real = sampler.sample(config.batch_real, generator)
            loss = dm_objective(
                net, real.images, real.classes, syn, syn_class, num_classes, dsa, generator
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if it % every == 0 or it == total - 1:
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise DivergenceError(f"DM diverged: loss {value} at iteration {it}")
                trace.append((it, round(value, 6)))
                log.debug("dm iteration %d/%d: loss %.4f", it + 1, total, value)
            if progress is not None:
                progress(it + 1, total)
        meta = {"iterations": total, "loss_trace": trace, "init_indices": init_indices}
        return DistilledSet(syn.detach().cpu(), labels, meta=meta)


def _check(config: DMConfig, ipc: int) -> None:
    if config.init not in INITS:
        raise DcbenchError(f"unknown DM init {config.init!r}; valid choices: {', '.join(INITS)}")
    if ipc < 1:
        raise DcbenchError(f"ipc must be a positive integer, got {ipc}")
    if config.iterations < 0:
        raise DcbenchError(f"iterations must be ≥ 0, got {config.iterations}")
    if config.batch_real < 1:
        raise DcbenchError(f"batch_real must be positive, got {config.batch_real}")
