"""Real datasets: the types every method and evaluator reads, and the dataset registry.

Images are held in memory as uint8 tensors (N×C×H×W) and normalised on the fly with the per-channel
mean/std of the DC family (spec dm_idm_bacon.md §1.1). The loaders themselves live in
``dcbench.datasets``; this module holds only the types and the lookup.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcbench.errors import DcbenchError
from dcbench.registry import Registry


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset: shape, classes and normalisation constants."""

    name: str
    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class RealData:
    """A dataset in memory: uint8 train/test tensors, int64 labels and per-class index lists."""

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_indices: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise DcbenchError(f"{self.info.name} {split} images must be uint8 N×C×H×W")
            if tuple(images.shape[1:]) != self.info.image_shape:
                raise DcbenchError(
                    f"{self.info.name} {split} images have shape {tuple(images.shape[1:])}, "
                    f"expected {self.info.image_shape}"
                )
            if labels.shape != (images.shape[0],):
                raise DcbenchError(f"{self.info.name} {split} labels do not match the images")
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.info.num_classes):
                raise DcbenchError(
                    f"{self.info.name} {split} labels lie outside [0, {self.info.num_classes})"
                )
        self.train_labels = self.train_labels.long()
        self.test_labels = self.test_labels.long()
        self.class_indices = [
            torch.nonzero(self.train_labels == c).flatten() for c in range(self.info.num_classes)
        ]

    @property
    def min_class_size(self) -> int:
        """Number of training images of the smallest class (the largest valid IPC)."""
        return min(int(idx.numel()) for idx in self.class_indices)

    def normalize(
        self, images: torch.Tensor, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """uint8 images → float32 in normalised space, ``(x/255 − mean)/std`` per channel."""
        return normalize_uint8(images, self.info, device)

    def train(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole normalised train split and its labels on ``device``."""
        return self.normalize(self.train_images, device), self.train_labels.to(device)

    def test(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole normalised test split and its labels on ``device``."""
        return self.normalize(self.test_images, device), self.test_labels.to(device)


def normalize_uint8(
    images: torch.Tensor, info: DatasetInfo, device: torch.device | str | None = None
) -> torch.Tensor:
    """uint8 N×C×H×W → float32 normalised with the dataset's mean/std."""
    x = images.to(device=device, dtype=torch.float32).div_(255.0)
    mean = torch.tensor(info.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def denormalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Normalised float images → [0, 1] (clamped), for display."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp_(0.0, 1.0)


@dataclass(frozen=True)
class DataOptions:
    """Where to look for dataset files and whether downloading is allowed."""

    root: Path
    download: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader and a one-line description for ``dcbench ls datasets``."""

    name: str
    load: Callable[[DataOptions], RealData]
    description: str
    test_only: bool = False  # synthetic test fixtures are hidden from the default run


DATASETS: Registry[DatasetSpec] = Registry("dataset", builtins="dcbench.datasets")


def register_dataset(
    name: str, description: str, *, test_only: bool = False
) -> Callable[[Callable[[DataOptions], RealData]], Callable[[DataOptions], RealData]]:
    """Decorator registering a loader ``load(options) -> RealData`` under ``name``."""

    def decorate(load: Callable[[DataOptions], RealData]) -> Callable[[DataOptions], RealData]:
        DATASETS.add(name, DatasetSpec(name, load, description, test_only))
        return load

    return decorate


def default_data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-root`` if given, else ``$DCBENCH_DATA``, else ``$XDG_CACHE_HOME/dcbench/data``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("DCBENCH_DATA"):
        return Path(os.environ["DCBENCH_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "dcbench" / "data"


_CACHE: dict[tuple[str, Path], RealData] = {}


def load_dataset(
    name: str, root: str | os.PathLike | None = None, *, download: bool = False
) -> RealData:
    """Load a registered dataset (memoised per process: the runner reuses it across jobs)."""
    spec = DATASETS.get(name)
    options = DataOptions(default_data_root(root), download)
    key = (spec.name, options.root)
    if key not in _CACHE:
        data = spec.load(options)
        if data.info.name != spec.name:
            raise DcbenchError(f"loader for {spec.name!r} returned dataset {data.info.name!r}")
        _CACHE[key] = data
    return _CACHE[key]
