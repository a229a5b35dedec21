"""Random real images: ``ipc`` distinct training images per class, drawn with a seeded generator.

The baseline every distillation method must beat (DC-bench's "Random" row).
"""

from __future__ import annotations

import torch

from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.method import Method, NoConfig, Progress, register_method
from dcbench.protocol import Preset
from dcbench.sampling import sample_per_class


@register_method("random")
class RandomReal(Method):
    """``ipc`` random real images per class (no optimisation)."""

    def distill(
        self,
        data: RealData,
        ipc: int,
        config: NoConfig,
        *,
        seed: int,
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> DistilledSet:
        gen = torch.Generator().manual_seed(seed)
        idx = sample_per_class(data, ipc, gen)
        images = data.normalize(data.train_images[idx])
        return DistilledSet(images, data.train_labels[idx].clone(), meta={"indices": idx.tolist()})
