"""Coordinate search of a method's settings on a validation split of TRAIN (never the test split).

For datasets without published settings (digits). Each ``--grid key=v1,v2,...`` is one stage, run
in the order given; a stage scores every value with the best values of the earlier stages fixed
and keeps its best. ``iterations=0`` (the method's initialisation) is scored as the baseline.
Scoring (:mod:`tuning`): distil on train minus ``--val-per-class`` held-out images per class,
train ConvNets on the set with the ``fast`` preset's hard-label protocol, test on the held-out
images. Every run appends one JSON line to ``--out`` and is skipped when already there, so the
search resumes; the markdown summary next to it is rewritten from the lines.

    OMP_NUM_THREADS=2 python benchmarks/tune_settings.py --method idm --dataset digits --ipc 1 \\
        --set iterations=200 --grid ce_weight=0.5,0.1,0.02,0 --grid lr_img=0.2,1,0.05
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


def write_summary(lines: list[dict[str, Any]], path: Path) -> None:
    """One markdown table per (method, dataset, ipc), best first, with the searched keys."""
    out = [
        "# Settings search on a validation split of TRAIN (benchmarks/tune_settings.py)",
        "",
        "Score = mean held-out accuracy (%) of ConvNets trained with the fast preset's hard-label",
        "protocol (300 epochs, DSA, lr 0.01) on the distilled set. The test split is never used.",
        f"Raw lines: `{path.with_suffix('.jsonl').name}`.",
    ]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["method"], line["dataset"], line["ipc"]), []).append(line)
    for (method, dataset, ipc), rows in sorted(groups.items()):
        keys = sorted({k for r in rows for k in r["searched"]} | {"iterations"})
        out += [
            "",
            f"## {method}, {dataset}, IPC {ipc} — {rows[0]['val_per_class']} held-out train "
            f"images per class, {rows[0]['eval_seeds']} evaluation seeds",
            "",
            "| stage | " + " | ".join(keys) + " | held-out accuracy | distil s |",
            "|" + "---|" * (len(keys) + 3),
        ]
        for r in sorted(rows, key=lambda r: -r["score"]):
            acc = "diverged" if "diverged" in r else f"{100 * r['score']:.1f}"
            cells = " | ".join(str(r["config"].get(k)) for k in keys)
            out.append(f"| {r['stage']} | {cells} | {acc} | {r['distill_s']} |")
    path.write_text("\n".join(out) + "\n")


def parse_grid(text: str) -> tuple[str, list[str]]:
    key, _, values = text.partition("=")
    if not key or not values:
        raise SystemExit(f"--grid needs key=v1,v2,... (got {text!r})")
    return key, [v for v in values.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--set", dest="settings", action="append", default=[], help="key=value")
    ap.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (one stage)")
    ap.add_argument("--val-per-class", type=int, default=30)
    ap.add_argument("--eval-seeds", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cache", default="/tmp/tune-cache", help="artifact cache folder")
    ap.add_argument("--out", default=str(RESULTS / "tune_settings.jsonl"))
    args = ap.parse_args()
    retain_freed_memory()  # as the CLI: reuse freed activation memory (dcbench/allocator.py)

    method = METHODS.get(args.method)()
    stages = [parse_grid(g) for g in args.grid]
    searched = [key for key, _ in stages]
    data = load_dataset(args.dataset, args.data_root)
    split = holdout_split(data, args.val_per_class, seed_hash("tune-val", args.dataset))
    out = Path(args.out)
    done = load_lines(out)
    base = parse_overrides(args.settings)

    def run(stage: str, settings: dict[str, Any]) -> float:
        config = config_dict(method.resolve_config(args.dataset, args.ipc, settings))
        for line in done:
            key = (line["method"], line["dataset"], line["ipc"], line["config"])
            if key == (args.method, args.dataset, args.ipc, config):
                return line["score"]
        result = score_setting(
            args.method, split, args.dataset, args.ipc, settings,
            eval_seeds=args.eval_seeds, cache=args.cache,
        )  # fmt: skip
        line = {
            "method": args.method, "dataset": args.dataset, "ipc": args.ipc, "stage": stage,
            "searched": searched, "config": config, "val_per_class": args.val_per_class,
            "eval_seeds": args.eval_seeds, **result,
        }  # fmt: skip
        record_line(out, done, line, write_summary)
        return result["score"]

    run("init", {**base, "iterations": 0})
    best = dict(base)
    for number, (key, grid) in enumerate(stages, 1):
        scores = {v: run(f"{number} {key}", {**best, key: v}) for v in grid}
        if scores:
            best[key] = max(scores, key=lambda v: scores[v])
    print(json.dumps({"best": best}), flush=True)


if __name__ == "__main__":
    main()
