"""IDM: Improved Distribution Matching (Zhao, Li, Qin, Yu, CVPR 2023, arXiv 2307.09742).

Reference: ``uitrbn/IDM`` @ fe23bbc (spec dm_idm_bacon.md §3, settings §6). Per iteration, one
network drawn from a FIFO pool of partially trained ConvNets embeds, per class, a real batch and the
class's synthetic images decoded by the 2×2 partition-and-expansion (4·ipc images per class), both
under one siamese DSA draw; the loss per class is ‖μ_syn − μ_real‖² + λ_ce·a_θ·CE(syn logits, c)
with a_θ the network's training accuracy in percent since the last meter reset; one SGD step on the
shared image tensor after each class; then two pool members train a few steps on real batches.
BACON (``methods/bacon.py``) changes only the matching term, so both share this implementation.

Deviations from the reference code, none of which changes the algorithm:

- Randomness comes from generators derived from the seed (the reference seeds from the wall clock).
- The per-class optimiser steps are computed in closed form for all classes at once
  (``dcbench.classwise_sgd``; exact up to floating-point rounding): one forward pass of every
  class's decoded images instead of C passes. Real batches and DSA draws of all classes are drawn
  together (same distribution as drawing them class by class).
- Intermediate evaluations are not run (the runner evaluates the final set), but the accuracy
  meters are still reset at multiples of ``eval_interval``, which sets the CE weight (§9.5).
- The real branch runs without an autograd graph, and the embedding network's parameters get no
  gradient from the image loss (the reference computes and discards it, §9.12).
- ``iterations`` updates are run (the reference loops ``Iteration + 1`` times and saves the tensor
  after one extra update, §9.10); the last set is reported, never the best-on-test one (§9.9).
- Only networks without batch norm are accepted: with per-sample normalisation a batch of all
  classes gives exactly the reference's per-class passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcbench.augment import DEFAULT_STRATEGY, DSA
from dcbench.cache import ArtifactCache
from dcbench.classwise_sgd import ClasswiseSGD
from dcbench.data import RealData
from dcbench.distilled import DistilledSet, decode_partition2x2
from dcbench.errors import DcbenchError, DivergenceError
from dcbench.matching import ClassBatchSampler, class_labels, class_means, embed, model_builder
from dcbench.method import Method, Progress, register_method
from dcbench.pool import NetworkPool
from dcbench.protocol import Preset, seed_hash
from dcbench.training import init_model


@dataclass(frozen=True)
class IDMConfig:
    """IDM/BACON settings; defaults are the reference's flags with the released commands' common
    options (``--lr_img 0.2 --net_decay --syn_ce --train_net_num 1 --aug --init real``)."""

    iterations: int = 20000
    lr_img: float = 0.2
    momentum_img: float = 0.5
    batch_real: int = 256  # per class, capped by the class size
    syn_ce: bool = True
    ce_weight: float = 0.1
    eval_interval: int = 100  # meter-reset period (the reference evaluates there)
    net_generate_interval: int = 30
    model_train_steps: int = 10
    net_num: int = 100  # pool capacity
    initial_nets: int = 3
    net_push_num: int = 1
    train_net_num: int = 1  # pool networks used for matching per iteration
    fetch_net_num: int = 2  # pool networks trained per iteration
    trained_bs: int = 256
    lr_net: float = 0.01
    net_momentum: float = 0.9
    net_weight_decay: float = 5e-4
    outer_loop: int = 1
    init: str = "mosaic"  # mosaic (4 half-resolution real images per stored image) | full | noise
    dsa_strategy: str = DEFAULT_STRATEGY
    model: str = "convnet"
    width: int | None = None
    depth: int | None = None
    real_chunk: int = 1024  # real images per forward pass off the CPU (memory only)


def _rows(eval_interval: int, ce_weight: float, batch_real: int, interval: int, steps: int):
    return {
        "eval_interval": eval_interval, "ce_weight": ce_weight, "batch_real": batch_real,
        "net_generate_interval": interval, "model_train_steps": steps,
    }  # fmt: skip


# spec §6: the released commands of IDM (command.txt)
IDM_SETTINGS: dict[tuple[str, int], dict[str, Any]] = {
    ("cifar10", 1): _rows(100, 0.5, 5000, 5, 10),
    ("cifar10", 10): _rows(100, 0.5, 256, 30, 10),
    ("cifar10", 50): _rows(500, 0.1, 256, 30, 10),
    ("cifar100", 1): _rows(100, 0.5, 5000, 5, 10),
    ("cifar100", 10): _rows(100, 0.1, 256, 30, 50),
    ("cifar100", 50): _rows(500, 0.1, 256, 30, 10),
    # IDM's Tiny script initialises full-resolution images (its condition is inverted, §9.8) and
    # embeds with ConvNet-3 at 64 px (d = 8192, §1.2)
    ("tinyimagenet", 1): {**_rows(100, 0.5, 256, 30, 10), "init": "full", "depth": 3},
    ("tinyimagenet", 10): {**_rows(500, 0.5, 256, 30, 10), "init": "full", "depth": 3},
    ("tinyimagenet", 50): {**_rows(1000, 0.8, 256, 30, 50), "init": "full", "depth": 3},
}

# BACON's historic MNIST/Fashion-MNIST and SVHN commands are copies of the CIFAR-10 ones (§5.3); the
# same rows, keyed by IPC band, are the documented fallback for any other (dataset, ipc).
FALLBACK_BY_IPC = {
    1: _rows(100, 0.5, 5000, 5, 10),
    10: _rows(100, 0.5, 256, 30, 10),
    50: _rows(500, 0.1, 256, 30, 10),
}


def fallback_settings(ipc: int) -> dict[str, Any]:
    """The CIFAR-10 command row of the IPC band: ipc < 10 → ipc 1, < 50 → ipc 10, else ipc 50."""
    return dict(FALLBACK_BY_IPC[_band(ipc)])


def _band(ipc: int) -> int:
    return 1 if ipc < 10 else 10 if ipc < 50 else 50


# dcbench's own rows for datasets no paper covers, chosen on a validation split carved from the
# train split (benchmarks/tune_settings.py, results in benchmarks/results/tune_settings.md); they
# are not paper settings. digits: the CIFAR-10 rows with ce_weight 0.05 instead of 0.5. With
# 0.5 the accuracy-weighted CE (pool nets fit digits to ~90%, so λ_ce·a_θ ≈ 45) swamps the
# matching term of the 128-d embedding and 200 updates lower held-out accuracy below the mosaic
# initialisation (71.2% vs 76.2%); 0.05 raises it to 84.0% (IDM, IPC 1). IPC 10 and BACON take
# the same value (searched for IDM at IPC 1 only). Other IPCs use their band's row.
TUNED_SETTINGS: dict[tuple[str, int], dict[str, Any]] = {
    ("digits", band): {**row, "ce_weight": 0.05} for band, row in FALLBACK_BY_IPC.items()
}


def idm_matching_loss(
    mu_syn: torch.Tensor, mu_real: torch.Tensor, std_real: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-class IDM matching term ‖μ_syn − μ_real‖² (C×d inputs → C losses)."""
    return (mu_syn - mu_real).pow(2).sum(dim=1)


