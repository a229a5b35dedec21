"""Shared pieces of the settings searches (``tune_mtt.py``, ``tune_idm.py``).

A search never reads the test split: a fixed, seeded subset of train images per class is held out
(:func:`holdout_split`) and becomes the split's test set; a setting is scored by distilling on the
rest and training ConvNets on the distilled set with the ``fast`` preset's hard-label protocol
(300 epochs, DSA), tested on the held-out images (:func:`score_setting`). Every scored setting is
one JSON line (:func:`load_lines`), so a search resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import methods  # noqa: F401  (registers the built-in methods)
from dcbench.cache import ArtifactCache
from dcbench.data import RealData
from dcbench.errors import DivergenceError
from dcbench.method import METHODS
from dcbench.protocol import PRESETS, eval_seed, seed_hash
from evaluators.hard import HardLabelEvaluator, LearnedLrHardLabelEvaluator

RESULTS = Path(__file__).parent / "results"


def holdout_split(data: RealData, per_class: int, seed: int) -> RealData:
    """Train minus ``per_class`` seeded held-out images per class; the held-out images are the
    returned set's test split (the real test split is dropped)."""
    gen = torch.Generator().manual_seed(seed)
    val = []
    for members in data.class_indices:
        if members.numel() <= per_class:
            raise SystemExit(f"a class has only {members.numel()} train images")
        val.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(data.train_labels.numel(), dtype=torch.bool)
    keep[val_idx] = False
    return RealData(
        data.info, data.train_images[keep], data.train_labels[keep],
        data.train_images[val_idx], data.train_labels[val_idx],
    )  # fmt: skip


def score_setting(
    method_name: str,
    split: RealData,
    dataset: str,
    ipc: int,
    settings: dict[str, Any],
    *,
    eval_seeds: int,
    cache: str | Path,
    learned_lr: bool = False,
) -> dict[str, Any]:
    """Distil with ``settings`` (iterations unscaled: the ``paper`` budget) on the split and
    evaluate on its held-out images: ``hard`` (fixed lr 0.01) and, with ``learned_lr``, the learned
    step size (``learned``; 0 when the set's α ≤ 0). ``score`` is the mean of the evaluations'
    mean accuracies (fractions); a ``DivergenceError`` scores 0."""
    method = METHODS.get(method_name)()
    config = method.resolve_config(dataset, ipc, settings)
    device = torch.device("cpu")
    start = time.perf_counter()
    try:
        distilled = method.distill(
            split, ipc, config, seed=seed_hash(f"{method_name}-tune", dataset, ipc),
            device=device, budget=PRESETS.get("paper"), cache=ArtifactCache(cache),
        )  # fmt: skip
    except DivergenceError as err:
        return {"diverged": str(err), "score": 0.0, "distill_s": time.perf_counter() - start}
    result: dict[str, Any] = {"distill_s": round(time.perf_counter() - start, 1)}
    if learned_lr:
        result["train_lr"] = distilled.train_lr
    fast = PRESETS.get("fast")
    seeds = [eval_seed(dataset, "tune", "convnet", k) for k in range(eval_seeds)]
    evaluators: dict[str, Any] = {"hard": HardLabelEvaluator()}
    if learned_lr:
        evaluators["learned"] = LearnedLrHardLabelEvaluator()
    for name, evaluator in evaluators.items():
        if name == "learned" and not (distilled.train_lr or 0) > 0:
            result[name] = [0.0] * len(seeds)  # α ≤ 0 cannot train a network
            continue
        metrics = evaluator.evaluate(
            distilled, split, "convnet", seeds=seeds, device=device, budget=fast
        )
        result[name] = [round(m["accuracy"], 4) for m in metrics]
    means = [sum(result[name]) / len(result[name]) for name in evaluators]
    result["score"] = round(sum(means) / len(means), 4)
    result["loss_trace"] = distilled.meta.get("loss_trace")
    return result


def load_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a search's results file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_line(
    out: Path,
    done: list[dict[str, Any]],
    line: dict[str, Any],
    write_summary: Callable[[list[dict[str, Any]], Path], None],
) -> None:
    """Add the load and thread count to ``line``, print it (without its loss trace), append it
    to ``out`` and ``done``, and rewrite the markdown summary next to ``out``."""
    line.update(loadavg_1m=round(os.getloadavg()[0], 2), threads=torch.get_num_threads())
    print(json.dumps({k: v for k, v in line.items() if k != "loss_trace"}), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(line) + "\n")
    done.append(line)
    write_summary(done, out.with_suffix(".md"))
