"""Building blocks of distribution matching in an embedding space (spec dm_idm_bacon.md §1–§3).

DM, IDM and BACON all compare, class by class, the mean embedding of a real batch with the mean
embedding of the synthetic images under a network, after one siamese DSA draw per class shared by
the class's real and synthetic images. The coreset baselines (herding, k-center) select real images
on the embeddings of a network trained on the whole train set. The shared pieces live here:

- :class:`ClassBatchSampler`: a real batch of every class at once (``batch_real`` distinct images
  per class, capped by the class size), drawn from a ``torch.Generator``;
- :func:`siamese_augment`: one DSA draw per class, shared by that class's real and synthetic images;
- :func:`embed`: ``net.embed(x)``, without an autograd graph for the real branch;
- :func:`class_means`, :func:`mean_matching_loss`: per-class means by ``index_add`` and
  Σ_c ‖μ_real,c − μ_syn,c‖²;
- :func:`random_network`, :func:`model_builder`: fresh (frozen) networks drawn from a seed;
- :func:`feature_network`, :func:`class_features`: the coreset baselines' network trained on the
  full train set (cached) and the features of a class's train images under it.

All classes are processed together: for the default instance-norm ConvNet every image is
normalised on its own, so one pass over all classes gives the per-class passes of the reference
code (for batch-norm networks, one batch of all classes is what DM's reference ``ConvNetBN`` branch
does). On the CPU, :func:`embed` then cuts the batch into cache-sized chunks and spreads the
gradient-free chunks over worker threads, the fastest arrangement measured on 2 cores
(benchmarks/results/distill.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from dcbench.augment import DSA
from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError
from dcbench.method import Method, Progress
from dcbench.models import Classifier, build_model
from dcbench.protocol import Preset, seed_hash
from dcbench.training import TrainRecipe, init_model, test_accuracy, train_networks

log = logging.getLogger(__name__)

Builder = Callable[[], Classifier]


# --------------------------------------------------------------------------------------------------
# Networks


def model_builder(
    data: RealData, model: str, *, width: int | None = None, depth: int | None = None
) -> Builder:
    """A zero-argument constructor of ``model`` for ``data``'s images.

    ``width``/``depth`` are passed to the model only when given (``None`` keeps the model's default:
    width 128 and depth 3 up to 32 px, 4 at 64 px for the ConvNet).
    """
    info = data.info
    options: dict[str, Any] = {
        k: v for k, v in (("width", width), ("depth", depth)) if v is not None
    }
    size = (info.height, info.width)
    build = partial(build_model, model, info.channels, info.num_classes, size, **options)
    init_model(build, 0)  # fail now on an unknown model or option (global RNG untouched)
    return build


#: Target size of the largest activation of one chunk of images on the CPU. Chunks whose
#: activations stay in cache run ~2× faster than one large batch, whose normalisation, ReLU and
#: pooling passes go to DRAM and whose fresh large buffers cost page faults
#: (benchmarks/results/distill.md).
CPU_CHUNK_BYTES = 8 * 2**20


def random_network(build: Builder, seed: int, device: torch.device) -> Classifier:
    """A freshly initialised network drawn from ``seed``, frozen (no parameter gradients).

    The global RNG is left untouched (:func:`dcbench.training.init_model`). The network is in train
    mode as in the reference code (no effect on instance norm; batch norm uses batch statistics).
    """
    net = init_model(build, seed).to(device)
    net.requires_grad_(False)
    net.train()
    return net


def embed(
    net: Classifier,
    images: torch.Tensor,
    *,
    requires_grad: bool = True,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``net.embed(images)`` (N×d); without an autograd graph when ``requires_grad`` is false.

    On the CPU the images go through in chunks of ``chunk_size`` (default: as many as keep the
    largest activation near :data:`CPU_CHUNK_BYTES`), and a gradient-free pass splits the chunks
    over one worker thread per intra-op thread (:func:`_parallel_chunks`). The result is the same
    as one pass for networks that treat images independently (instance/group/layer norm, no norm;
    up to floating-point rounding); networks with batch norm in train mode see their whole batch
    at once (batch statistics).
    """
    if chunk_size is None:
        chunk_size = _cpu_chunk_size(net, images)
    if requires_grad:
        if chunk_size >= images.shape[0]:
            return net.embed(images)
        return torch.cat([net.embed(x) for x in images.split(chunk_size)])  # autograd joins them
    with torch.no_grad():
        if chunk_size >= images.shape[0]:
            return net.embed(images)
        return _parallel_chunks(net.embed, images, chunk_size)