def mosaic_init(data: RealData, ipc: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Initial stored images (normalised, class-major), spec §1.4.

    ``mosaic``: each quadrant of the ipc images of class c holds a real image of class c
    downsampled ×0.5 (bilinear, align_corners=False, i.e. a 2×2 average for even sizes); each of
    the four quadrants draws its own ipc distinct images. ``full``: ipc distinct real images.
    ``noise``: standard normal values.
    """
    c, h, w = data.info.image_shape
    if mode == "noise":
        return torch.randn(data.info.num_classes * ipc, c, h, w, generator=generator)
    blocks = []
    for idx in data.class_indices:
        if ipc > idx.numel():
            raise DcbenchError(f"ipc {ipc} exceeds a class of {data.info.name}")

        def draw(idx: torch.Tensor = idx) -> torch.Tensor:
            pick = idx[torch.randperm(idx.numel(), generator=generator)[:ipc]]
            return data.normalize(data.train_images[pick])

        if mode == "full":
            blocks.append(draw())
            continue
        if mode != "mosaic":
            raise DcbenchError(f"unknown init {mode!r}; valid choices: mosaic, full, noise")
        out = torch.empty(ipc, c, h, w)
        hh, hw = h // 2, w // 2
        for rows, cols in ((slice(0, hh), slice(0, hw)), (slice(hh, h), slice(0, hw)),
                           (slice(0, hh), slice(hw, w)), (slice(hh, h), slice(hw, w))):  # fmt: skip
            small = F.interpolate(draw(), size=(hh, hw), mode="bilinear", align_corners=False)
            out[:, :, rows, cols] = small
        blocks.append(out)
    return torch.cat(blocks)


@register_method("idm")
class IDM(Method):
    """IDM (CVPR'23): pool of trained networks, 2×2 partition decoding, accuracy-weighted CE."""

    Config = IDMConfig
    paper_settings: ClassVar[dict] = IDM_SETTINGS
    tuned_settings: ClassVar[dict] = TUNED_SETTINGS
    #: whether the matching term needs the per-dimension std of the real embeddings (BACON)
    needs_real_std: ClassVar[bool] = False

    def settings_for(self, dataset: str, ipc: int) -> dict[str, Any]:
        """The paper row, else dcbench's tuned row of the IPC band, else the CIFAR-10 row of the
        IPC band (:func:`fallback_settings`)."""
        if (dataset, ipc) in self.paper_settings:
            return dict(self.paper_settings[(dataset, ipc)])
        if (dataset, _band(ipc)) in self.tuned_settings:
            return dict(self.tuned_settings[(dataset, _band(ipc))])
        return fallback_settings(ipc)

    def matching_loss(
        self, mu_syn: torch.Tensor, mu_real: torch.Tensor, std_real: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-class matching term (C losses) from C×d class means."""
        return idm_matching_loss(mu_syn, mu_real)

    def distill(
        self,
        data: RealData,
        ipc: int,
        config: IDMConfig,
        *,
        seed: int,
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> DistilledSet:
        device = torch.device(device)
        info = data.info
        num_classes = info.num_classes
        gen = torch.Generator().manual_seed(seed)
        build = model_builder(data, config.model, width=config.width, depth=config.depth)
        probe = init_model(build, 0)  # leaves the global RNG alone
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
            raise DcbenchError(
                f"{self.name} needs a network without batch norm (got {config.model!r}): its "
                "classes are matched in one batch, exact only with per-sample normalisation"
            )
        if info.height % 2 or info.width % 2:
            raise DcbenchError(f"{self.name}'s 2×2 partition needs even image sizes")

        images = mosaic_init(data, ipc, config.init, gen).to(device)
        labels = class_labels(num_classes, ipc)
        row_class = labels.to(device)
        optimizer = ClasswiseSGD(
            images, row_class, num_classes, lr=config.lr_img, momentum=config.momentum_img
        )
        pool = NetworkPool(
            build, data, capacity=config.net_num, lr=config.lr_net, momentum=config.net_momentum,
            weight_decay=config.net_weight_decay, seed=seed_hash(seed, "pool"), device=device,
        )  # fmt: skip
        for _ in range(config.initial_nets):
            pool.push()
        sampler = ClassBatchSampler(data, device)
        dsa = DSA(config.dsa_strategy)
        total = budget.iterations(config.iterations)
        for it in range(total):
            if it > 0 and it % config.eval_interval == 0:
                pool.reset_meters()  # where the reference evaluates (§3.3a): sets the CE weight
            if it % config.net_generate_interval == 0:
                for _ in range(config.net_push_num):
                    pool.push()
            for _ in range(config.outer_loop):
                for member in pool.choose(config.train_net_num, gen):
                    weight = config.ce_weight * member.accuracy_percent() if config.syn_ce else 0.0
                    loss = self._match_step(
                        member.net, optimizer, sampler, dsa, labels, config, weight, gen
                    )
                    if not math.isfinite(loss):
                        raise DivergenceError(f"{self.name} loss became {loss} at iteration {it}")
                pool.train(config.fetch_net_num, config.model_train_steps, config.trained_bs, gen)
            if progress is not None:
                progress(it + 1, total)
        return DistilledSet(
            images.detach().cpu(), labels, decoder="partition2x2",
            meta={"iterations": total, "pool_size": len(pool.members)},
        )  # fmt: skip

    def _match_step(self, net, optimizer, sampler, dsa, labels, config, ce_weight, gen) -> float:
        """One iteration's class loop on one network, all classes at once (closed-form steps)."""
        num_classes = sampler.num_classes
        net.eval()
        net.requires_grad_(False)
        _, _, h, w = optimizer.images.shape
        draw = dsa.sample(num_classes, h, w, gen, one_family=False) if dsa.enabled else None
        mu_real, std_real = self._real_statistics(net, sampler, dsa, draw, config, gen)

        turn = optimizer.turn_positions().requires_grad_(True)
        decoded, decoded_labels = decode_partition2x2(turn, labels.to(turn.device))
        if draw is not None:
            decoded = dsa.apply(decoded, draw, decoded_labels)
        z = net.embed(decoded)
        mu_syn, _ = class_means(z, decoded_labels, num_classes)
        per_class = self.matching_loss(mu_syn, mu_real, std_real)
        loss = per_class.sum()
        if ce_weight:
            ce = F.cross_entropy(net.classify(z), decoded_labels, reduction="none")
            ce_per_class, _ = class_means(ce[:, None], decoded_labels, num_classes)
            loss = loss + ce_weight * ce_per_class.sum()
        (grad,) = torch.autograd.grad(loss, turn)
        optimizer.step(turn.detach(), grad)
        return float(loss.detach())

    @torch.no_grad()
    def _real_statistics(self, net, sampler, dsa, draw, config, gen):
        """Per-class mean (and unbiased std, for BACON) of the augmented real embeddings, without
        an autograd graph (:func:`dcbench.matching.embed`: cache-sized chunks on the CPU,
        ``real_chunk`` images per pass elsewhere), accumulated in float64."""
        batch = sampler.sample(config.batch_real, gen)
        num_classes = sampler.num_classes
        x = batch.images if draw is None else dsa.apply(batch.images, draw, batch.classes)
        chunk = None if x.device.type == "cpu" else config.real_chunk
        z = embed(net, x, requires_grad=False, chunk_size=chunk)
        sums = z.new_zeros(num_classes, z.shape[1], dtype=torch.float64)
        sumsq = torch.zeros_like(sums)
        for part, cls in zip(z.split(config.real_chunk), batch.classes.split(config.real_chunk)):
            part = part.double()
            sums.index_add_(0, cls, part)
            if self.needs_real_std:
                sumsq.index_add_(0, cls, part * part)
        counts = torch.bincount(batch.classes, minlength=num_classes).double()[:, None]
        mean = sums / counts
        std = None
        if self.needs_real_std:
            var = (sumsq - counts * mean * mean) / (counts - 1).clamp(min=1)
            std = var.clamp(min=0).sqrt().float()
        return mean.float(), std
