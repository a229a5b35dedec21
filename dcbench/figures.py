"""Report figures (PNG + SVG): accuracy vs IPC, cross-architecture heatmaps, accuracy vs
distillation time and grids of the distilled images.

Figures are planned from a :class:`~dcbench.report.Report` (:func:`plan_figures`: names, titles,
captions) and drawn on demand (:func:`draw_figures`), so the markdown that links them does not
depend on drawing. Drawing uses matplotlib ``Figure`` objects directly (no pyplot state); image
grids are written pixel-exact.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dcbench.leaderboard import (
    dataset_order,
    ipc_text,
    method_order,
    model_order,
    ok_records,
    track_published,
)

if TYPE_CHECKING:
    from dcbench.report import Report, TrackReport

#: Image grids show at most this many images per class and this many classes.
MAX_PER_CLASS = 10
MAX_CLASSES = 100
#: Smallest displayed side of one image in a grid (pixels, integer upscaling).
MIN_CELL = 48
GAP = 2


@dataclass
class FigureSpec:
    """A planned figure: ``draw(stem)`` writes ``stem.png`` and ``stem.svg``."""

    name: str
    title: str
    caption: str
    section: str  # a track's slug, or "images"
    draw: Callable[[Path], None]


def plan_figures(report: Report) -> list[FigureSpec]:
    """Every figure of the report, in display order."""
    from dcbench.method import METHODS

    # every registered method keeps its colour from report to report
    palette = tuple(method_order(set(METHODS.names()) | set(report.records["method"])))
    specs: list[FigureSpec] = []
    for tr in report.tracks:
        specs += _accuracy_vs_ipc(report, tr, palette)
        specs += _cross_arch_heatmap(tr)
        specs += _accuracy_vs_time(tr, palette)
    specs += _image_grids(report)
    return specs


def draw_figures(specs: Sequence[FigureSpec], folder: Path) -> list[Path]:
    """Draw ``specs`` into ``folder``; returns the files written."""
    if not specs:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in specs:
        spec.draw(folder / spec.name)
        written += [folder / f"{spec.name}.png", folder / f"{spec.name}.svg"]
    return written


def _palette(methods: Sequence[str]) -> dict[str, Any]:
    """A stable colour per method (matplotlib's tab10 in method order)."""
    from matplotlib import colormaps

    colors = colormaps["tab10"].colors
    return {m: colors[i % len(colors)] for i, m in enumerate(methods)}


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, stem: Path, *, png: bool = True) -> None:
    """Write ``stem.png`` (unless ``png`` is False) and ``stem.svg``, byte-identical from run to
    run (no dates, fixed SVG ids) so committed renders only change when their content does."""
    from matplotlib import rc_context

    if png:
        fig.savefig(stem.with_suffix(".png"), dpi=120, metadata={"Software": None})
    with rc_context({"svg.hashsalt": "dcbench"}):
        fig.savefig(stem.with_suffix(".svg"), metadata={"Date": None})


# --- accuracy vs IPC ----------------------------------------------------------------------------


def _accuracy_vs_ipc(report: Report, tr: TrackReport, palette: tuple) -> list[FigureSpec]:
    cells = tr.accuracy[tr.accuracy["model"] == tr.model]
    pub = track_published(report.published, tr.track)
    pub = pub[(pub["model"] == tr.model) & pub["published_mean"].notna()]
    specs = []
    for dataset in dataset_order(cells["dataset"].unique()):
        here = cells[cells["dataset"] == dataset]
        if here["ipc"].notna().sum() == 0:
            continue
        theirs = pub[(pub["dataset"] == dataset) & pub["method"].isin(here["method"])]
        specs.append(
            FigureSpec(
                name=f"acc-vs-ipc-{tr.track.slug}-{dataset}",
                title=f"Accuracy vs IPC · {dataset} · {tr.track.title}",
                caption=(
                    f"Test accuracy (%) of {tr.model} on {dataset} against images per class: "
                    "filled markers with error bars are ours (mean ± std); hollow markers are "
                    "the published numbers"
                    + ("" if len(theirs) else " (none for these methods)")
                    + "; horizontal lines are IPC-independent rows (the full-data upper bound; "
                    f"dotted: published). Preset {tr.track.preset}."
                ),
                section=tr.track.slug,
                draw=functools.partial(_draw_accuracy_vs_ipc, here, theirs, palette, dataset),
            )
        )
    return specs


