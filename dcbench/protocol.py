"""The evaluation protocol: presets, named derived seeds and the protocol version.

Presets scale compute, never the algorithm: ``paper`` uses the published iteration counts and
evaluation epochs, ``fast`` reduced ones for CPU reproduction runs, ``smoke`` seconds for tests and
CI. The preset is part of every record key and every table caption.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from dcbench.registry import Registry

#: Bumped whenever a change to seeds, presets or record semantics changes numbers.
PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Preset:
    """Compute budget of a run.

    ``eval_epochs`` follows the reference code's ``epoch_eval_train`` semantics: training runs
    ``eval_epochs + 1`` passes over the set, with the learning rate ×0.1 (and a fresh optimiser)
    after pass index ``eval_epochs // 2 + 1`` (spec dm_idm_bacon.md §1.5). ``full_epochs`` is the
    same for the ``full`` upper-bound row, which trains on the whole train split. Methods scale
    their paper iteration counts with :meth:`iterations`.
    """

    name: str
    description: str
    eval_epochs: int
    full_epochs: int
    num_eval_seeds: int
    iteration_fraction: float
    min_iterations: int

    def iterations(self, paper_iterations: int) -> int:
        """This preset's share of a method's published iteration count."""
        scaled = math.ceil(paper_iterations * self.iteration_fraction)
        return max(min(self.min_iterations, paper_iterations), scaled)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: Registry[Preset] = Registry("preset")
for _preset in (
    Preset(
        "smoke",
        "seconds per job, for tests and CI: 2 evaluation seeds × 30 epochs, methods run 0.05% "
        "of their iterations (at least 5), full data 1 epoch",
        eval_epochs=30,
        full_epochs=1,
        num_eval_seeds=2,
        iteration_fraction=0.0005,
        min_iterations=5,
    ),
    Preset(
        "fast",
        "CPU reproduction runs: 5 evaluation seeds × 300 epochs, methods run 5% of their "
        "iterations (at least 50), full data 10 epochs",
        eval_epochs=300,
        full_epochs=10,
        num_eval_seeds=5,
        iteration_fraction=0.05,
        min_iterations=50,
    ),
    Preset(
        "paper",
        "the published protocol: 5 evaluation seeds × 1000 epochs, the papers' iteration counts, "
        "full data 300 epochs (DC-bench's whole-data setting; hours per seed on a CPU)",
        eval_epochs=1000,
        full_epochs=300,
        num_eval_seeds=5,
        iteration_fraction=1.0,
        min_iterations=1,
    ),
):
    PRESETS.add(_preset.name, _preset)


def seed_hash(*parts: object) -> int:
    """A 63-bit seed derived from named parts (stable across runs, platforms and versions)."""
    text = json.dumps([str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def distill_seed(method: str, dataset: str, ipc: int | None, seed: int) -> int:
    """The seed of one distillation: different for every (method, dataset, ipc, seed) cell."""
    return seed_hash(method, dataset, ipc, seed, "distill")


def eval_seed(dataset: str, evaluator: str, model: str, seed: int) -> int:
    """The seed of one evaluation network (initialisation, batch order, augmentation draws).

    It deliberately does not depend on the method or the IPC: every distilled set evaluated with
    evaluation seed k is trained from the same initial network with the same random streams, so
    method comparisons are paired (common random numbers) rather than confounded by network draws.
    """
    return seed_hash(dataset, evaluator, model, seed, "eval")


def content_key(payload: dict) -> str:
    """A short content hash of a JSON-serialisable dict (key order does not matter)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
