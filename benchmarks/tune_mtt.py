"""Tune MTT's settings for a dataset without published ones, on a validation split of TRAIN.

The test split is never read. A fixed, seeded subset of ``--val-per-class`` train images per class
is held out (:func:`holdout_split`); experts are trained and the set is distilled on the remaining
train images, and a distilled set is scored by training ConvNets on it with the hard-label protocol
of the ``fast`` preset (300 epochs, DSA) and testing them on the held-out images, with the fixed
lr 0.01 (evaluator ``hard``) and with the learned α (``hard-learned-lr``); the score is the mean of
both.

The search follows the MTT author's guidance (spec mtt_and_benchmarks.md §3.5): ``expert_epochs``
2, ``syn_steps`` fixed at what the CPU budget affords, then a coordinate search — the pixel lr on a
coarse 10^n grid (``--lr-img``), ``max_start_epoch`` raised until it stops helping or diverges
(``--max-start``), then the lr of α (``--lr-lr``); each stage keeps the best value of the previous
ones. ``iterations=0`` (the random real initialisation) is scored as the baseline. Runs that raise
``DivergenceError`` score 0. Every run appends one JSON line to ``--out`` (``.jsonl``) and is
skipped when already there, so the script resumes; the markdown summary is rewritten from the
JSON lines.

    OMP_NUM_THREADS=1 python benchmarks/tune_mtt.py --dataset digits --ipc 1 --iterations 100 \\
        --set syn_steps=20
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import methods  # noqa: F401  (registers the built-in methods)
from dcbench.cache import ArtifactCache
from dcbench.data import RealData, load_dataset
from dcbench.errors import DivergenceError
from dcbench.method import METHODS, config_dict, parse_overrides
from dcbench.protocol import PRESETS, eval_seed, seed_hash
from evaluators.hard import HardLabelEvaluator, LearnedLrHardLabelEvaluator

RESULTS = Path(__file__).parent / "results"
BASE = {"expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100.0, "lr_lr": 1e-07}


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


def score(split: RealData, settings: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Distil with ``settings`` on the split and evaluate on its held-out images."""
    method = METHODS.get("mtt")()
    config = method.resolve_config(args.dataset, args.ipc, settings)
    device = torch.device("cpu")
    start = time.perf_counter()
    try:
        distilled = method.distill(
            split, args.ipc, config, seed=seed_hash("mtt-tune", args.dataset, args.ipc),
            device=device, budget=PRESETS.get("paper"), cache=ArtifactCache(args.cache),
        )  # fmt: skip
    except DivergenceError as err:
        return {"diverged": str(err), "score": 0.0, "distill_s": time.perf_counter() - start}
    distill_s = time.perf_counter() - start
    fast = PRESETS.get("fast")
    seeds = [eval_seed(args.dataset, "tune", "convnet", k) for k in range(args.eval_seeds)]
    result: dict[str, Any] = {"train_lr": distilled.train_lr, "distill_s": round(distill_s, 1)}
    evaluators = {"hard": HardLabelEvaluator(), "learned": LearnedLrHardLabelEvaluator()}
    for name, evaluator in evaluators.items():
        if name == "learned" and not (distilled.train_lr or 0) > 0:
            result[name] = [0.0] * len(seeds)  # α ≤ 0 cannot train a network
            continue
        metrics = evaluator.evaluate(
            distilled, split, "convnet", seeds=seeds, device=device, budget=fast
        )
        result[name] = [round(m["accuracy"], 4) for m in metrics]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    result["score"] = round((mean(result["hard"]) + mean(result["learned"])) / 2, 4)
    result["loss_trace"] = distilled.meta.get("loss_trace")
    return result