def _draw_accuracy_vs_ipc(
    ours: pd.DataFrame, theirs: pd.DataFrame, palette: tuple, dataset: str, stem: Path
) -> None:
    colors = _palette(palette)
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    ipcs = sorted({int(i) for i in ours["ipc"].dropna()} | {int(i) for i in theirs["ipc"].dropna()})
    for method in method_order(ours["method"].unique()):
        mine = ours[ours["method"] == method]
        color = colors[method]
        if mine["ipc"].isna().all():
            row = mine.iloc[0]
            ax.axhline(row["mean"], color=color, linestyle="--", label=f"{method} (all data)")
        else:
            mine = mine.dropna(subset=["ipc"]).sort_values("ipc")
            ax.errorbar(
                mine["ipc"].astype(float), mine["mean"], yerr=mine["std"], color=color,
                marker="o", capsize=3, label=method,
            )  # fmt: skip
        pub = theirs[theirs["method"] == method]
        for row in pub.itertuples():
            if pd.isna(row.ipc):
                ax.axhline(row.published_mean, color=color, linestyle=":", linewidth=1)
            else:
                ax.plot([float(row.ipc)], [row.published_mean], linestyle="none", marker="o",
                        markersize=8, markerfacecolor="none", markeredgecolor=color)  # fmt: skip
    if len(theirs):
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="none",
                markeredgecolor="gray", label="published")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xticks(ipcs, [str(i) for i in ipcs])
    ax.minorticks_off()
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, stem)


# --- cross-architecture heatmap -----------------------------------------------------------------


def _cross_arch_heatmap(tr: TrackReport) -> list[FigureSpec]:
    models = model_order(tr.accuracy["model"].unique())
    if len(models) < 2:
        return []
    return [
        FigureSpec(
            name=f"cross-arch-{tr.track.slug}",
            title=f"Cross-architecture accuracy · {tr.track.title}",
            caption=(
                "Mean test accuracy (%) of each evaluation model (columns) trained on each "
                "method's distilled set (rows), one panel per dataset and IPC. "
                f"Preset {tr.track.preset}."
            ),
            section=tr.track.slug,
            draw=functools.partial(_draw_cross_arch, tr.accuracy, models),
        )
    ]


def _draw_cross_arch(cells: pd.DataFrame, models: list[str], stem: Path) -> None:
    panels = []
    for dataset in dataset_order(cells["dataset"].unique()):
        here = cells[cells["dataset"] == dataset]
        ipcs = sorted({int(i) for i in here["ipc"].dropna()}) or [None]
        for ipc in ipcs:
            part = here[here["ipc"].isna() | (here["ipc"] == ipc).fillna(False).astype(bool)]
            grid = part.pivot_table(index="method", columns="model", values="mean", aggfunc="first")
            grid = grid.reindex(index=method_order(grid.index), columns=models)
            title = f"{dataset} ipc{ipc}" if ipc is not None else f"{dataset} (all)"
            panels.append((title, grid))
    vmin = min(float(np.nanmin(g.values)) for _, g in panels)
    vmax = max(float(np.nanmax(g.values)) for _, g in panels)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    height = max(len(g.index) for _, g in panels) * 0.45 + 1.5
    fig = _new_figure(1.1 * len(models) * cols + 2.5, height * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for ax, (title, grid) in zip(axes, panels):
        values = grid.to_numpy(dtype=float)
        image = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        middle = (vmin + vmax) / 2
        for (i, j), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize="small",
                        color="black" if v > middle else "white")  # fmt: skip
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
        ax.set_yticks(range(len(grid.index)), list(grid.index))
        ax.set_title(title)
        ax.set_xlabel("evaluation model")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=list(axes[: len(panels)]), label="test accuracy (%)")
    _save(fig, stem)


