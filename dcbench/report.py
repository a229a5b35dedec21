"""``dcbench report`` and ``dcbench check``: leaderboards, figures and HTML from the store alone.

:func:`build_report` turns records into a :class:`Report` (tables per track, planned figures);
:func:`render_markdown`, :func:`write_csv` and :func:`write_report` render it. Everything shown is a
pure function of the records (and of the published table); records of different presets or
protocol versions are never pooled.

The regression check compares a store's cell means with a committed baseline table
(:func:`write_baseline`, :func:`check_baseline`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from dcbench.errors import DcbenchError
from dcbench.leaderboard import (
    Table,
    Track,
    accuracy_rows,
    cell_stats,
    cost_rows,
    cost_table,
    cross_arch_tables,
    ipc_text,
    leaderboard_table,
    main_model,
    ok_records,
    provenance,
    records_frame,
    score_tables,
    seeds_text,
    tracks,
    train_split_bytes,
)
from dcbench.store import ResultStore

FORMATS = ("md", "csv", "html")


# --- loading ------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """Records read from one or more stores, the problems met and where each artifact lies."""

    sources: list[str]
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)


def open_stores(paths: Sequence[str | os.PathLike]) -> list[ResultStore]:
    """Open stores read-only. A folder that is not a store but whose sub-folders are (such as
    ``leaderboards/runs``) stands for all of them."""
    stores = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise DcbenchError(f"no store at {raw} (run `dcbench run --store {raw}` first)")
        if (path / "records").is_dir():
            stores.append(ResultStore(path, create=False))
            continue
        subs = sorted(d for d in path.iterdir() if (d / "records").is_dir())
        if not subs:
            raise DcbenchError(
                f"{raw} is not a dcbench store (no records/ folder) nor a folder of stores"
            )
        stores.extend(ResultStore(d, create=False) for d in subs)
    return stores


def load_stores(paths: Sequence[str | os.PathLike]) -> Loaded:
    """Every readable record of the stores (a record met twice is kept once); corrupt files and
    newer schemas become ``problems``."""
    loaded = Loaded(sources=[str(p) for p in paths])
    seen: set[str] = set()
    for store in open_stores(paths):
        scan = store.scan()
        loaded.problems.extend(scan.problems)
        for record in scan.records:
            if record["key"] in seen:
                continue
            seen.add(record["key"])
            loaded.records.append(record)
            artifact = record.get("artifact")
            if artifact and artifact not in loaded.artifacts:
                path = store.artifact_path(artifact)
                if path.is_file():
                    loaded.artifacts[artifact] = path
    return loaded


def artifact_header(path: Path) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """The dcbench header and the images' shape of a stored set, without reading its tensors;
    an unreadable file gives ``({}, None)``."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("dcbench", "{}"))
            shape = tuple(f.get_slice("images").get_shape()) if "images" in f.keys() else None
    except (SafetensorError, OSError, ValueError):
        return {}, None
    return header, shape


# --- the report ---------------------------------------------------------------------------------


@dataclass
class TrackReport:
    """The tables of one track."""

    track: Track
    model: str
    leaderboard: Table
    cross_arch: list[Table]
    cost: Table
    accuracy: pd.DataFrame  # tidy cells, every model, with published numbers
    costs: pd.DataFrame  # tidy cost rows of the main model


@dataclass
class Report:
    """Everything a renderer needs."""

    sources: list[str]
    records: pd.DataFrame
    problems: list[str]
    tracks: list[TrackReport]
    published: pd.DataFrame | None
    artifacts: dict[str, Path]
    figures: list[Any] = field(default_factory=list)  # figures.FigureSpec, planned not drawn
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)  # tidy DD-Ranking scores
    score_tables: list[Table] = field(default_factory=list)  # one per (preset, protocol)


