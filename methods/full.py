"""The whole training set: the upper-bound row of every leaderboard.

It references the real train split instead of copying it into the store; the evaluator trains on the
real data for the preset's ``full_epochs`` (smoke 1, fast 10, paper 300; each + 1 pass, as the
evaluation epochs). ``paper`` is hours per seed for Fashion-MNIST on 2 CPU cores.
"""

from __future__ import annotations

import torch

from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.method import Method, NoConfig, Progress, register_method
from dcbench.protocol import Preset


@register_method("full")
class FullData(Method):
    """The real train split, referenced (not copied)."""

    ipc_independent = True

    def distill(
        self,
        data: RealData,
        ipc: int | None,
        config: NoConfig,
        *,
        seed: int,
        device: torch.device,
        budget: Preset,
        progress: Progress | None = None,
        cache: ArtifactCache | None = None,
    ) -> DistilledSet:
        c, h, w = data.info.image_shape
        return DistilledSet(
            torch.empty(0, c, h, w),
            torch.empty(0, dtype=torch.long),
            meta={"train_images": int(data.train_labels.numel())},
            reference="train",
        )
