"""Speed and memory of one distillation method: seconds per iteration, peak RSS, FLOP/s.

Runs ``--method`` on ``--dataset`` at ``--ipc`` with its config's ``iterations`` set to ``--iters``
under the ``paper`` preset (so no preset scaling applies), timestamps every ``progress`` call and
prints ONE JSON line:

- ``s_per_iter``: the median iteration time after the first 2 (warm-up) iterations;
- ``peak_rss_mb``: peak resident memory during the distillation (sampled, ``CostMeter``);
- ``flops_per_iter``: the FLOPs of one iteration from the method's FLOP model (below; ``null`` for
  methods without one), ``achieved_gflops`` = flops_per_iter / s_per_iter;
- ``measured_gflops``: this machine's measured convolution throughput: the median of timed forward
  + backward passes (parameter and input gradients) of the method's network on a batch of 256
  images of the dataset's shape; ``fraction`` = achieved / measured.

FLOP models (2 FLOPs per multiply-add; F = forward FLOPs of one image through ``net.embed``, counted
by ``torch.utils.flop_counter`` on the real network, convolutions and matrix products only):

- ``dm``: F · n_real + 2 · F · n_syn, with n_real = Σ_c min(batch_real, |class c|) real images
  embedded without gradients and n_syn = C · ipc synthetic images embedded and back-propagated to
  the pixels only (the input gradient of a layer costs its forward; the network is frozen, so no
  weight gradients). DSA, the loss and the SGD step are memory-bound and not counted.

``--variant reference`` times, instead of the method, a plain port of the reference code's loop
structure, for a same-machine baseline: ``dm``: ``main_DM.py``'s per-class real batch, DSA draw
and separate real and synthetic forward passes, one SGD step, with dcbench's modules; ``mtt``:
``distill.py``'s unrolled student on a flat vector with the reference's own modules (ATen's
average pool, GroupNorm), ``backward()`` from the matching loss. Run the reference with
``--system-malloc``: the reference code does not change the allocator.

    python benchmarks/bench_distill.py --method dm --dataset fashionmnist --ipc 10 --iters 20

``mtt`` trains its expert trajectories before the first iteration (outside ``s_per_iter``, inside
``peak_rss_mb``): 100 × 50 epochs under ``paper`` unless ``--set num_experts=N --set
train_epochs=E`` (E ≥ expert_epochs; the per-iteration cost depends on syn_steps, batch_syn and
the model, not on the experts), and ``--cache DIR`` keeps them between runs.
``--set checkpoint_inner=true`` times MTT's memory-saving variant (inner steps recomputed in the
backward pass):

    python benchmarks/bench_distill.py --method mtt --dataset fashionmnist --ipc 10 --iters 3 \
        --set num_experts=1 --set train_epochs=3 --cache /tmp/mtt-experts \
        [--set checkpoint_inner=true]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import dcbench
import methods  # noqa: F401  (registers the built-in methods)
from dcbench.allocator import retain_freed_memory
from dcbench.augment import DSA
from dcbench.cache import ArtifactCache
from dcbench.cost import CostMeter, cpu_name
from dcbench.data import RealData, load_dataset
from dcbench.matching import model_builder, random_network
from dcbench.method import METHODS, config_dict, parse_overrides
from dcbench.protocol import PRESETS, seed_hash
from dcbench.sampling import sample_per_class
from dcbench.training import init_model

WARMUP = 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _network(data: RealData, config) -> torch.nn.Module:
    fields = {f.name for f in dataclasses.fields(config)}
    options = {k: getattr(config, k) for k in ("width", "depth") if k in fields}
    return init_model(model_builder(data, getattr(config, "model", "convnet"), **options), 0)


def embed_flops(net: torch.nn.Module, data: RealData) -> int:
    """Forward FLOPs of one image through ``net.embed`` (convolutions and matrix products)."""
    x = torch.zeros(1, *data.info.image_shape)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net.embed(x)
    return int(counter.get_total_flops())


def dm_flops(data: RealData, ipc: int, config) -> tuple[int, str]:
    f = embed_flops(_network(data, config), data)
    n_real = sum(min(config.batch_real, int(idx.numel())) for idx in data.class_indices)
    n_syn = data.info.num_classes * ipc
    formula = f"F*n_real + 2*F*n_syn, F={f}, n_real={n_real}, n_syn={n_syn}"
    return f * n_real + 2 * f * n_syn, formula


FLOP_MODELS: dict[str, Callable[[RealData, int, object], tuple[int, str]]] = {"dm": dm_flops}


def reference_dm(
    data: RealData,
    ipc: int,
    config,
    *,
    seed: int,
    device: torch.device,
    progress: Callable[[int, int], None],
) -> None:
    """``main_DM.py``'s iteration structure (the ``ConvNet`` branch), for timing only.

    Per class: a random permutation of the class's indices cut at ``batch_real``, one siamese DSA
    draw for the class's real and synthetic images, ``embed(real).detach()`` and ``embed(syn)`` in
    separate passes, the class's term added to the loss; then one SGD step. The whole train set is
    normalised once, as the reference materialises it.
    """
    gen = torch.Generator().manual_seed(seed)
    build = model_builder(data, config.model, width=config.width, depth=config.depth)
    dsa = DSA(config.dsa_strategy)
    images_all = data.normalize(data.train_images, device)
    idx = sample_per_class(data, ipc, gen)
    syn = images_all[idx.to(device)].clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=config.lr_img, momentum=config.momentum)
    for it in range(config.iterations):
        net = random_network(build, seed_hash(seed, "reference-net", it), device)
        loss = torch.zeros((), device=device)
        for c, members in enumerate(data.class_indices):
            perm = torch.randperm(members.numel(), generator=gen)[: config.batch_real]
            img_real = images_all[members[perm].to(device)]
            img_syn = syn[c * ipc : (c + 1) * ipc]
            img_real, img_syn = dsa.siamese(img_real, img_syn, gen)
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss = loss + ((output_real.mean(0) - output_syn.mean(0)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        progress(it + 1, config.iterations)


def reference_mtt(
    data: RealData,
    ipc: int,
    config,
    *,
    seed: int,
    device: torch.device,
    progress: Callable[[int, int], None],
) -> None:
    """``distill.py``'s outer iteration (spec mtt_and_benchmarks.md §3.3), for timing only.

    The reference's modules (``nn.Conv2d``, ``nn.GroupNorm(C, C)``, in-place ``nn.ReLU``,
    ``nn.AvgPool2d(2, 2)``, ``nn.Linear``) on a flat parameter vector (``functional_call`` in place
    of ``ReparamModule``'s view rebinding, the same tensors); per iteration: a list of student
    parameter vectors grown by ``syn_steps`` create-graph steps on DSA-augmented chunks of a
    random permutation (one family per chunk), the sum-of-squares matching loss divided by the
    start distance, ``backward()`` into the images and α, one SGD step on each. Start and target
    are two random initialisations (the expert values do not change the work).
    """
    gen = torch.Generator().manual_seed(seed)
    dsa = DSA(config.dsa_strategy)
    channels, height, width = data.info.image_shape
    layers: list[torch.nn.Module] = []
    size, in_channels, net_width = height, channels, config.width or 128
    for d in range(config.depth or 3):
        pad = 3 if channels == 1 and d == 0 else 1
        layers += [
            torch.nn.Conv2d(in_channels, net_width, 3, padding=pad),
            torch.nn.GroupNorm(net_width, net_width, affine=True),
            torch.nn.ReLU(inplace=True),
            torch.nn.AvgPool2d(2, 2),
        ]
        size, in_channels = (size + 2 * pad - 2) // 2, net_width
    classifier = torch.nn.Linear(net_width * size * size, data.info.num_classes)
    net = torch.nn.Sequential(*layers, torch.nn.Flatten(), classifier).to(device)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    numels = [p.numel() for _, p in net.named_parameters()]

    def flat_forward(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        views = {n: v.view(s) for n, v, s in zip(names, w.split(numels), shapes)}
        return torch.func.functional_call(net, views, (x,))

    def random_flat(k: int) -> torch.Tensor:
        torch.manual_seed(seed_hash(seed, "reference-mtt", k))
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    idx = sample_per_class(data, ipc, gen)
    syn = data.normalize(data.train_images[idx], device).requires_grad_(True)
    labels = torch.arange(data.info.num_classes, device=device).repeat_interleave(ipc)
    syn_lr = torch.tensor(float(config.lr_teacher), device=device, requires_grad=True)
    opt_img = torch.optim.SGD([syn], lr=config.lr_img, momentum=0.5)
    opt_lr = torch.optim.SGD([syn_lr], lr=config.lr_lr, momentum=0.5)
    batch_syn = config.batch_syn or syn.shape[0]
    for it in range(config.iterations):
        start, target = random_flat(2 * it), random_flat(2 * it + 1)
        student_params = [start.clone().requires_grad_(True)]
        chunks: list[torch.Tensor] = []
        for _ in range(config.syn_steps):
            if not chunks:
                chunks = list(torch.randperm(syn.shape[0], generator=gen).split(batch_syn))
            these = chunks.pop()
            x = syn[these]
            x = dsa.apply(x, dsa.sample(x.shape[0], height, width, gen, one_family=True))
            ce = F.cross_entropy(flat_forward(student_params[-1], x), labels[these])
            (grad,) = torch.autograd.grad(ce, student_params[-1], create_graph=True)
            student_params.append(student_params[-1] - syn_lr * grad)
        num_params = start.numel()
        param_loss = F.mse_loss(student_params[-1], target, reduction="sum") / num_params
        param_dist = F.mse_loss(start, target, reduction="sum") / num_params
        loss = param_loss / param_dist
        opt_img.zero_grad()
        opt_lr.zero_grad()
        loss.backward()
        opt_img.step()
        opt_lr.step()
        del student_params
        progress(it + 1, config.iterations)


VARIANTS = {"dm": reference_dm, "mtt": reference_mtt}


def _timed(fn: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after one warm-up run."""
    times = []
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def measured_conv_gflops(
    data: RealData, config, device: torch.device, batch: int = 256, repeats: int = 5
) -> dict[str, float]:
    """This machine's convolution throughput (GFLOP/s, medians) at the method's shapes.

    ``conv_gflops``: forward of the network's costliest convolution (most FLOPs per image) at
    its input shape on ``batch`` images (pure kernel throughput, the reference for ``fraction``).
    ``convnet_fwdbwd_gflops``: forward + backward (weight and input gradients) of the whole network
    on ``batch`` images, for context (it includes the memory-bound norm, ReLU and pooling passes).
    """
    net = _network(data, config).to(device)
    shapes: dict[torch.nn.Conv2d, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda m, inp, out: shapes.__setitem__(m, tuple(inp[0].shape)))
        for m in net.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        net.embed(torch.zeros(1, *data.info.image_shape, device=device))
    for h in hooks:
        h.remove()
    gen = torch.Generator().manual_seed(0)
    best, best_flops = None, -1
    for conv, shape in shapes.items():  # the convolution with the most FLOPs per image
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            conv(torch.zeros(shape, device=device))
        if counter.get_total_flops() > best_flops:
            best, best_flops = conv, int(counter.get_total_flops())
    xin = torch.randn(batch, *shapes[best][1:], generator=gen).to(device)
    with torch.no_grad():
        conv_s = _timed(lambda: best(xin), device, repeats)

    x = torch.randn(batch, *data.info.image_shape, generator=gen).to(device).requires_grad_(True)

    def fwd_bwd() -> None:
        net.embed(x).sum().backward()
        net.zero_grad(set_to_none=True)
        x.grad = None

    net_s = _timed(fwd_bwd, device, repeats)
    # backward = input + weight gradients = 2× the forward
    net_flops = 3 * embed_flops(net, data) * batch
    return {
        "conv_gflops": best_flops * batch / conv_s / 1e9,
        "convnet_fwdbwd_gflops": net_flops / net_s / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="dm")
    ap.add_argument("--dataset", default="fashionmnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--iters", type=int, default=20, help="iterations (at least 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--set", dest="settings", action="append", default=[], help="key=value")
    ap.add_argument(
        "--variant", choices=["method", "reference"], default="method",
        help="time the method, or a port of its reference code's loop (dm, mtt)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None, help="append the JSON line to this file")
    ap.add_argument("--cache", default=None, help="artifact cache folder kept between runs")
    ap.add_argument(
        "--system-malloc", action="store_true",
        help="leave glibc malloc as it is (default: retain freed memory, as the CLI does)",
    )  # fmt: skip
    args = ap.parse_args()
    malloc = "system" if args.system_malloc else "retain" if retain_freed_memory() else "system"
    if args.iters <= WARMUP:
        ap.error(f"--iters must exceed the {WARMUP} warm-up iterations")
    if args.variant == "reference" and args.method not in VARIANTS:
        ap.error(f"no reference variant for {args.method!r}; available: {', '.join(VARIANTS)}")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset(args.dataset, args.data_root)
    method = METHODS.get(args.method)()
    if "iterations" not in {f.name for f in dataclasses.fields(method.Config)}:
        ap.error(f"method {args.method!r} has no 'iterations' setting")
    overrides = {**parse_overrides(args.settings), "iterations": str(args.iters)}
    config = method.resolve_config(args.dataset, args.ipc, overrides)
    budget = PRESETS.get("paper")

    stamps: list[float] = []

    def progress(done: int, total: int) -> None:
        _sync(device)
        stamps.append(time.perf_counter())

    load_before = os.getloadavg()
    with CostMeter(device) as meter:
        start = time.perf_counter()
        if args.variant == "method":
            method.distill(
                data, args.ipc, config, seed=args.seed, device=device, budget=budget,
                progress=progress, cache=ArtifactCache(args.cache) if args.cache else None,
            )  # fmt: skip
        else:
            VARIANTS[args.method](
                data, args.ipc, config, seed=args.seed, device=device, progress=progress
            )
    if len(stamps) != args.iters:
        raise SystemExit(f"expected {args.iters} progress calls, got {len(stamps)}")
    per_iter = [b - a for a, b in zip([start, *stamps], stamps)]
    s_per_iter = statistics.median(per_iter[WARMUP:])

    result = {
        "bench": "distill",
        "method": args.method,
        "variant": args.variant,
        "dataset": args.dataset,
        "ipc": args.ipc,
        "iters": args.iters,
        "s_per_iter": round(s_per_iter, 4),
        "s_per_iter_all": [round(t, 4) for t in per_iter],
        "peak_rss_mb": round(meter.peak_rss / 2**20, 1),
    }
    if meter.device.type == "cuda":
        result["peak_cuda_mb"] = round(meter.peak_cuda / 2**20, 1)
    if args.method in FLOP_MODELS:
        flops, formula = FLOP_MODELS[args.method](data, args.ipc, config)
        achieved = flops / s_per_iter / 1e9
        measured = measured_conv_gflops(data, config, device)
        result.update({
            "flops_per_iter": flops, "flop_formula": formula,
            "achieved_gflops": round(achieved, 2),
            "measured_conv_gflops": round(measured["conv_gflops"], 2),
            "fraction": round(achieved / measured["conv_gflops"], 3),
            "convnet_fwdbwd_gflops": round(measured["convnet_fwdbwd_gflops"], 2),
        })  # fmt: skip
    result.update({
        "config": config_dict(config),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(),
        "malloc": malloc,
        "loadavg_1m": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "torch": torch.__version__,
        "dcbench": dcbench.__version__,
    })  # fmt: skip
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
