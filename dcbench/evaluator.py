"""The evaluator plugin interface: train models from scratch on a distilled set and test them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.protocol import Preset
from dcbench.registry import Registry

Progress = Callable[[int, int], None]


class Evaluator(ABC):
    """Base class of evaluation protocols (register with :func:`register_evaluator`).

    ``evaluate`` trains one fresh network per seed (seeds may be trained together for speed; each
    seed's result depends only on its own seed) and returns one metrics dict per seed, with at least
    ``accuracy`` (final-epoch test accuracy as a fraction). No checkpoint or learning-rate selection
    on the test set. ``protocol_version`` is part of every record key: bump it when numbers change.
    ``cache`` is the store's artifact cache (teachers, trained networks), None without a store.
    ``label_kind`` ``soft`` marks a teacher-label protocol: the runner then also evaluates the
    ``random`` control of every (dataset, IPC) with it.
    """

    name: ClassVar[str]
    protocol_version: ClassVar[int] = 1
    label_kind: ClassVar[str] = "hard"

    @abstractmethod
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
        """Metrics per seed, in the order of ``seeds``."""


EVALUATORS: Registry[type[Evaluator]] = Registry(
    "evaluator", entry_point_group="dcbench.evaluators"
)


def register_evaluator(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Class decorator registering an evaluator plugin under ``name``."""

    def decorate(cls: type[Evaluator]) -> type[Evaluator]:
        cls.name = name
        EVALUATORS.add(name, cls)
        return cls

    return decorate