# --- accuracy vs distillation time -------------------------------------------------------------


def _accuracy_vs_time(tr: TrackReport, palette: tuple) -> list[FigureSpec]:
    cells = tr.accuracy[tr.accuracy["model"] == tr.model]
    merged = cells.merge(
        tr.costs[["method", "dataset", "ipc", "distill_seconds"]],
        on=["method", "dataset", "ipc"],
        how="inner",
    ).dropna(subset=["distill_seconds", "mean"])
    if merged.empty:
        return []
    return [
        FigureSpec(
            name=f"acc-vs-time-{tr.track.slug}",
            title=f"Accuracy vs distillation time · {tr.track.title}",
            caption=(
                f"Test accuracy (%) of {tr.model} against the wall time of one distillation "
                "(log scale; times under 1 ms are drawn at 1 ms). One point per method, dataset "
                f"and IPC; the label gives the IPC. Preset {tr.track.preset}."
            ),
            section=tr.track.slug,
            draw=functools.partial(_draw_accuracy_vs_time, merged, palette),
        )
    ]


def _draw_accuracy_vs_time(cells: pd.DataFrame, palette: tuple, stem: Path) -> None:
    colors = _palette(palette)
    markers = "osD^vP*X"
    datasets = dataset_order(cells["dataset"].unique())
    fig = _new_figure(6.0, 4.0)
    ax = fig.subplots()
    for row in cells.itertuples():
        x = max(float(row.distill_seconds), 1e-3)
        marker = markers[datasets.index(row.dataset) % len(markers)]
        ax.plot([x], [row.mean], linestyle="none", marker=marker, color=colors[row.method])
        ax.annotate(f"ipc {ipc_text(row.ipc)}", (x, row.mean), textcoords="offset points",
                    xytext=(4, 3), fontsize="x-small")  # fmt: skip
    for method in method_order(cells["method"].unique()):
        ax.plot([], [], linestyle="none", marker="o", color=colors[method], label=method)
    if len(datasets) > 1:
        for i, dataset in enumerate(datasets):
            ax.plot([], [], linestyle="none", marker=markers[i % len(markers)], color="gray",
                    label=dataset)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("distillation wall time (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, stem)


# --- image grids --------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridLayout:
    """Where image ``(row, col)`` of a grid lies: rows are classes, columns images."""

    height: int
    width: int
    scale: int
    gap: int

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left pixel (y, x) of the image in ``row``, ``col``."""
        return (
            self.gap + row * (self.height * self.scale + self.gap),
            self.gap + col * (self.width * self.scale + self.gap),
        )


def display_images(images: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Normalised images → [0, 1] with the set's ``meta`` mean/std (the dataset's constants
    when the set does not carry them; a min–max stretch when neither is known)."""
    from dcbench.data import denormalize
    from dcbench.datasets import NORMALIZATION

    mean, std = meta.get("mean"), meta.get("std")
    if mean is None or std is None:
        mean, std = NORMALIZATION.get(str(meta.get("dataset")), (None, None))
    if mean is None or std is None:
        lo, hi = images.min(), images.max()
        return (images - lo) / (hi - lo).clamp_min(1e-12)
    return denormalize(images.float(), tuple(mean), tuple(std))


def image_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    max_per_class: int = MAX_PER_CLASS,
    max_classes: int = MAX_CLASSES,
) -> tuple[np.ndarray, list[int], GridLayout]:
    """Images in [0, 1] (N×C×H×W, C = 1 or 3) → a uint8 grid (H×W or H×W×3, white gaps), one
    row per class (ascending label, first ``max_per_class`` images in stored order), upscaled by
    an integer factor to at least :data:`MIN_CELL` pixels; returns the grid, the row classes and
    the layout."""
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"cannot display {c}-channel images")
    classes = sorted({int(v) for v in labels.tolist()})[:max_classes]
    scale = max(1, math.ceil(MIN_CELL / max(h, w)))
    layout = GridLayout(h, w, scale, GAP)
    per_row = min(max_per_class, max(int((labels == k).sum()) for k in classes))
    height, width = layout.origin(len(classes), per_row)
    grid = np.full((height, width, c), 255, dtype=np.uint8)
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for row, k in enumerate(classes):
        idx = torch.nonzero(labels == k).flatten().tolist()[:max_per_class]
        for col, i in enumerate(idx):
            y, x = layout.origin(row, col)
            big = pixels[i].repeat(scale, axis=0).repeat(scale, axis=1)
            grid[y : y + h * scale, x : x + w * scale] = big
    return (grid[..., 0] if c == 1 else grid), classes, layout


