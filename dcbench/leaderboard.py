"""Leaderboard tables as pure functions of the records (``ResultStore.scan().records``).

A *track* is one (evaluator, preset, protocol version, evaluator protocol version): records of
different tracks are never pooled. Within a track a *cell* is (model, method, dataset, ipc); its
number is the mean ± population std (numpy's ddof 0, as the reference code) of the final-epoch
accuracies of every finished record of the cell, in percent, with their count n.

Tables come back as :class:`Table` objects (display strings plus caption) for the renderers in
:mod:`dcbench.report`, and as tidy numeric frames for CSV.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dcbench.errors import DcbenchError
from dcbench.method import METHODS
from dcbench.store import records_to_frame

#: Rows every main leaderboard shows, with ``—`` when they have no records.
ALWAYS_SHOWN = ("full", "random")
#: The evaluation model of the main leaderboard when a track has it (DC's protocol network).
REFERENCE_MODEL = "convnet"
MISSING = "—"
TRACK = ["evaluator", "preset", "protocol", "protocol_version"]
CELL = ["model", "method", "dataset", "ipc"]


# --- records → frames --------------------------------------------------------------------------


def records_frame(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Records (ok and failed) → one row each: ``records_to_frame``'s columns plus the record's
    ``protocol``, ``artifact``, ``device_name``, ``cpu_threads``, ``config`` (canonical JSON of
    the method config), ``created`` and ``superseded`` (:func:`superseded_configs`); ``ipc`` as
    nullable Int64."""
    frame = records_to_frame(list(records), include_failed=True).drop_duplicates("key")
    by_key = {r["key"]: r for r in records}
    extra = {
        "protocol": lambda r: r.get("protocol"),
        "artifact": lambda r: r.get("artifact"),
        "device_name": lambda r: (r.get("env") or {}).get("device_name"),
        "cpu_threads": lambda r: (r.get("env") or {}).get("cpu_threads"),
        "config": lambda r: json.dumps(r.get("config"), sort_keys=True),
        "created": lambda r: r.get("created") or "",
    }
    for column, get in extra.items():
        frame[column] = [get(by_key[k]) for k in frame["key"]] if len(frame) else []
    for column in ("accuracy", "dcbench_version", "device", "error"):  # absent when no record
        if column not in frame:  # has them (an empty store, only failed records)
            frame[column] = np.nan
    frame["ipc"] = pd.array([None if pd.isna(v) else int(v) for v in frame["ipc"]], dtype="Int64")
    for column in ("protocol", "protocol_version"):
        frame[column] = pd.array(
            [None if pd.isna(v) else int(v) for v in frame[column]], dtype="Int64"
        )
    frame["superseded"] = superseded_configs(frame)
    return frame


def superseded_configs(frame: pd.DataFrame) -> pd.Series:
    """True for the finished records whose cell (track × model, method, dataset, ipc) also holds
    finished records of another method config created later: a cell shows one config, the
    newest (a rerun with more iterations replaces the earlier numbers, never pools with them)."""
    out = pd.Series(False, index=frame.index)
    done = frame[frame["status"] == "ok"]
    if done.empty or "config" not in done:
        return out
    for _, cell in done.groupby([*TRACK, *CELL], dropna=False, sort=False):
        if cell["config"].nunique() > 1:
            newest = cell.loc[cell["created"].idxmax(), "config"]
            out[cell.index[cell["config"] != newest]] = True
    return out


def provenance(frame: pd.DataFrame, sources: str) -> str:
    """The report's opening sentence: how many records (finished, superseded, failed) from
    ``sources`` it is rendered from, and what is never pooled."""
    ok = len(ok_records(frame))
    superseded = int(frame["superseded"].sum()) if "superseded" in frame else 0
    hidden = (
        f", {superseded} of a method config superseded by a newer one of the same cell, not shown"
        if superseded
        else ""
    )
    return (
        f"Rendered from {len(frame)} records ({ok} finished{hidden}, "
        f"{len(frame) - ok - superseded} failed) in {sources}. Every number is a pure function "
        "of these records; records of different presets, protocol versions or method configs "
        "are never pooled."
    )


def ok_records(frame: pd.DataFrame) -> pd.DataFrame:
    """The finished records of ``frame``, without those of superseded configs."""
    keep = frame["status"] == "ok"
    if "superseded" in frame:
        keep &= ~frame["superseded"].astype(bool)
    return frame[keep]


