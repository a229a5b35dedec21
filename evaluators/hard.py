"""The hard-label evaluation protocol of DC/DSA/DM (spec dm_idm_bacon.md §1.5).

A fresh randomly initialised network per evaluation seed, trained on the distilled images (decoded
first when the set names a decoder) with their hard labels: SGD lr 0.01 (or the set's learned
``train_lr`` when ``use_train_lr``), momentum 0.9, weight decay 5e-4, batch 256, DSA on every
mini-batch with independent draws per image, ``E + 1`` passes with the lr ×0.1 and a fresh optimiser
after pass ``E//2 + 1``, and one test of the final network. E comes from the preset (1000 under
``paper``); the ``full`` upper bound trains on the real train split for the preset's
``full_epochs``.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import torch

from dcbench.augment import DSA
from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.distilled import DistilledSet
from dcbench.evaluator import Evaluator, Progress, register_evaluator
from dcbench.models import build_model
from dcbench.protocol import Preset
from dcbench.training import TrainRecipe, train_and_test
from dcbench.zca import evaluation_test_split


@register_evaluator("hard")
class HardLabelEvaluator(Evaluator):
    """Final-epoch test accuracy of networks trained with hard labels and DSA."""

    protocol_version = 1
    label_kind = "hard"

    def __init__(self, use_train_lr: bool = False) -> None:
        self.use_train_lr = use_train_lr

    def recipe(self, distilled: DistilledSet, budget: Preset) -> TrainRecipe:
        epochs = budget.full_epochs if distilled.reference == "train" else budget.eval_epochs
        lr = 0.01
        if self.use_train_lr and distilled.train_lr is not None:
            lr = float(distilled.train_lr)
        return TrainRecipe(epochs=epochs, lr=lr)

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
        cache: ArtifactCache | None = None,  # unused: the hard protocol has no cached inputs
    ) -> list[dict[str, Any]]:
        info = data.info
        distilled.validate(info)
        if distilled.reference == "train":
            images, labels = data.train(device)
        else:
            images, labels = distilled.decoded()
        # normalised, or ZCA-whitened for sets distilled in ZCA space (MTT, spec §3.10.1)
        test_images, test_labels = evaluation_test_split(distilled, data, device)
        recipe = self.recipe(distilled, budget)
        build = partial(
            build_model, model_name, info.channels, info.num_classes, (info.height, info.width)
        )
        start = time.perf_counter()
        accuracies = train_and_test(
            build,
            images,
            labels,
            test_images,
            test_labels,
            seeds,
            recipe,
            augment=DSA(),
            device=device,
            progress=progress,
        )
        seconds = (time.perf_counter() - start) / len(seeds)
        return [
            {
                "accuracy": acc,
                "train_images": int(images.shape[0]),
                "epochs": recipe.epochs,
                "lr": recipe.lr,
                "eval_seconds": seconds,
            }
            for acc in accuracies
        ]


@register_evaluator("hard-learned-lr")
class LearnedLrHardLabelEvaluator(HardLabelEvaluator):
    """The hard-label protocol with the set's learned step size (MTT's own evaluation).

    Sets without a ``train_lr`` fall back to the fixed 0.01 of the common protocol.
    """

    def __init__(self) -> None:
        super().__init__(use_train_lr=True)
