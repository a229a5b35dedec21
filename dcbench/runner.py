"""Plan the grid ``method × dataset × ipc × distill_seed`` (then ``evaluator × model × eval_seed``),
skip what the store holds, execute the rest and write each finished record atomically.

A failed job is recorded as failed (with its one-line reason) and the run goes on; rerunning retries
failed and missing records only, so killing a run and starting it again loses and duplicates
nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

import dcbench
from dcbench.cost import CostMeter, environment
from dcbench.data import DATASETS, RealData, load_dataset
from dcbench.errors import DcbenchError
from dcbench.evaluator import EVALUATORS
from dcbench.method import METHODS, Method, config_dict
from dcbench.models import MODELS
from dcbench.protocol import PRESETS, PROTOCOL_VERSION, Preset, content_key, distill_seed, eval_seed
from dcbench.store import ResultStore

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in {"cpu", "cuda"} and not name.startswith("cuda:"):
        raise DcbenchError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DcbenchError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


@dataclass
class RunSpec:
    """What to run. ``eval_seeds=None`` takes the preset's number of seeds (0..n−1)."""

    methods: list[str]
    datasets: list[str]
    ipcs: list[int]
    models: list[str] = field(default_factory=lambda: ["convnet"])
    evaluators: list[str] = field(default_factory=lambda: ["hard"])
    distill_seeds: list[int] = field(default_factory=lambda: [0])
    eval_seeds: list[int] | None = None
    preset: str = "smoke"
    overrides: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    data_root: str | None = None
    download: bool = False


@dataclass
class EvalTask:
    evaluator: str
    model: str
    seeds: list[int]
    keys: list[str]


@dataclass
class Job:
    """One distillation cell and its evaluations."""

    method: str
    dataset: str
    ipc: int | None
    distill_seed: int
    config: Any
    artifact_key: str
    evals: list[EvalTask]

    @property
    def label(self) -> str:
        ipc = "all" if self.ipc is None else self.ipc
        return f"{self.method}/{self.dataset}/ipc{ipc}/seed{self.distill_seed}"


@dataclass
class RunSummary:
    keys: list[str] = field(default_factory=list)  # every record key the spec covers
    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)  # one line per failed job/evaluation


def _split_overrides(overrides: dict[str, str], methods: dict[str, Method]) -> dict[str, dict]:
    """``key=v`` applies to every method with that setting; ``method.key=v`` to one method."""
    per_method: dict[str, dict] = {name: {} for name in methods}
    for key, value in overrides.items():
        if "." in key:
            name, sub = key.split(".", 1)
            if name not in methods:
                raise DcbenchError(f"--set {key}: method {name!r} is not part of this run")
            per_method[name][sub] = value
            continue
        takers = [n for n, m in methods.items() if key in m.Config.__dataclass_fields__]
        if not takers:
            raise DcbenchError(f"--set {key}: no method in this run has a setting {key!r}")
        for name in takers:
            per_method[name][key] = value
    return per_method