def cell_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per track × cell in percent: ``mean``, ``std`` (ddof 0) and ``n``."""
    columns = [*TRACK, *CELL, "mean", "std", "n"]
    ok = ok_records(frame)
    if ok.empty:
        return pd.DataFrame(columns=columns)
    groups = ok.groupby([*TRACK, *CELL], dropna=False, sort=False)
    out = groups["accuracy"].agg(
        mean=lambda a: 100 * float(np.mean(a)),
        std=lambda a: 100 * float(np.std(a)),
        n="count",
    )
    return out.reset_index()


# --- orderings ----------------------------------------------------------------------------------


def _registry_order(names: Iterable[str], registry_names: list[str]) -> list[str]:
    names = set(names)
    known = [n for n in registry_names if n in names]
    return known + sorted(names - set(known))


def method_order(names: Iterable[str]) -> list[str]:
    """Registry order (``full`` and ``random`` lead), then unregistered names alphabetically."""
    return _registry_order(names, METHODS.names())


def dataset_order(names: Iterable[str]) -> list[str]:
    """Dataset registry order, then unknown names alphabetically."""
    import dcbench.datasets  # noqa: F401  (registers the built-in datasets)
    from dcbench.data import DATASETS

    return _registry_order(names, DATASETS.names())


def model_order(names: Iterable[str]) -> list[str]:
    """Model registry order, then unknown names alphabetically."""
    from dcbench.models import MODELS

    return _registry_order(names, MODELS.names())


def is_upper_bound(method: str) -> bool:
    """True for IPC-independent methods (the ``full`` row): shown, never ranked."""
    try:
        return bool(METHODS.get(method).ipc_independent)
    except DcbenchError:  # an unregistered method (plugin not installed)
        return False


# --- tracks and captions ------------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    """Records that may be pooled: one evaluator, preset and protocol version."""

    evaluator: str
    preset: str
    protocol: int | None
    protocol_version: int | None

    @property
    def label_kind(self) -> str | None:
        """``hard`` or ``soft`` from the evaluator's registration (None if unknown)."""
        from dcbench.evaluator import EVALUATORS

        try:
            return EVALUATORS.get(self.evaluator).label_kind
        except DcbenchError:  # an evaluator plugin that is not installed
            return None

    @property
    def title(self) -> str:
        kind = f"{self.label_kind.capitalize()}-label" if self.label_kind else "Unknown-label"
        return (
            f"{kind} track · evaluator {self.evaluator} v{_v(self.protocol_version)} · "
            f"preset {self.preset} · protocol v{_v(self.protocol)}"
        )

    @property
    def slug(self) -> str:
        """A file-name-safe identifier."""
        return f"{self.evaluator}-{self.preset}-p{_v(self.protocol)}-e{_v(self.protocol_version)}"

    def select(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` (records or cell stats) that belong to this track."""
        mask = (frame["evaluator"] == self.evaluator) & (frame["preset"] == self.preset)
        for column in ("protocol", "protocol_version"):
            value = getattr(self, column)
            mask &= frame[column].isna() if value is None else frame[column] == value
        return frame[mask.fillna(False).astype(bool)]


def _v(value: int | None) -> str:
    return "?" if value is None else str(value)


def tracks(frame: pd.DataFrame) -> list[Track]:
    """The tracks of the finished records: hard-label first, then evaluator, preset (registry
    order) and protocol."""
    from dcbench.protocol import PRESETS

    ok = ok_records(frame)
    if ok.empty:
        return []
    found = {
        Track(str(e), str(p), None if pd.isna(pv) else int(pv), None if pd.isna(ev) else int(ev))
        for e, p, pv, ev in ok[TRACK].drop_duplicates().itertuples(index=False)
    }
    presets = PRESETS.names()

    def key(t: Track) -> tuple:
        preset = presets.index(t.preset) if t.preset in presets else len(presets)
        return (t.label_kind != "hard", t.evaluator, preset, t.preset, t.protocol or 0,
                t.protocol_version or 0)  # fmt: skip

    return sorted(found, key=key)


def main_model(models: Iterable[str]) -> str:
    """The main leaderboard's model: :data:`REFERENCE_MODEL` if present, else the first in
    registry order."""
    models = list(models)
    return REFERENCE_MODEL if REFERENCE_MODEL in models else model_order(models)[0]


def seeds_text(values: Iterable[Any]) -> str:
    """``[0, 1, 2, 4]`` → ``"0–2, 4"``."""
    nums = sorted({int(v) for v in values if not pd.isna(v)})
    parts: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}–{nums[j]}")
        i = j + 1
    return ", ".join(parts) or "none"


def context(records: pd.DataFrame, track: Track) -> str:
    """The caption line every table carries: preset, protocol versions, seeds and dcbench."""
    ok = ok_records(records)
    versions = sorted({str(v) for v in ok["dcbench_version"].dropna()}) or ["unknown"]
    return (
        f"Preset {track.preset}, protocol v{_v(track.protocol)} (evaluator {track.evaluator} "
        f"v{_v(track.protocol_version)}), seeds: distillation {seeds_text(ok['distill_seed'])} × "
        f"evaluation {seeds_text(ok['eval_seed'])}, dcbench {', '.join(versions)}."
    )


def teacher_note(records: pd.DataFrame, track: Track) -> str:
    """For a soft-label track: the teachers, their parameters (stored beside every set), their
    ensemble's test accuracy and the control; empty for other tracks."""
    ok = ok_records(records)
    if track.label_kind != "soft" or "teacher_names" not in ok or ok["teacher_names"].isna().all():
        return ""
    parts = []
    for dataset in dataset_order(ok["dataset"].unique()):
        here = ok[ok["dataset"] == dataset]
        sets = sorted({tuple(n) for n in here["teacher_names"].dropna()})
        names = " | ".join(", ".join(s) for s in sets)
        params = sorted({int(p) for p in here["teacher_params"].dropna()})
        acc = here["teacher_accuracy"].dropna() if "teacher_accuracy" in here else []
        text = (
            f"{dataset}: {len(sets[0]) if len(sets) == 1 else '?'} teacher(s) {names}, "
            f"{' / '.join(f'{p:,}' for p in params)} parameters "
            f"({' / '.join(fmt_bytes(4 * p) for p in params)} fp32 stored beside every set)"
        )
        if len(acc):
            text += f", ensemble test accuracy {100 * float(acc.mean()):.2f}%"
        parts.append(text)
    from dcbench.evaluator import EVALUATORS

    augmented = getattr(EVALUATORS.get(track.evaluator), "augment", True)
    batch = (
        "the augmented, CutMixed batch"
        if augmented
        else "the stored images (no student augmentation: no RandAugment, crop, flip or CutMix)"
    )
    return (
        f"Soft labels: at every step the teachers' mean logits on {batch}; "
        "the same teachers for every method. Teachers: " + "; ".join(parts) + ". The random row "
        "is the control (a random real subset of the same IPC under the identical recipe); the "
        "whole-train-split upper bound is the teachers' accuracy."
    )


# --- tables -------------------------------------------------------------------------------------


@dataclass
class Table:
    """A rendered table: ``frame`` holds display strings (its first column labels the rows)."""

    name: str
    title: str
    caption: str
    frame: pd.DataFrame


def fmt_cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f} ({n})"


def fmt_delta(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:+.2f}"


def fmt_seconds(seconds: float) -> str:
    if pd.isna(seconds):
        return MISSING
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def fmt_bytes(size: float) -> str:
    if pd.isna(size):
        return MISSING
    if size < 1000:
        return f"{size:.0f} B"
    exponent = min(int(math.log10(size) // 3), 3)
    return f"{size / 1000**exponent:.3g} {('kB', 'MB', 'GB')[exponent - 1]}"


def column_label(dataset: str, ipc: int | None) -> str:
    return f"{dataset} ipc{ipc}" if ipc is not None else f"{dataset} (all)"


def ipc_text(ipc: Any) -> str:
    return "all" if pd.isna(ipc) else str(int(ipc))


def _columns(cells: pd.DataFrame) -> list[tuple[str, int | None]]:
    """(dataset, ipc) columns: every IPC of a dataset; ``(dataset, None)`` for a dataset with
    IPC-independent rows only."""
    out: list[tuple[str, int | None]] = []
    for dataset in dataset_order(cells["dataset"].unique()):
        ipcs = sorted(int(i) for i in cells.loc[cells["dataset"] == dataset, "ipc"].dropna())
        out.extend([(dataset, i) for i in dict.fromkeys(ipcs)] or [(dataset, None)])
    return out


def _lookup(frame: pd.DataFrame, method: str, dataset: str, ipc: int | None) -> pd.Series | None:
    """The row of a (method, dataset, ipc) cell; IPC-independent rows (ipc missing) stand for
    every IPC of their dataset."""
    rows = frame[(frame["method"] == method) & (frame["dataset"] == dataset)]
    if ipc is not None:
        exact = rows[(rows["ipc"] == ipc).fillna(False).astype(bool)]
        if len(exact):
            return exact.iloc[0]
    loose = rows[rows["ipc"].isna()]
    return loose.iloc[0] if len(loose) else None


def _sorted_cells(part: pd.DataFrame) -> pd.DataFrame:
    """Model, dataset, IPC then method order (registry orders)."""
    if part.empty:
        return part.reset_index(drop=True)
    keys = {
        "_o": part["model"].map({m: i for i, m in enumerate(model_order(part["model"]))}),
        "_d": part["dataset"].map({d: i for i, d in enumerate(dataset_order(part["dataset"]))}),
        "_i": part["ipc"].fillna(0).astype(int),
        "_m": part["method"].map({m: i for i, m in enumerate(method_order(part["method"]))}),
    }
    ordered = part.assign(**keys).sort_values(list(keys), kind="stable")
    return ordered.drop(columns=list(keys)).reset_index(drop=True)


def track_published(published: pd.DataFrame | None, track: Track) -> pd.DataFrame:
    """``published_cells`` for the track's label kind (empty without a table or label kind)."""
    from dcbench.published import published_cells

    columns = ["method", "dataset", "ipc", "model", "published_mean", "published_std",
               "published_text", "published_source", "dcbench_mean", "dcbench_text"]  # fmt: skip
    if published is None or track.label_kind is None:
        return pd.DataFrame(columns=columns).astype({"ipc": "Int64"})
    return published_cells(published, track.label_kind)


def accuracy_rows(
    stats: pd.DataFrame, track: Track, published: pd.DataFrame | None
) -> pd.DataFrame:
    """Tidy cells of one track (every model): ``mean``, ``std``, ``n``, the published and
    DC-BENCH numbers matched on (method, dataset, ipc, model) and the track's label kind, and
    ``delta`` = ours − published."""
    part = track.select(stats).copy()
    part["ipc"] = part["ipc"].astype("Int64")
    part = part.merge(track_published(published, track), on=["method", "dataset", "ipc", "model"],
                      how="left")  # fmt: skip
    part["delta"] = part["mean"] - part["published_mean"]
    return _sorted_cells(part)


def leaderboard_table(
    records: pd.DataFrame, stats: pd.DataFrame, track: Track, published: pd.DataFrame | None
) -> Table:
    """Methods × (dataset, IPC) for the track's main model, with the published number and the
    difference, DC-BENCH's re-evaluation and the mean rank. The published (DC-BENCH) columns of a
    dataset appear when a shown method has a published (DC-BENCH) number on it."""
    part = track.select(stats)
    model = main_model(part["model"].unique())
    cells = part[part["model"] == model]
    pub = track_published(published, track)
    pub = pub[pub["model"] == model]
    columns = _columns(cells)
    methods = method_order(set(cells["method"]) | set(ALWAYS_SHOWN))
    pub = pub[pub["method"].isin(methods) & pub["dataset"].isin({d for d, _ in columns})]
    pub_datasets = set(pub.loc[pub["published_mean"].notna(), "dataset"])
    dcb_datasets = set(pub.loc[pub["dcbench_mean"].notna(), "dataset"])
    body: dict[str, list[str]] = {"method": methods}
    means = pd.DataFrame(index=methods, dtype=float)
    for dataset, ipc in columns:
        label = column_label(dataset, ipc)
        ours = [_lookup(cells, m, dataset, ipc) for m in methods]
        theirs = [_lookup(pub, m, dataset, ipc) for m in methods]
        mean = [np.nan if r is None else r["mean"] for r in ours]
        means[label] = mean
        body[label] = [
            MISSING if r is None else fmt_cell(r["mean"], r["std"], r["n"]) for r in ours
        ]
        if dataset in pub_datasets:
            pmean = [np.nan if p is None else p["published_mean"] for p in theirs]
            body[f"{label} published"] = [_text(p, "published_text") for p in theirs]
            body[f"{label} Δ"] = [fmt_delta(a - b) for a, b in zip(mean, pmean)]
        if dataset in dcb_datasets:
            body[f"{label} DC-BENCH"] = [_text(p, "dcbench_text") for p in theirs]
    ranked = [m for m in methods if not is_upper_bound(m)]
    complete = [c for c in means.columns if ranked and means.loc[ranked, c].notna().all()]
    ranks = means.loc[ranked, complete].rank(ascending=False, method="average").mean(axis=1)
    body["mean rank"] = [
        f"{ranks[m]:.2f}" if complete and m in ranks.index else MISSING for m in methods
    ]
    upper = [m for m in methods if is_upper_bound(m)]
    caption = " ".join(
        s
        for s in (
            f"Test accuracy (%) of {model} networks trained from scratch on each set: mean ± std "
            "(n) over the finished records of the cell (population std).",
            context(track.select(records[records["model"] == model]), track),
            teacher_note(track.select(records[records["model"] == model]), track),
            _published_note(pub_datasets, dcb_datasets, track),
            _upper_note(upper, track) if upper else "",
            f"Mean rank (1 = best) over the {len(complete)} column(s) where every ranked method "
            "has a number; other columns are not ranked. No accuracy is averaged over rows with "
            "missing cells.",
        )
        if s
    )
    return Table(f"leaderboard-{track.slug}", f"Leaderboard ({model})", caption, pd.DataFrame(body))


def _upper_note(upper: list[str], track: Track) -> str:
    if track.label_kind == "soft":
        return (
            f"{', '.join(upper)}: not evaluated under a soft-label track (its upper bound is the "
            "teachers' ensemble accuracy above)."
        )
    return (
        f"{', '.join(upper)}: the upper bound (the whole train split), shown in every IPC column "
        "of its dataset and not ranked."
    )


def _text(row: pd.Series | None, column: str) -> str:
    return MISSING if row is None or pd.isna(row[column]) else str(row[column])


def _published_note(pub: set[str], dcb: set[str], track: Track) -> str:
    if not pub and not dcb:
        return "No published number exists for the methods and datasets shown."
    text = (
        "published: the number the literature reports for the same method, dataset, IPC, model "
        f"and {track.label_kind} labels (the published table, role reported); "
        "Δ = ours − published."
    )
    if dcb:
        text += " DC-BENCH: DC-BENCH's re-evaluation under its own protocol, not a paper number."
    if track.label_kind == "soft":
        text += (
            " Published soft-label numbers come from each paper's own teachers, student recipe "
            "and epochs (EDC: 8 observers, 1000 epochs, best-of-N logging), not this track's."
        )
    return text


def cross_arch_tables(records: pd.DataFrame, stats: pd.DataFrame, track: Track) -> list[Table]:
    """One methods × evaluation-model table per (dataset, IPC) of the track (none when the track
    has a single model)."""
    cells = track.select(stats)
    models = model_order(cells["model"].unique())
    if len(models) < 2:
        return []
    recs = track.select(records)
    tables = []
    for dataset, ipc in _columns(cells):
        here = cells[cells["dataset"] == dataset]
        present = here[(here["ipc"] == ipc).fillna(False).astype(bool) | here["ipc"].isna()]
        methods = method_order(present["method"].unique())
        body: dict[str, list[str]] = {"method": methods}
        for model in models:
            found = [_lookup(here[here["model"] == model], m, dataset, ipc) for m in methods]
            body[model] = [
                MISSING if r is None else fmt_cell(r["mean"], r["std"], r["n"]) for r in found
            ]
        at = recs[(recs["dataset"] == dataset)]
        caption = (
            f"Cross-architecture test accuracy (%) on {dataset}"
            + (f" at IPC {ipc}" if ipc is not None else "")
            + ": each model trained from scratch on the same distilled sets; mean ± std (n). "
            + context(at, track)
        )
        tables.append(
            Table(
                f"cross-arch-{track.slug}-{dataset}-ipc{ipc_text(ipc)}",
                f"Cross-architecture · {column_label(dataset, ipc)}",
                caption,
                pd.DataFrame(body),
            )
        )
    return tables


def train_split_bytes(records: pd.DataFrame, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Bytes of each dataset's real train split as uint8 pixels, where known: the image count
    from an IPC-independent (``full``) record's ``train_images`` and the image shape from
    ``shapes`` (dataset → C, H, W, read from any stored artifact)."""
    ok = ok_records(records)
    out = {}
    for dataset, part in ok[ok["ipc"].isna()].groupby("dataset"):
        counts = part["train_images"].dropna() if "train_images" in part else []
        if len(counts) and dataset in shapes:
            out[str(dataset)] = int(counts.max()) * int(np.prod(shapes[str(dataset)]))
    return out


COST_COLUMNS = [
    "method", "dataset", "ipc", "model", "distill_seconds", "eval_seconds_per_network",
    "distill_peak_rss_mb", "eval_peak_rss_mb", "distill_peak_cuda_mb", "eval_peak_cuda_mb",
    "device", "stored_bytes", "compression",
]  # fmt: skip


def cost_rows(
    records: pd.DataFrame, track: Track, model: str, train_bytes: dict[str, int]
) -> pd.DataFrame:
    """Tidy cost of each (method, dataset, ipc) of the track's main model: mean distillation
    seconds over distinct artifacts, mean evaluation seconds per network, peak memories, devices,
    mean stored bytes and compression = train-split bytes ÷ stored bytes (1 for the upper bound,
    which references the train split)."""
    ok = ok_records(track.select(records))
    ok = ok[ok["model"] == model]
    rows = []
    for (method, dataset, ipc), part in ok.groupby(["method", "dataset", "ipc"], dropna=False):
        artifacts = part.drop_duplicates("artifact")
        stored = _mean(artifacts, "stored_bytes")
        ratio = np.nan
        if is_upper_bound(method):
            ratio = 1.0
        elif dataset in train_bytes and stored and not pd.isna(stored):
            ratio = train_bytes[dataset] / stored
        rows.append({
            "method": method, "dataset": dataset, "ipc": ipc, "model": model,
            "distill_seconds": _mean(artifacts, "distill_seconds"),
            "eval_seconds_per_network": _mean(part, "eval_seconds"),
            "distill_peak_rss_mb": _max(part, "distill_peak_rss_mb"),
            "eval_peak_rss_mb": _max(part, "eval_total_peak_rss_mb"),
            "distill_peak_cuda_mb": _max(part, "distill_peak_cuda_mb"),
            "eval_peak_cuda_mb": _max(part, "eval_total_peak_cuda_mb"),
            "device": ", ".join(sorted({_device(r) for r in part.itertuples()})),
            "stored_bytes": stored,
            "compression": ratio,
        })  # fmt: skip
    frame = pd.DataFrame(rows, columns=COST_COLUMNS)
    frame["ipc"] = frame["ipc"].astype("Int64")
    frame["stored_bytes"] = frame["stored_bytes"].astype(float).round().astype("Int64")
    if track.label_kind == "soft":
        frame = _soft_costs(frame, ok, records, track)
    return _sorted_cells(frame)


SOFT_COST_COLUMNS = ["teacher_params", "teacher_bytes", "teacher_train_seconds",
                     "hard_eval_seconds_per_network"]  # fmt: skip


def _soft_costs(
    frame: pd.DataFrame, ok: pd.DataFrame, records: pd.DataFrame, track: Track
) -> pd.DataFrame:
    """A soft track's extra cost columns: the teachers (parameters, fp32 bytes, training seconds,
    paid once per dataset and reused) and the hard-label evaluation time per network of the same
    cell (evaluator ``hard``, same preset and protocol, newest version), for comparison."""
    hard = ok_records(records)
    hard = hard[(hard["evaluator"] == "hard") & (hard["preset"] == track.preset)]
    hard = hard[(hard["protocol"] == track.protocol).fillna(False).astype(bool)]
    if len(hard):
        hard = hard[hard["protocol_version"] == hard["protocol_version"].max()]
    extra = {c: [] for c in SOFT_COST_COLUMNS}
    for row in frame.itertuples(index=False):
        part = ok[(ok["method"] == row.method) & (ok["dataset"] == row.dataset)]
        part = part[(part["ipc"] == row.ipc).fillna(False).astype(bool)]
        same = hard[(hard["method"] == row.method) & (hard["dataset"] == row.dataset)
                    & (hard["model"] == row.model)]  # fmt: skip
        same = same[(same["ipc"] == row.ipc).fillna(False).astype(bool)]
        extra["teacher_params"].append(_max(part, "teacher_params"))
        extra["teacher_bytes"].append(_max(part, "teacher_bytes"))
        extra["teacher_train_seconds"].append(_max(part, "teacher_train_seconds"))
        extra["hard_eval_seconds_per_network"].append(_mean(same, "eval_seconds"))
    frame = frame.assign(**extra)
    for column in ("teacher_params", "teacher_bytes"):
        frame[column] = frame[column].astype(float).round().astype("Int64")
    return frame


def _mean(frame: pd.DataFrame, column: str) -> float:
    return (
        float(frame[column].mean()) if column in frame and frame[column].notna().any() else np.nan
    )


def _max(frame: pd.DataFrame, column: str) -> float:
    return float(frame[column].max()) if column in frame and frame[column].notna().any() else np.nan


def _device(row: Any) -> str:
    device = str(getattr(row, "device", None) or "unknown")
    if device == "cpu":
        threads = getattr(row, "cpu_threads", None)
        return f"cpu ({int(threads)} threads)" if threads and not pd.isna(threads) else "cpu"
    name = getattr(row, "device_name", None)
    return f"{device} ({name})" if name and not pd.isna(name) else device


def cost_table(records: pd.DataFrame, track: Track, rows: pd.DataFrame) -> Table:
    """The cost rows (:func:`cost_rows`) of a track as display strings."""
    cuda = rows[["distill_peak_cuda_mb", "eval_peak_cuda_mb"]].notna().any().any()
    body = {
        "method": rows["method"],
        "dataset": rows["dataset"],
        "ipc": [ipc_text(i) for i in rows["ipc"]],
        "distill time": [fmt_seconds(s) for s in rows["distill_seconds"]],
        "eval time / network": [fmt_seconds(s) for s in rows["eval_seconds_per_network"]],
        "peak memory distill / eval": [
            f"{_mb(a)} / {_mb(b)}"
            for a, b in zip(rows["distill_peak_rss_mb"], rows["eval_peak_rss_mb"])
        ],
    }
    if cuda:
        body["peak GPU distill / eval"] = [
            f"{_mb(a)} / {_mb(b)}"
            for a, b in zip(rows["distill_peak_cuda_mb"], rows["eval_peak_cuda_mb"])
        ]
    body["device"] = list(rows["device"])
    body["stored"] = [fmt_bytes(b) for b in rows["stored_bytes"]]
    body["compression"] = [MISSING if pd.isna(c) else f"{c:.3g}×" for c in rows["compression"]]
    soft = "teacher_params" in rows
    if soft:
        body["teachers (parameters, fp32)"] = [
            MISSING if pd.isna(p) else f"{int(p):,} ({fmt_bytes(b)})"
            for p, b in zip(rows["teacher_params"], rows["teacher_bytes"])
        ]
        body["teacher training (once)"] = [fmt_seconds(s) for s in rows["teacher_train_seconds"]]
        body["hard eval time / network"] = [
            fmt_seconds(s) for s in rows["hard_eval_seconds_per_network"]
        ]
        body["soft ÷ hard eval"] = [
            MISSING if pd.isna(a) or pd.isna(b) or not b else f"{a / b:.3g}×"
            for a, b in zip(rows["eval_seconds_per_network"], rows["hard_eval_seconds_per_network"])
        ]
    model = rows["model"].iloc[0] if len(rows) else REFERENCE_MODEL
    soft_text = (
        "What the soft track costs beyond the hard one: the teachers' parameters (fp32 bytes, "
        "an evaluation-time asset stored beside every set), their training time (paid once per "
        "dataset and preset, then cached and shared by every method), and the soft evaluation "
        "time per network against the hard-label evaluation of the same set (evaluator hard, "
        "same preset). "
        if soft
        else ""
    )
    caption = soft_text + (
        "Cost of each distilled set: distillation wall time (mean over distillation seeds), "
        f"evaluation wall time per trained {model} network, peak resident memory (MB) of the "
        "distillation and of the evaluation, the device, the stored bytes of the set (images, "
        "labels, soft labels and any other tensors of the artifact file) and the compression "
        "ratio = bytes of the real train split as uint8 pixels ÷ stored bytes (known once the "
        "store holds a full-data record of the dataset). "
        + context(track.select(records[records["model"] == model]), track)
    )
    return Table(f"cost-{track.slug}", "Cost", caption, pd.DataFrame(body))


def _mb(value: float) -> str:
    return MISSING if pd.isna(value) else f"{value:.0f} MB"


# --- DD-Ranking scores --------------------------------------------------------------------------


def fmt_fraction(mean: float, std: float, n: int) -> str:
    return MISSING if pd.isna(mean) or not n else f"{mean:.3f} ± {std:.3f} ({n})"


def score_tables(records: pd.DataFrame, scores: pd.DataFrame) -> list[Table]:
    """One DD-Ranking score table per (preset, protocol) of ``scores`` (:func:`dcbench.scores.
    score_frame`): method × dataset × IPC rows (every model), HLR, IOR, LRS and ARS as fractions."""
    from dcbench.protocol import PRESETS
    from dcbench.scores import HARD, NOAUG, SOFT

    tables = []
    presets = PRESETS.names()
    groups = sorted(
        scores.groupby(["preset", "protocol"], dropna=False),
        key=lambda g: (presets.index(g[0][0]) if g[0][0] in presets else len(presets), g[0][0],
                       -1 if pd.isna(g[0][1]) else g[0][1]),
    )  # fmt: skip
    for (preset, protocol), part in groups:
        part = _sorted_cells(part)
        body: dict[str, list[str]] = {
            "method": list(part["method"]),
            "dataset": list(part["dataset"]),
            "ipc": [ipc_text(i) for i in part["ipc"]],
            "model": list(part["model"]),
        }
        for metric, label in (("hlr", "HLR ↓"), ("ior", "IOR ↑"), ("lrs", "LRS ↑"),
                              ("ars", "ARS ↑")):  # fmt: skip
            body[label] = [
                fmt_fraction(m, s, n)
                for m, s, n in zip(
                    part[f"{metric}_mean"], part[f"{metric}_std"], part[f"{metric}_n"]
                )
            ]
        body["paired"] = ["yes" if p else "no" for p in part["paired"]]
        recs = ok_records(records)
        recs = recs[(recs["preset"] == preset) & (recs["evaluator"].isin([HARD, SOFT, NOAUG]))]
        recs = recs[(recs["protocol"] == protocol).fillna(False).astype(bool)]
        versions = ", ".join(
            f"{e} v{_v(int(recs.loc[recs['evaluator'] == e, 'protocol_version'].max()))}"
            for e in (HARD, SOFT, NOAUG)
            if (recs["evaluator"] == e).any()
        )
        dcb = sorted({str(v) for v in recs["dcbench_version"].dropna()}) or ["unknown"]
        caption = (
            "DD-Ranking's scores on accuracies as fractions (not percent, DD-Ranking v0.2.0's "
            "defect): HLR = Acc(full, hard) − Acc(set, hard); IOR = Acc(set, soft) − "
            "Acc(random, soft), the same teachers and recipe on a random real subset of the same "
            "IPC; LRS = (e^α − e^−1)/(e − e^−1) with α = 0.5·IOR − 0.5·HLR; ARS the same map of "
            "β = 0.5·(Acc(set, soft) − Acc(random, soft)) + 0.5·(Acc(set, soft-noaug) − "
            "Acc(random, soft-noaug)). LRS and ARS lie in [0, 1]; 0.269 means no gain over the "
            "references. Mean ± population std (n) over the evaluation seeds every arm shares "
            "(each seed starts every arm from the same network; distillation seeds averaged); "
            "paired no: the arms share no seed and their means are used. — where an arm has no "
            f"record. Preset {preset}, protocol v{_v(None if pd.isna(protocol) else int(protocol))}"
            f" (evaluators {versions or 'none'}), seeds: distillation "
            f"{seeds_text(recs['distill_seed'])} × evaluation {seeds_text(recs['eval_seed'])}, "
            f"dcbench {', '.join(dcb)}."
        )
        name = f"scores-{preset}-p{_v(None if pd.isna(protocol) else int(protocol))}"
        tables.append(Table(name, f"DD-Ranking scores · preset {preset}", caption,
                            pd.DataFrame(body)))  # fmt: skip
    return tables
