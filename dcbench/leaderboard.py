"""Leaderboard tables as pure functions of the record DataFrame (``ResultStore.to_dataframe``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dcbench.method import METHODS


def method_order(names: list[str]) -> list[str]:
    """Registry order (``full`` and ``random`` lead), then unregistered names alphabetically."""
    registered = [m for m in METHODS.names() if m in names]
    return registered + sorted(set(names) - set(registered))


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, population std (numpy's ddof 0, as the reference code) and count of accuracy per
    (evaluator, preset, model, method, dataset, ipc), in percent."""
    if frame.empty:
        return pd.DataFrame(
            columns=["evaluator", "preset", "model", "method", "dataset", "ipc", "mean", "std", "n"]
        )
    frame = frame.assign(ipc=frame["ipc"].astype("Int64"))
    groups = frame.groupby(
        ["evaluator", "preset", "model", "method", "dataset", "ipc"], dropna=False, sort=False
    )["accuracy"]
    out = groups.agg(
        mean=lambda a: 100 * float(np.mean(a)),
        std=lambda a: 100 * float(np.std(a)),
        n="count",
    )
    return out.reset_index()


def leaderboard(frame: pd.DataFrame) -> pd.DataFrame:
    """Methods × (dataset, IPC) table of ``mean ± std (n)`` strings for one evaluator/preset/model.

    IPC-independent rows (``full``, stored with ipc = None) are shown in every IPC column of their
    dataset. A missing cell is ``—``.
    """
    stats = summarize(frame)
    if stats.empty:
        return pd.DataFrame()
    ipcs = stats.dropna(subset=["ipc"]).groupby("dataset", sort=False)["ipc"].unique()
    columns = [(d, int(i)) for d in stats["dataset"].unique() for i in sorted(ipcs.get(d, []))]
    rows = method_order(list(stats["method"].unique()))
    table = pd.DataFrame("—", index=rows, columns=[f"{d} ipc{i}" for d, i in columns])
    for r in stats.itertuples():
        cell = f"{r.mean:.2f} ± {r.std:.2f} ({r.n})"
        if pd.isna(r.ipc):
            targets = [f"{r.dataset} ipc{i}" for d, i in columns if d == r.dataset]
            if not targets:  # only IPC-independent methods ran on this dataset
                table[f"{r.dataset} all"] = table.get(f"{r.dataset} all", "—")
                targets = [f"{r.dataset} all"]
        else:
            targets = [f"{r.dataset} ipc{int(r.ipc)}"]
        for col in targets:
            table.loc[r.method, col] = cell
    table.index.name = "method"
    return table


def leaderboards(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One captioned leaderboard per (evaluator, preset, model): tables never mix presets."""
    out = []
    if frame.empty:
        return out
    for (evaluator, preset, model), part in frame.groupby(
        ["evaluator", "preset", "model"], sort=False
    ):
        caption = (
            f"{evaluator}-label track · model {model} · preset {preset} · test accuracy % "
            "(mean ± std over evaluation seeds, n records)"
        )
        out.append((caption, leaderboard(part)))
    return out
