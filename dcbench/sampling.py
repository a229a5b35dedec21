"""Class-wise sampling of real training images from a generator (shared by methods)."""

from __future__ import annotations

import torch

from dcbench.data import RealData
from dcbench.errors import DcbenchError


def sample_per_class(data: RealData, n: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of ``n`` distinct random train images of every class, class-major."""
    if n > data.min_class_size:
        raise DcbenchError(
            f"ipc {n} exceeds the smallest class of {data.info.name} ({data.min_class_size} images)"
        )
    picks = []
    for idx in data.class_indices:
        perm = torch.randperm(idx.numel(), generator=gen)[:n]
        picks.append(idx[perm])
    return torch.cat(picks)