def _parallel_chunks(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """``cat(forward(chunk) for chunk in images.split(chunk_size))`` without autograd.

    On a CPU with T > 1 intra-op threads the images are cut into T contiguous parts, each run
    chunk by chunk by its own worker thread with one intra-op thread: small chunks then need no
    OpenMP barrier per operation, which is ~25% faster on 2 cores and degrades gracefully when
    other processes share the cores (benchmarks/results/distill.md). The intra-op thread count is
    restored afterwards.
    """

    def run(part: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # grad mode is thread-local
            return torch.cat([forward(x) for x in part.split(chunk_size)])

    threads = torch.get_num_threads()
    num_chunks = -(-images.shape[0] // chunk_size)
    if images.device.type != "cpu" or threads < 2 or num_chunks < 2 * threads:
        return run(images)
    torch.set_num_threads(1)  # new worker threads take this count for their own operations
    try:
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(run, images.tensor_split(threads)))
    finally:
        torch.set_num_threads(threads)
    return torch.cat(parts)


def _cpu_chunk_size(net: nn.Module, images: torch.Tensor) -> int:
    """Images per chunk on the CPU (all of them on other devices, or batch norm in training)."""
    n = images.shape[0]
    if images.device.type != "cpu" or images.dim() != 4:
        return n
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules()):
        return n
    convs = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    per_image = 4 * max(convs, default=images.shape[1]) * images.shape[2] * images.shape[3]
    return max(1, min(n, CPU_CHUNK_BYTES // per_image))


# --------------------------------------------------------------------------------------------------
# Real batches


@dataclass(frozen=True)
class RealBatch:
    """Normalised real images and the class of each (class-major order)."""

    images: torch.Tensor  # N×C×H×W float32 on the sampler's device
    classes: torch.Tensor  # N int64 on the sampler's device
    indices: torch.Tensor  # N int64 train-set indices (CPU)


class ClassBatchSampler:
    """Random real batches of every class at once: ``n`` distinct train images per class.

    Equivalent to the reference's per-class ``randperm(class)[:n]`` (a uniformly random subset of
    ``min(n, class size)`` images), vectorised over classes: one random key per train image, the
    ``n`` smallest keys of each class. The uint8 train images are kept on ``device`` and a batch is
    normalised there.
    """

    def __init__(self, data: RealData, device: torch.device | str = "cpu") -> None:
        self.data = data
        self.device = torch.device(device)
        self.num_classes = data.info.num_classes
        counts = [int(idx.numel()) for idx in data.class_indices]
        if min(counts) == 0:
            raise DcbenchError(f"{data.info.name} has a class without training images")
        self.counts = torch.tensor(counts)
        width = max(counts)
        # table[c, k] = the k-th train index of class c; padding marked invalid
        self.table = torch.zeros(self.num_classes, width, dtype=torch.long)
        for c, idx in enumerate(data.class_indices):
            self.table[c, : idx.numel()] = idx
        self.padding = torch.arange(width) >= self.counts[:, None]
        self.images = data.train_images.to(self.device)

    def sample_indices(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train indices of ``min(n, class size)`` distinct random images per class, and classes."""
        if n <= 0:
            raise DcbenchError(f"the real batch size must be positive, got {n}")
        keys = torch.rand(self.table.shape, generator=generator, dtype=torch.float64)
        keys.masked_fill_(self.padding, 2.0)  # padding sorts after every real key (< 1)
        take = min(n, self.table.shape[1])
        order = keys.topk(take, dim=1, largest=False, sorted=True).indices
        per_class = self.counts.clamp(max=n)
        keep = torch.arange(take) < per_class[:, None]
        indices = self.table.gather(1, order)[keep]
        classes = torch.arange(self.num_classes).repeat_interleave(per_class)
        return indices, classes

    def sample(self, n: int, generator: torch.Generator) -> RealBatch:
        """A normalised real batch of ``min(n, class size)`` images per class, class-major."""
        indices, classes = self.sample_indices(n, generator)
        images = self.data.normalize(self.images[indices.to(self.device)])
        return RealBatch(images, classes.to(self.device), indices)


def class_labels(
    num_classes: int, per_class: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``[0]*per_class + [1]*per_class + …``: the labels of a class-major set."""
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


# --------------------------------------------------------------------------------------------------
# Augmentation and the matching objective


def siamese_augment(
    dsa: DSA,
    real: torch.Tensor,
    real_classes: torch.Tensor,
    syn: torch.Tensor,
    syn_classes: torch.Tensor,
    num_classes: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DSA draw per class (family and parameters), shared by its real and synthetic images.

    This is the reference's per-class ``DiffAugment(…, seed=s)`` on the real and then the synthetic
    batch with the same seed ``s`` (spec §1.3, siamese mode), for all classes in one call. With the
    strategy ``none`` the images are returned unchanged.
    """
    return dsa.siamese_by_group(real, real_classes, syn, syn_classes, num_classes, generator)


def class_means(
    embeddings: torch.Tensor, classes: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means (num_classes×d; zero rows for absent classes) and per-class counts."""
    sums = embeddings.new_zeros(num_classes, embeddings.shape[1])
    sums = sums.index_add(0, classes, embeddings)  # out of place: differentiable
    counts = torch.bincount(classes, minlength=num_classes)
    return sums / counts.clamp(min=1).to(embeddings.dtype)[:, None], counts


def mean_matching_loss(
    real_emb: torch.Tensor,
    real_classes: torch.Tensor,
    syn_emb: torch.Tensor,
    syn_classes: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """Σ_c ‖mean(real_emb of c) − mean(syn_emb of c)‖², summed over dimensions (spec §2.1).

    Every class must have at least one real and one synthetic embedding, or none of either (absent
    classes contribute nothing, e.g. when one class is matched at a time).
    """
    mu_real, n_real = class_means(real_emb, real_classes, num_classes)
    mu_syn, n_syn = class_means(syn_emb, syn_classes, num_classes)
    if not torch.equal(n_real > 0, n_syn > 0):
        raise ValueError("every class needs both real and synthetic embeddings, or neither")
    return (mu_real - mu_syn).pow(2).sum()


# --------------------------------------------------------------------------------------------------
# Coreset baselines: a network trained on the full train set and per-class features


def feature_network(
    data: RealData,
    build: Builder,
    model_spec: dict[str, Any],
    *,
    net_seed: int,
    budget: Preset,
    device: torch.device,
    cache: ArtifactCache | None,
    progress: Callable[[int, int], None] | None = None,
    epochs: int | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """A network trained on the whole train split with the standard recipe, cached.

    Recipe: the hard-label protocol's (SGD 0.01, momentum 0.9, weight decay 5e-4, batch 256, DSA on
    every batch, lr ×0.1 at the half) for ``epochs`` epochs (default ``budget.full_epochs``, i.e.
    what the ``full`` row trains). Cached as ``coreset-net`` under (dataset, model, recipe, preset,
    seed), so herding, k-center and every IPC share one network. Returns the network (eval mode,
    frozen) and the cache info (its test accuracy and training time). ``progress`` follows the
    training passes.
    """
    recipe = TrainRecipe(epochs=budget.full_epochs if epochs is None else epochs)
    seed = seed_hash(data.info.name, model_spec, "coreset-net", net_seed)
    augment = DSA()
    spec = {
        "dataset": data.info.name,
        "train_size": int(data.train_labels.numel()),
        "model": model_spec,
        "recipe": asdict(recipe),
        "augment": augment.strategy,
        "preset": budget.name,
        "seed": seed,
    }

    def create() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        log.info("training the coreset network for %s (%d epochs)", data.info.name, recipe.epochs)
        images, labels = data.train(device)
        (net,) = train_networks(
            build, images, labels, [seed], recipe, augment=augment, device=device,
            progress=progress,
        )  # fmt: skip
        del images
        test_x, test_y = data.test(device)
        accuracy = test_accuracy(net, test_x, test_y, device)
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        return state, {"test_accuracy": accuracy, "epochs": recipe.epochs}

    if cache is None:
        state, info = create()
    else:
        state, info = cache.get("coreset-net", spec, create)
    net = init_model(build, seed)
    net.load_state_dict(state)
    net = net.to(device).eval().requires_grad_(False)
    return net, dict(info)


def class_features(
    net: Classifier,
    data: RealData,
    indices: torch.Tensor,
    device: torch.device,
    batch_size: int = 2048,
) -> torch.Tensor:
    """Embeddings (N×d, float32, CPU) of the train images ``indices`` under ``net`` in eval mode.

    No augmentation; ``batch_size`` images are normalised and embedded at a time.
    """
    net.eval()
    chunks = []
    for start in range(0, indices.numel(), batch_size):
        x = data.normalize(data.train_images[indices[start : start + batch_size]], device)
        chunks.append(embed(net, x, requires_grad=False).float().cpu())
    return torch.cat(chunks)


def select_per_class(
    net: Classifier,
    data: RealData,
    ipc: int,
    select: Callable[[torch.Tensor, int], torch.Tensor],
    device: torch.device,
) -> torch.Tensor:
    """Train indices (class-major) of ``select(features of class c, ipc)`` for every class.

    Features are ``net``'s embeddings in float64, so that the greedy choices do not hinge on
    float32 rounding.
    """
    if ipc > data.min_class_size:
        raise DcbenchError(
            f"ipc {ipc} exceeds the smallest class of {data.info.name} "
            f"({data.min_class_size} images)"
        )
    picks = []
    for idx in data.class_indices:
        features = class_features(net, data, idx, device).double()
        picks.append(idx[select(features, ipc)])
    return torch.cat(picks)


@dataclass(frozen=True)
class CoresetConfig:
    """Settings of the coreset baselines (herding, k-center): their feature network."""

    model: str = "convnet"  # trained on the full train set; its embedding gives the features
    width: int | None = None  # model width (None: the model's default, 128 for the ConvNet)
    depth: int | None = None  # ConvNet depth (None: 3 up to 32 px, 4 at 64 px)
    net_seed: int = 0  # which trained network (shared by herding, k-center and every IPC)
    epochs: int | None = None  # its training epochs (None: the preset's full_epochs)


def coreset(
    data: RealData,
    ipc: int,
    config: CoresetConfig,
    select: Callable[[torch.Tensor, int], torch.Tensor],
    *,
    budget: Preset,
    device: torch.device,
    cache: ArtifactCache | None,
    progress: Callable[[int, int], None] | None = None,
) -> DistilledSet:
    """The real images ``select`` picks per class on the feature network's embeddings.

    Images are the normalised train images (class-major); ``meta`` holds their train indices and
    the feature network's info (test accuracy, training time).
    """
    device = torch.device(device)
    build = model_builder(data, config.model, width=config.width, depth=config.depth)
    spec = {"name": config.model, "width": config.width, "depth": config.depth}
    net, info = feature_network(
        data, build, spec, net_seed=config.net_seed, budget=budget, device=device, cache=cache,
        progress=progress, epochs=config.epochs,
    )  # fmt: skip
    idx = select_per_class(net, data, ipc, select, device)
    images = data.normalize(data.train_images[idx])
    meta = {"indices": idx.tolist(), "feature_network": info}
    return DistilledSet(images, data.train_labels[idx].clone(), meta=meta)


class CoresetMethod(Method):
    """A real-image selection on the feature network: subclasses set ``select`` (features, n →
    indices) and register themselves."""

    Config = CoresetConfig
    select: ClassVar[Callable[[torch.Tensor, int], torch.Tensor]]

    def distill(
        self,
        data: RealData,
        ipc: int,
        config: CoresetConfig,
        *,
        seed: int,
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> DistilledSet:
        return coreset(
            data, ipc, config, type(self).select, budget=budget, device=device, cache=cache,
            progress=progress,
        )  # fmt: skip
