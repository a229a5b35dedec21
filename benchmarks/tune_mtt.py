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
from pathlib import Path
from typing import Any

from tuning import RESULTS, holdout_split, load_lines, record_line, score_setting

from dcbench.allocator import retain_freed_memory
from dcbench.data import load_dataset
from dcbench.method import METHODS, config_dict, parse_overrides
from dcbench.protocol import seed_hash

BASE = {"expert_epochs": 2, "max_start_epoch": 2, "lr_img": 100.0, "lr_lr": 1e-07}


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
    retain_freed_memory()  # as the CLI: reuse freed activation memory (dcbench/allocator.py)

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
        result = score_setting(
            "mtt", split, args.dataset, args.ipc, settings, eval_seeds=args.eval_seeds,
            cache=args.cache, learned_lr=True,
        )  # fmt: skip
        line = {
            "dataset": args.dataset, "ipc": args.ipc, "stage": stage, "config": config,
            "val_per_class": args.val_per_class, "eval_seeds": args.eval_seeds, **result,
        }  # fmt: skip
        record_line(out, done, line, write_summary)
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
