"""Shared fixtures: the synthetic ``tiny`` dataset and a quick preset."""

from __future__ import annotations

import pytest

from dcbench.data import load_dataset
from dcbench.protocol import Preset


@pytest.fixture(scope="session")
def tiny():
    return load_dataset("tiny")


@pytest.fixture
def quick_preset() -> Preset:
    return Preset(
        "quick", "tests", eval_epochs=4, full_epochs=1, num_eval_seeds=2,
        iteration_fraction=0.0, min_iterations=2,
    )  # fmt: skip