def plan(spec: RunSpec, store: ResultStore) -> tuple[list[Job], Preset, dict[str, RealData]]:
    """Validate the spec (one-line errors) and expand it into jobs."""
    preset = PRESETS.get(spec.preset)
    methods = {name: METHODS.get(name)() for name in spec.methods}
    methods = {m.name: m for m in methods.values()}
    for name in spec.datasets:
        DATASETS.get(name)
    for name in spec.models:
        MODELS.get(name)
    evaluators = {EVALUATORS.get(name).name: EVALUATORS.get(name) for name in spec.evaluators}
    if not spec.ipcs:
        raise DcbenchError("no IPC given")
    for ipc in spec.ipcs:
        if ipc <= 0:
            raise DcbenchError(f"ipc must be a positive integer, got {ipc}")
    eval_seeds = (
        spec.eval_seeds if spec.eval_seeds is not None else list(range(preset.num_eval_seeds))
    )
    if not eval_seeds or not spec.distill_seeds:
        raise DcbenchError("at least one distillation seed and one evaluation seed are needed")
    per_method = _split_overrides(spec.overrides, methods)
    # Every soft-label track needs its control: the random real subset of the same IPC under the
    # identical recipe (spec edc.md §8.4, DD-Ranking's IOR). Planned once, soft evaluators only
    # unless the user listed ``random`` too.
    soft = [name for name, cls in evaluators.items() if cls.label_kind == "soft"]
    wanted = {name: list(evaluators) for name in methods}
    if soft and "random" not in methods:
        methods["random"] = METHODS.get("random")()
        per_method["random"] = {}
        wanted["random"] = soft
    datasets = {
        name: load_dataset(name, spec.data_root, download=spec.download) for name in spec.datasets
    }
    jobs = []
    for method in methods.values():
        # the upper bound (the whole train split) is not a distilled set: the soft track's upper
        # bound is the teachers' own accuracy, recorded with every soft record
        names = [
            n for n in wanted[method.name]
            if not (method.ipc_independent and evaluators[n].label_kind == "soft")
        ]  # fmt: skip
        for dname, data in datasets.items():
            if dname in method.unsupported_datasets:
                raise DcbenchError(f"method {method.name!r} does not support dataset {dname!r}")
            ipcs: list[int | None] = [None] if method.ipc_independent else list(spec.ipcs)
            for ipc in ipcs:
                if ipc is not None and ipc > data.min_class_size:
                    raise DcbenchError(
                        f"ipc {ipc} exceeds the smallest class of {dname} "
                        f"({data.min_class_size} training images)"
                    )
                config = method.resolve_config(dname, ipc or 0, per_method[method.name])
                for dseed in spec.distill_seeds:
                    akey = content_key({
                        "kind": "distilled", "method": method.name, "config": config_dict(config),
                        "dataset": dname, "ipc": ipc, "distill_seed": dseed, "preset": preset.name,
                        "protocol": PROTOCOL_VERSION, "version": dcbench.__version__,
                    })  # fmt: skip
                    evals = []
                    for ev_name in names:
                        for model in spec.models:
                            keys = [
                                content_key(
                                    {
                                        "kind": "record",
                                        "artifact": akey,
                                        "evaluator": ev_name,
                                        "evaluator_protocol": evaluators[ev_name].protocol_version,
                                        "model": model,
                                        "eval_seed": s,
                                        "preset": preset.name,
                                    }
                                )  # fmt: skip
                                for s in eval_seeds
                            ]
                            evals.append(EvalTask(ev_name, model, list(eval_seeds), keys))
                    if evals:
                        jobs.append(Job(method.name, dname, ipc, dseed, config, akey, evals))
    return jobs, preset, datasets


ProgressFactory = Callable[[str, int], Callable[[int, int], None]]