def build_report(
    loaded: Loaded,
    published: pd.DataFrame | None = None,
    *,
    presets: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
) -> Report:
    """Tables (and the figure plan) of the loaded records, optionally restricted to some presets
    and datasets. No finished record left → a one-line error naming what the store holds."""
    from dcbench.figures import plan_figures
    from dcbench.scores import score_frame

    frame = records_frame(loaded.records)
    where = ", ".join(loaded.sources)
    if ok_records(frame).empty:
        detail = f"; {len(loaded.problems)} unreadable record file(s)" if loaded.problems else ""
        failed = int((frame["status"] != "ok").sum()) if len(frame) else 0
        detail += f"; {failed} failed record(s) (dcbench show --failed)" if failed else ""
        raise DcbenchError(f"no finished records in {where}{detail}")
    for column, wanted, option in (("preset", presets, "--preset"),
                                   ("dataset", datasets, "--datasets")):  # fmt: skip
        if wanted:
            have = sorted(set(ok_records(frame)[column]))
            frame = frame[frame[column].isin(wanted)]
            if ok_records(frame).empty:
                raise DcbenchError(
                    f"no finished records match {option} {','.join(wanted)} in {where}; "
                    f"it holds {', '.join(have)}"
                )
    problems = list(loaded.problems) + failed_summary(frame)
    absent = sorted(set(ok_records(frame)["artifact"].dropna()) - set(loaded.artifacts))
    if absent:
        problems.append(
            f"{len(absent)} distilled set(s) referenced by records are not in the store "
            f"({', '.join(absent[:3])}{', …' if len(absent) > 3 else ''}): no image grid or "
            "compression ratio for them"
        )
    stats = cell_stats(frame)
    shapes: dict[str, tuple[int, ...]] = {}
    for artifact, dataset in ok_records(frame)[["artifact", "dataset"]].drop_duplicates().values:
        if dataset not in shapes and artifact in loaded.artifacts:
            _, shape = artifact_header(loaded.artifacts[artifact])
            if shape is not None and len(shape) == 4:
                shapes[dataset] = tuple(int(s) for s in shape[1:])
    train_bytes = train_split_bytes(frame, shapes)
    reports = []
    for track in tracks(frame):
        model = main_model(track.select(stats)["model"].unique())
        costs = cost_rows(frame, track, model, train_bytes)
        reports.append(
            TrackReport(
                track=track,
                model=model,
                leaderboard=leaderboard_table(frame, stats, track, published),
                cross_arch=cross_arch_tables(frame, stats, track),
                cost=cost_table(frame, track, costs),
                accuracy=accuracy_rows(stats, track, published),
                costs=costs,
            )
        )
    report = Report(loaded.sources, frame, problems, reports, published, loaded.artifacts)
    report.scores = score_frame(frame)
    report.score_tables = score_tables(frame, report.scores)
    report.figures = plan_figures(report)
    return report


def failed_summary(frame: pd.DataFrame) -> list[str]:
    """One line per failed (method, dataset, ipc, evaluator, model, reason)."""
    failed = frame[frame["status"] != "ok"]
    lines = []
    keys = ["method", "dataset", "ipc", "preset", "evaluator", "model", "error"]
    for values, part in failed.groupby(keys, dropna=False, sort=True):
        method, dataset, ipc, preset, evaluator, model, error = values
        lines.append(
            f"{len(part)} failed record(s): {method} {dataset} ipc {ipc_text(ipc)} "
            f"(preset {preset}, {evaluator}/{model}, evaluation seeds "
            f"{seeds_text(part['eval_seed'])}): {error}"
        )
    return lines


# --- markdown -----------------------------------------------------------------------------------


def markdown_table(table: Table) -> str:
    """A github-flavoured markdown table (cells as they are: no number re-formatting)."""
    return tabulate(
        table.frame, headers="keys", tablefmt="github", showindex=False, disable_numparse=True
    )


def render_markdown(report: Report, figures: Sequence[Any] = ()) -> str:
    """The whole report as markdown, linking ``figures`` (planned figures, drawn under
    ``figures/`` beside the markdown file)."""
    lines = [
        "# dcbench report",
        "",
        provenance(report.records, ", ".join(f"`{s}`" for s in report.sources)),
        "",
    ]
    if report.problems:
        lines += ["## Problems", ""] + [f"- {p}" for p in report.problems] + [""]
    number = 0
    for tr in report.tracks:
        lines += [f"## {tr.track.title}", ""]
        for table in [tr.leaderboard, *tr.cross_arch, tr.cost]:
            number += 1
            lines += [f"### {table.title}", "", f"**Table {number}.** {table.caption}", ""]
            lines += [markdown_table(table), ""]
            if table is tr.leaderboard and not tr.cross_arch:
                lines += [f"One evaluation model ({tr.model}): no cross-architecture table.", ""]
        mine = [f for f in figures if f.section == tr.track.slug]
        if mine:
            lines += ["### Figures", ""] + _figure_lines(mine)
    if report.score_tables:
        lines += ["## DD-Ranking scores", ""]
        for table in report.score_tables:
            number += 1
            lines += [f"### {table.title}", "", f"**Table {number}.** {table.caption}", ""]
            lines += [markdown_table(table), ""]
    grids = [f for f in figures if f.section == "images"]
    if grids:
        lines += ["## Distilled images", ""] + _figure_lines(grids, titled=True)
    return "\n".join(lines).rstrip() + "\n"


def _figure_lines(specs: Sequence[Any], *, titled: bool = False) -> list[str]:
    lines: list[str] = []
    for spec in specs:
        lines += [f"### {spec.title}", ""] if titled else []
        lines += [f"![{spec.title}](figures/{spec.name}.png)", "", f"*{spec.caption}*", ""]
    return lines


# --- csv ----------------------------------------------------------------------------------------


