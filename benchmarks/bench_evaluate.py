"""Throughput of the hard-label evaluator: seeds trained together vs a plain per-seed loop.

Trains ``--seeds`` ConvNets on a random real IPC-k set (spec protocol: SGD, DSA every batch, E+1
passes with the lr drop) both ways, ``--repeats`` times each, and reports the median training time.
The final test pass, the same work either way, is timed separately. Prints one JSON line per IPC
and appends them to ``--out``.

    python benchmarks/bench_evaluate.py --dataset fashionmnist --ipc 1,10 --seeds 5 --epochs 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial

import torch

import dcbench
from dcbench.allocator import retain_freed_memory
from dcbench.augment import DSA
from dcbench.cost import cpu_name
from dcbench.data import load_dataset
from dcbench.models import build_model
from dcbench.protocol import eval_seed
from dcbench.sampling import sample_per_class
from dcbench.training import TrainRecipe, test_accuracy, train_networks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashionmnist")
    ap.add_argument("--ipc", default="1,10")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--model", default="convnet")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc malloc as it is")
    args = ap.parse_args()
    if not args.system_malloc:
        retain_freed_memory()

    device = torch.device(args.device)
    data = load_dataset(args.dataset)
    info = data.info
    build = partial(
        build_model, args.model, info.channels, info.num_classes, (info.height, info.width)
    )
    recipe = TrainRecipe(epochs=args.epochs)
    seeds = [eval_seed(args.dataset, "hard", args.model, s) for s in range(args.seeds)]
    test_x, test_y = data.test(device)
    test_s: float | None = None
    for ipc in [int(i) for i in args.ipc.split(",")]:
        idx = sample_per_class(data, ipc, torch.Generator().manual_seed(0))
        x = data.normalize(data.train_images[idx], device)
        y = data.train_labels[idx].to(device)

        def timed_training(ensemble: bool, x: torch.Tensor = x, y: torch.Tensor = y):
            _sync(device)
            t = time.perf_counter()
            models = train_networks(
                build, x, y, seeds, recipe, augment=DSA(), device=device, ensemble=ensemble
            )
            _sync(device)
            return time.perf_counter() - t, models

        loop_times, ens_times = [], []
        for _ in range(args.repeats):
            t_ens, _ = timed_training(True)
            ens_times.append(t_ens)
            t_loop, models = timed_training(False)
            loop_times.append(t_loop)
        if test_s is None:  # the test pass is the same work for every IPC and engine: time it once
            t = time.perf_counter()
            for m in models:
                test_accuracy(m, test_x, test_y, device)
            _sync(device)
            test_s = time.perf_counter() - t
        loop_s, ens_s = statistics.median(loop_times), statistics.median(ens_times)
        result = {
            "bench": "evaluate",
            "dataset": args.dataset,
            "ipc": ipc,
            "model": args.model,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "loop_train_s": round(loop_s, 3),
            "ensemble_train_s": round(ens_s, 3),
            "loop_seeds_per_s": round(args.seeds / loop_s, 4),
            "ensemble_seeds_per_s": round(args.seeds / ens_s, 4),
            "speedup": round(loop_s / ens_s, 3),
            "test_s_all_seeds": round(test_s, 3),
            "loop_train_s_all": [round(t, 3) for t in loop_times],
            "ensemble_train_s_all": [round(t, 3) for t in ens_times],
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "dcbench": dcbench.__version__,
        }
        line = json.dumps(result)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
