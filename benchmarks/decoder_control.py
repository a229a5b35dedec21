"""What IDM/BACON's 2×2 partition decoder costs on a dataset, measured without any distillation.

IDM and BACON store ipc images per class that decode into 4·ipc training images at half the
resolution (each quadrant upsampled ×2). This script evaluates two sets of real images that have
the same number of training images and differ only in that resolution loss:

- ``real-4ipc``: 4·ipc random real images per class, as they are;
- ``mosaic-decoded``: IDM/BACON's mosaic initialisation (the same kind of draw, each image
  downsampled ×0.5 into one quadrant of a stored image) passed through the decoder: what
  IDM/BACON start from before their first update.

A distilled IDM/BACON set should beat ``mosaic-decoded`` (the method works) and can lose to
``real-4ipc`` or even to the ``random`` row of the same IPC when the images are so small that
half resolution destroys them (8×8 digits: 4×4 quadrants). Both sets are evaluated with the
registered evaluators on the test split, with the runner's seed derivation, so each accuracy is
paired with the store's records of the same evaluation seed. Soft-label evaluators read their
teachers from ``--cache`` (point it at a store's ``cache`` folder to reuse its teachers).

    OMP_NUM_THREADS=2 python benchmarks/decoder_control.py --dataset digits --ipc 1,10 \\
        --evaluators hard,soft-noaug,soft --eval-seeds 3 --cache leaderboards/runs/digits-fast/cache
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from tuning import RESULTS, load_lines, record_line

import evaluators  # noqa: F401  (registers the built-in evaluators)
from dcbench.allocator import retain_freed_memory
from dcbench.cache import ArtifactCache
from dcbench.data import RealData, load_dataset
from dcbench.distilled import DistilledSet
from dcbench.evaluator import EVALUATORS
from dcbench.matching import class_labels
from dcbench.protocol import PRESETS, eval_seed, seed_hash
from methods.idm import mosaic_init

ARMS = ("real-4ipc", "mosaic-decoded")


def control_set(data: RealData, ipc: int, arm: str) -> DistilledSet:
    """The arm's set (class-major), drawn from a seed fixed by dataset, ipc and arm."""
    gen = torch.Generator().manual_seed(seed_hash("decoder-control", data.info.name, ipc, arm))
    meta = {"dataset": data.info.name, "mean": list(data.info.mean), "std": list(data.info.std)}
    if arm == "real-4ipc":
        images = mosaic_init(data, 4 * ipc, "full", gen)
        labels = class_labels(data.info.num_classes, 4 * ipc)
        return DistilledSet(images, labels, meta={**meta, "ipc": 4 * ipc})
    images = mosaic_init(data, ipc, "mosaic", gen)
    labels = class_labels(data.info.num_classes, ipc)
    return DistilledSet(images, labels, meta={**meta, "ipc": ipc}, decoder="partition2x2")


def write_summary(lines: list[dict[str, Any]], path: Path) -> None:
    out = [
        "# Decoder control (benchmarks/decoder_control.py)",
        "",
        "Test accuracy (%) of ConvNets trained on real images: `real-4ipc` = 4·ipc random real",
        "images per class; `mosaic-decoded` = IDM/BACON's mosaic initialisation decoded by the 2×2",
        "partition decoder (the same number of training images at half resolution). Seeds are the",
        "runner's evaluation seeds 0..n-1, so the numbers pair with the store's records.",
        "",
        "| dataset | ipc | preset | evaluator | arm | accuracy, mean ± std | per seed | s / net |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for ln in lines:
        accs = torch.tensor(ln["accuracy"]) * 100
        std = float(accs.std(unbiased=False)) if len(accs) > 1 else 0.0
        out.append(
            f"| {ln['dataset']} | {ln['ipc']} | {ln['preset']} | {ln['evaluator']} | {ln['arm']} | "
            f"{float(accs.mean()):.2f} ± {std:.2f} | {', '.join(f'{a:.2f}' for a in accs)} | "
            f"{ln['seconds_per_network']} |"
        )
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", default="1,10", help="comma-separated IPCs")
    ap.add_argument("--evaluators", default="hard,soft-noaug,soft")
    ap.add_argument("--eval-seeds", type=int, default=3, help="evaluation seeds 0..n-1")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--cache", default=None, help="artifact cache holding the teachers")
    ap.add_argument("--out", type=Path, default=RESULTS / "decoder_control.jsonl")
    args = ap.parse_args()
    retain_freed_memory()  # as the CLI: reuse freed activation memory (dcbench/allocator.py)

    data = load_dataset(args.dataset)
    budget = PRESETS.get(args.preset)
    cache = ArtifactCache(args.cache)
    done = load_lines(args.out)
    have = {(d["dataset"], d["ipc"], d["evaluator"], d["arm"], d["preset"]) for d in done}
    for ipc in [int(v) for v in args.ipc.split(",")]:
        for name in args.evaluators.split(","):
            evaluator = EVALUATORS.get(name)()
            seeds = [eval_seed(args.dataset, name, "convnet", s) for s in range(args.eval_seeds)]
            for arm in ARMS:
                if (args.dataset, ipc, name, arm, args.preset) in have:
                    continue
                start = time.perf_counter()
                metrics = evaluator.evaluate(
                    control_set(data, ipc, arm), data, "convnet", seeds=seeds,
                    device=torch.device("cpu"), budget=budget, cache=cache,
                )  # fmt: skip
                line = {
                    "dataset": args.dataset, "ipc": ipc, "evaluator": name, "arm": arm,
                    "preset": args.preset, "eval_seeds": list(range(args.eval_seeds)),
                    "accuracy": [round(m["accuracy"], 4) for m in metrics],
                    "seconds_per_network": round((time.perf_counter() - start) / len(seeds), 1),
                }  # fmt: skip
                record_line(args.out, done, line, write_summary)


if __name__ == "__main__":
    main()