def accuracy_csv(report: Report) -> pd.DataFrame:
    """Every cell of every track (all models) with its published numbers, as one tidy table."""
    return _with_track(report, "accuracy").drop(
        columns=["published_text", "dcbench_text"], errors="ignore"
    )


def cost_csv(report: Report) -> pd.DataFrame:
    """The cost rows of every track, as one tidy table."""
    return _with_track(report, "costs")


def _with_track(report: Report, attribute: str) -> pd.DataFrame:
    parts = []
    for tr in report.tracks:
        part = getattr(tr, attribute).copy()
        for column in ("evaluator", "preset", "protocol", "protocol_version"):
            part[column] = getattr(tr.track, column)
        recs = tr.track.select(ok_records(report.records))
        part["distill_seeds"] = seeds_text(recs["distill_seed"])
        part["eval_seeds"] = seeds_text(recs["eval_seed"])
        part["dcbench_version"] = ", ".join(sorted({str(v) for v in recs["dcbench_version"]}))
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    lead = ["evaluator", "preset", "protocol", "protocol_version", "model", "method", "dataset",
            "ipc"]  # fmt: skip
    return frame[[c for c in lead if c in frame] + [c for c in frame if c not in lead]]


def write_csv(report: Report, out: Path) -> list[Path]:
    """``accuracy.csv``, ``cost.csv`` and, when the store has soft-label records, ``scores.csv``
    (DD-Ranking's scores as fractions) under ``out``."""
    written = []
    tables = [("accuracy.csv", accuracy_csv(report)), ("cost.csv", cost_csv(report))]
    if len(report.scores):
        tables.append(("scores.csv", report.scores))
    for name, frame in tables:
        path = out / name
        frame.to_csv(path, index=False, float_format="%.4f", lineterminator="\n")
        written.append(path)
    return written


# --- writing ------------------------------------------------------------------------------------