def load_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_summary(lines: list[dict[str, Any]], path: Path) -> None:
    """The markdown table of every scored setting, per (dataset, ipc), best first."""
    keys = ["lr_img", "max_start_epoch", "lr_lr", "syn_steps", "batch_syn", "iterations"]
    out = [
        "# MTT settings search on a validation split of TRAIN (benchmarks/tune_mtt.py)",
        "",
        "Score = mean held-out accuracy of ConvNets trained 300 epochs (fast preset protocol) on",
        "the distilled set, averaged over the fixed-lr (`hard`, 0.01) and learned-α (`learned`)",
        "evaluations. The test split is never used. Raw lines: `tune_mtt.jsonl`.",
    ]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["dataset"], line["ipc"]), []).append(line)
    for (dataset, ipc), rows in sorted(groups.items()):
        first = rows[0]
        out += [
            "",
            f"## {dataset}, IPC {ipc} — {first['val_per_class']} held-out train images per class, "
            f"experts {first['config']['num_experts']} × {first['config']['train_epochs']} epochs, "
            f"expert_epochs {first['config']['expert_epochs']}, {first['eval_seeds']} eval seeds",
            "",
            "| stage | " + " | ".join(keys) + " | hard | learned | α | score | distil s |",
            "|" + "---|" * (len(keys) + 6),
        ]
        for r in sorted(rows, key=lambda r: -r["score"]):
            cfg = r["config"]
            accs = [
                "diverged" if "diverged" in r else f"{100 * sum(r[k]) / len(r[k]):.1f}"
                for k in ("hard", "learned")
            ]
            alpha = f"{r['train_lr']:.3g}" if r.get("train_lr") is not None else "–"
            out.append(
                f"| {r['stage']} | " + " | ".join(str(cfg[k]) for k in keys)
                + f" | {accs[0]} | {accs[1]} | {alpha} | {100 * r['score']:.1f} "
                f"| {r['distill_s']} |"
            )  # fmt: skip
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=100, help="distillation iterations per run")
    ap.add_argument("--num-experts", type=int, default=5)
    ap.add_argument("--train-epochs", type=int, default=15)
    ap.add_argument("--val-per-class", type=int, default=30)
    ap.add_argument("--eval-seeds", type=int, default=2)
    ap.add_argument("--lr-img", default="10,100,1000", help="stage 1 grid")
    ap.add_argument("--max-start", default="2,5,10", help="stage 2 grid")
    ap.add_argument("--lr-lr", default="1e-7,1e-6,1e-5", help="stage 3 grid")
    ap.add_argument("--set", dest="settings", action="append", default=[], help="key=value")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cache", default="/tmp/mtt-tune-cache", help="expert cache folder")
    ap.add_argument("--out", default=str(RESULTS / "tune_mtt.jsonl"))
    args = ap.parse_args()

    data = load_dataset(args.dataset, args.data_root)
    split = holdout_split(data, args.val_per_class, seed_hash("mtt-tune-val", args.dataset))
    out = Path(args.out)
    done = load_lines(out)
    base = {
        **BASE, **parse_overrides(args.settings), "iterations": args.iterations,
        "num_experts": args.num_experts, "train_epochs": args.train_epochs,
    }  # fmt: skip

    def run(stage: str, settings: dict[str, Any]) -> float:
        method = METHODS.get("mtt")()
        config = config_dict(method.resolve_config(args.dataset, args.ipc, settings))
        for line in done:
            if (line["dataset"], line["ipc"], line["config"]) == (args.dataset, args.ipc, config):
                return line["score"]
        result = score(split, settings, args)
        line = {
            "dataset": args.dataset, "ipc": args.ipc, "stage": stage, "config": config,
            "val_per_class": args.val_per_class, "eval_seeds": args.eval_seeds, **result,
            "loadavg_1m": round(os.getloadavg()[0], 2), "threads": torch.get_num_threads(),
        }  # fmt: skip
        print(json.dumps({k: v for k, v in line.items() if k != "loss_trace"}), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        done.append(line)
        write_summary(done, out.with_suffix(".md"))
        return result["score"]

    run("init", {**base, "iterations": 0})
    best = dict(base)
    for stage, key, grid in (
        ("1 lr_img", "lr_img", args.lr_img),
        ("2 max_start_epoch", "max_start_epoch", args.max_start),
        ("3 lr_lr", "lr_lr", args.lr_lr),
    ):
        values = [type(BASE[key])(v) for v in grid.split(",") if v]
        scores = {v: run(stage, {**best, key: v}) for v in values}
        if scores:
            best[key] = max(scores, key=lambda v: scores[v])
    print(json.dumps({"best": best}), flush=True)


if __name__ == "__main__":
    main()