def run(
    spec: RunSpec,
    store: ResultStore,
    *,
    on_job: Callable[[Job, int, int], None] | None = None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """Execute ``spec`` against ``store``; returns what was done, skipped and failed."""
    jobs, preset, datasets = plan(spec, store)
    device = resolve_device(spec.device)
    summary = RunSummary()
    for i, job in enumerate(jobs):
        if on_job is not None:
            on_job(job, i, len(jobs))
        todo = []
        for task in job.evals:
            summary.keys.extend(task.keys)
            missing = [(s, k) for s, k in zip(task.seeds, task.keys) if not store.is_done(k)]
            summary.skipped += len(task.seeds) - len(missing)
            if missing:
                todo.append((task, missing))
        if not todo:
            continue
        _run_job(job, todo, preset, datasets[job.dataset], store, device, summary, progress)
    return summary


def _run_job(job, todo, preset, data, store, device, summary, progress) -> None:
    method = METHODS.get(job.method)()
    base = {
        "method": job.method, "dataset": job.dataset, "ipc": job.ipc,
        "distill_seed": job.distill_seed, "preset": preset.name, "label_kind": method.label_kind,
        "config": config_dict(job.config), "artifact": job.artifact_key,
        "protocol": PROTOCOL_VERSION,
    }  # fmt: skip
    env = environment(device)
    try:
        distilled, distill_cost = _distilled(job, method, preset, data, store, device, progress)
    except Exception as exc:  # recorded, the other jobs go on
        reason = _reason(exc)
        log.debug("distillation of %s failed", job.label, exc_info=True)
        for task, missing in todo:
            _write_failed(store, base, task, missing, f"distillation failed: {reason}", env)
        summary.failed.append(f"{job.label}: distillation failed: {reason}")
        return
    for task, missing in todo:
        evaluator = EVALUATORS.get(task.evaluator)()
        seeds = [s for s, _ in missing]
        derived = [eval_seed(job.dataset, task.evaluator, task.model, s) for s in seeds]
        tick = progress(f"{job.label} {task.evaluator}/{task.model}", 0) if progress else None
        try:
            with CostMeter(device) as meter:
                metrics = evaluator.evaluate(
                    distilled, data, task.model, seeds=derived, device=device, budget=preset,
                    progress=tick, cache=store.cache,
                )  # fmt: skip
        except Exception as exc:
            reason = _reason(exc)
            log.debug("evaluation of %s failed", job.label, exc_info=True)
            _write_failed(store, base, task, missing, f"evaluation failed: {reason}", env)
            summary.failed.append(f"{job.label} {task.evaluator}/{task.model}: {reason}")
            continue
        eval_cost = meter.as_dict("eval_total")
        for (seed, key), d_seed, m in zip(missing, derived, metrics):
            store.put({
                **base, "key": key, "status": "ok", "error": None,
                "evaluator": task.evaluator, "protocol_version": evaluator.protocol_version,
                "model": task.model, "eval_seed": seed,
                "seeds": {"eval": d_seed, "distill": distill_seed(
                    job.method, job.dataset, job.ipc, job.distill_seed)},
                "metrics": m, "cost": {**distill_cost, **eval_cost}, "env": env,
                "created": _now(),
            })  # fmt: skip
            summary.done += 1


def _distilled(job, method, preset, data, store, device, progress):
    """Load the job's artifact from the store or distil it now (and store it)."""
    if store.has_artifact(job.artifact_key):
        distilled = store.load_artifact(job.artifact_key)
        cost = dict(distilled.meta.get("cost", {}))
        cost["stored_bytes"] = store.artifact_path(job.artifact_key).stat().st_size
        return distilled, cost
    seed = distill_seed(job.method, job.dataset, job.ipc, job.distill_seed)
    tick = progress(f"{job.label} distill", 0) if progress else None
    with CostMeter(device) as meter:
        distilled = method.distill(
            data, job.ipc, job.config, seed=seed, device=device, budget=preset, progress=tick,
            cache=store.cache,
        )  # fmt: skip
    distilled.validate(data.info)
    cost = meter.as_dict("distill")
    distilled.meta.update({
        "dataset": job.dataset, "ipc": job.ipc, "method": job.method,
        "config": config_dict(job.config), "seed": seed, "distill_seed": job.distill_seed,
        "preset": preset.name, "mean": list(data.info.mean), "std": list(data.info.std),
        "label_kind": method.label_kind, "environment": environment(device),
    })  # fmt: skip
    distilled.meta["cost"] = dict(cost)
    cost["stored_bytes"] = store.save_artifact(job.artifact_key, distilled)
    return distilled, cost


def _write_failed(store, base, task, missing, reason, env) -> None:
    for seed, key in missing:
        store.put({
            **base, "key": key, "status": "failed", "error": reason, "evaluator": task.evaluator,
            "model": task.model, "eval_seed": seed, "metrics": {}, "cost": {}, "env": env,
            "created": _now(),
        })  # fmt: skip


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DcbenchError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