def write_report(
    report: Report,
    out: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
    *,
    figures: bool = True,
) -> list[Path]:
    """Render ``formats`` (md, csv, html) into ``out``; ``figures`` draws the figures (PNG + SVG,
    under ``out/figures``) that md and html show. Returns the files written."""
    from dcbench.figures import draw_figures

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise DcbenchError(f"unknown format {unknown[0]!r}; valid choices: {', '.join(FORMATS)}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DcbenchError(f"cannot create the output folder {out}: {exc.strerror}") from None
    shown = report.figures if figures else []
    written = draw_figures(shown, out / "figures")
    if "md" in formats:
        path = out / "report.md"
        path.write_text(render_markdown(report, shown), encoding="utf-8")
        written.append(path)
    if "csv" in formats:
        written += write_csv(report, out)
    if "html" in formats:
        from dcbench.html import render_html

        path = out / "index.html"
        path.write_text(render_html(report, shown, out), encoding="utf-8")
        written.append(path)
    return written


def terminal_leaderboards(records: Sequence[dict[str, Any]], published: pd.DataFrame | None) -> str:
    """The main leaderboard of every track, for the terminal (``dcbench run`` / ``show``)."""
    frame = records_frame(records)
    if ok_records(frame).empty:
        return ""
    stats = cell_stats(frame)
    blocks = []
    for track in tracks(frame):
        table = leaderboard_table(frame, stats, track, published)
        blocks.append(f"{track.title} · {table.title}\n{markdown_table(table)}")
    return "\n\n".join(blocks)


# --- regression check ---------------------------------------------------------------------------

BASELINE_REQUIRED = ["method", "dataset", "ipc", "preset", "model", "mean", "std"]
BASELINE_OPTIONAL = ["evaluator", "protocol", "protocol_version", "n"]


def baseline_table(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Every cell of the records as a baseline row (accuracy mean and std in percent)."""
    frame = records_frame(records)
    stats = cell_stats(frame)
    if stats.empty:
        raise DcbenchError("no finished records to write a baseline from")
    parts = [accuracy_rows(stats, t, None) for t in tracks(frame)]
    table = pd.concat(parts, ignore_index=True)
    table = table.assign(mean=table["mean"].round(4), std=table["std"].round(4))
    return table[BASELINE_REQUIRED + BASELINE_OPTIONAL]


def write_baseline(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> pd.DataFrame:
    """Write :func:`baseline_table` to ``path`` (CSV); returns it."""
    table = baseline_table(records)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False, lineterminator="\n")
    except OSError as exc:
        raise DcbenchError(f"cannot write the baseline {path}: {exc.strerror}") from None
    return table


def read_baseline(path: str | os.PathLike) -> pd.DataFrame:
    """A baseline CSV (columns method, dataset, ipc, preset, model, mean, std; optionally
    evaluator, protocol, protocol_version, n); a malformed file is a one-line error."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DcbenchError(f"no baseline at {path} (create it with --write-baseline)") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DcbenchError(f"cannot read the baseline {path}: {exc}") from None
    missing = [c for c in BASELINE_REQUIRED if c not in table.columns]
    if missing:
        raise DcbenchError(
            f"the baseline {path} lacks the column(s) {', '.join(missing)} "
            f"(needs {', '.join(BASELINE_REQUIRED)})"
        )
    if "evaluator" not in table:
        table["evaluator"] = "hard"
    try:
        out = table.assign(
            ipc=pd.array(
                [None if v in ("", "full") else int(v) for v in table["ipc"]], dtype="Int64"
            ),  # fmt: skip
            mean=pd.to_numeric(table["mean"]),
            std=pd.to_numeric(table["std"].replace("", "0")),
        )
        for column in ("protocol", "protocol_version", "n"):
            values = table[column] if column in table else [""] * len(table)
            out[column] = pd.array([None if v == "" else int(v) for v in values], dtype="Int64")
    except ValueError as exc:
        raise DcbenchError(f"the baseline {path} has a value that is not a number: {exc}") from None
    return out


@dataclass
class CheckRow:
    """One baseline cell compared with the store."""

    label: str
    baseline: float
    baseline_std: float
    current: float | None
    tolerance: float
    status: str  # ok, regressed, missing, ambiguous

    @property
    def change(self) -> float | None:
        return None if self.current is None else self.current - self.baseline


def check_baseline(
    records: Sequence[dict[str, Any]], baseline: pd.DataFrame, tolerance: float | None = None
) -> list[CheckRow]:
    """Compare each baseline cell with the store's: ``regressed`` when the mean dropped by more
    than the tolerance (``tolerance`` points, default max(1, 3 × the baseline std)), ``missing``
    when the store has no finished record of the cell."""
    frame = records_frame(records)
    stats = cell_stats(frame)
    rows = []
    for b in baseline.itertuples(index=False):
        label = (
            f"{b.method} {b.dataset} ipc {ipc_text(b.ipc)} · {b.model} · {b.evaluator} · "
            f"preset {b.preset}"
        )
        mask = (
            (stats["method"] == b.method)
            & (stats["dataset"] == b.dataset)
            & (stats["preset"] == b.preset)
            & (stats["model"] == b.model)
            & (stats["evaluator"] == b.evaluator)
        )
        mask &= stats["ipc"].isna() if pd.isna(b.ipc) else (stats["ipc"] == b.ipc)
        for column in ("protocol", "protocol_version"):
            value = getattr(b, column)
            if not pd.isna(value):
                mask &= stats[column] == value
        match = stats[mask.fillna(False).astype(bool)] if len(stats) else stats
        tol = tolerance if tolerance is not None else max(1.0, 3.0 * float(b.std))
        if len(match) == 0:
            rows.append(CheckRow(label, b.mean, b.std, None, tol, "missing"))
            continue
        if len(match) > 1:
            versions = ", ".join(
                f"v{p}/{e}" for p, e in match[["protocol", "protocol_version"]].values
            )
            rows.append(CheckRow(label + f" (protocols {versions})", b.mean, b.std, None, tol,
                                 "ambiguous"))  # fmt: skip
            continue
        current = float(match["mean"].iloc[0])
        status = "regressed" if b.mean - current > tol else "ok"
        rows.append(CheckRow(label, b.mean, b.std, current, tol, status))
    return rows


def check_lines(rows: list[CheckRow]) -> tuple[str, list[str]]:
    """A table of every compared cell and one line per failing cell."""
    table = tabulate(
        [
            (
                r.label,
                f"{r.baseline:.2f} ± {r.baseline_std:.2f}",
                "—" if r.current is None else f"{r.current:.2f}",
                "—" if r.change is None else f"{r.change:+.2f}",
                f"{r.tolerance:.2f}",
                r.status,
            )
            for r in rows
        ],
        headers=["cell", "baseline", "now", "change", "tolerance", "status"],
        tablefmt="github",
        disable_numparse=True,
    )
    failures = []
    for r in rows:
        if r.status == "regressed":
            failures.append(
                f"regressed: {r.label}: {r.baseline:.2f} → {r.current:.2f} "
                f"({r.change:+.2f} points, tolerance {r.tolerance:.2f})"
            )
        elif r.status == "missing":
            failures.append(f"missing: {r.label}: no finished record in the store")
        elif r.status == "ambiguous":
            failures.append(
                f"ambiguous: {r.label}: add protocol/protocol_version columns to the baseline"
            )
    return table, failures


__all__ = [
    "FORMATS", "Loaded", "Report", "TrackReport", "accuracy_csv", "build_report",
    "check_baseline", "check_lines", "cost_csv", "load_stores", "read_baseline",
    "render_markdown", "terminal_leaderboards", "write_baseline", "write_csv", "write_report",
]  # fmt: skip