def _image_grids(report: Report) -> list[FigureSpec]:
    from dcbench.report import artifact_header

    ok = ok_records(report.records)
    if ok.empty:
        return []
    specs = []
    first = ok.sort_values("distill_seed", kind="stable").drop_duplicates(
        ["preset", "method", "dataset", "ipc"]
    )
    order = {m: i for i, m in enumerate(method_order(first["method"].unique()))}
    dorder = {d: i for i, d in enumerate(dataset_order(first["dataset"].unique()))}
    first = first.assign(
        _d=first["dataset"].map(dorder), _m=first["method"].map(order), _i=first["ipc"].fillna(0)
    ).sort_values(["preset", "_d", "_i", "_m"], kind="stable")
    for row in first.itertuples():
        path = report.artifacts.get(row.artifact)
        if path is None:
            continue
        header, shape = artifact_header(path)
        if header.get("reference") is not None or shape is None or len(shape) != 4:
            continue
        if shape[0] == 0 or shape[1] not in (1, 3):
            continue
        decoder = header.get("decoder")
        note = (
            f" The set is stored encoded (decoder {decoder}): these are the stored images, "
            "each decoded into several training images at evaluation."
            if decoder
            else ""
        )
        label = f"{row.method} · {row.dataset} · ipc {ipc_text(row.ipc)} · preset {row.preset}"
        specs.append(
            FigureSpec(
                name=f"images-{row.preset}-{row.method}-{row.dataset}-ipc{ipc_text(row.ipc)}",
                title=label,
                caption=(
                    f"The {shape[0]} stored images of {row.method} on {row.dataset} at IPC "
                    f"{ipc_text(row.ipc)} (distillation seed {int(row.distill_seed)}, preset "
                    f"{row.preset}), de-normalised with the set's mean/std; one row per class "
                    f"(ascending label), at most {MAX_PER_CLASS} images per class and "
                    f"{MAX_CLASSES} classes shown." + note
                ),
                section="images",
                draw=functools.partial(_draw_grid, path),
            )
        )
    return specs


def _draw_grid(path: Path, stem: Path) -> None:
    from PIL import Image

    from dcbench.distilled import DistilledSet

    distilled = DistilledSet.load(path)
    images = display_images(distilled.images, distilled.meta)
    grid, classes, layout = image_grid(images, distilled.labels)
    Image.fromarray(grid).save(stem.with_suffix(".png"))
    rows = len(classes)
    fig = _new_figure(max(2.0, grid.shape[1] / 60 + 0.8), max(1.5, grid.shape[0] / 60 + 0.5))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest")  # fmt: skip
    centers = [layout.origin(r, 0)[0] + layout.height * layout.scale / 2 for r in range(rows)]
    ax.set_yticks(centers, [f"class {k}" for k in classes], fontsize="small")
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    _save(fig, stem, png=False)  # the PNG is the pixel-exact grid written above
