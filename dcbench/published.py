"""Published accuracies: loading ``leaderboards/published.csv`` and mapping the papers' names.

``published.csv`` keeps every row of the hand-collected source table (``published_results.csv``,
whose provenance notes are ``published_results.md``) with its sources and notes; dcbench adds the
mapped identity columns and a ``role``:

- ``reported``: the number a paper (or the table citing it) printed; the "published" column of a
  leaderboard. Exactly one per (method, dataset, ipc, model, label_type).
- ``alternative``: another reading of the same cell (a disagreeing citation, an older README); kept
  for the record, never shown as the published number.
- ``dc-bench``: DC-BENCH's re-evaluation under its own protocol, shown in its own labelled column.

Names that have a dcbench counterpart are mapped (``Random`` → ``random``, ``CIFAR-10`` →
``cifar10``, ``ConvNetD3 (w128, InstanceNorm)`` → ``convnet``); the others keep their original
names.
The original strings stay in ``paper_method`` / ``paper_dataset`` / ``paper_model``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dcbench.errors import DcbenchError

#: Paper method name → dcbench method name.
METHOD_NAMES: dict[str, str] = {
    "Full dataset": "full",
    "Random": "random",
    "Herding": "herding",
    "K-Center": "kcenter",
    "DM": "dm",
    "IDM": "idm",
    "BACON": "bacon",
    "MTT": "mtt",
    "EDC": "edc",
}

#: Paper dataset name → dcbench dataset name.
DATASET_NAMES: dict[str, str] = {
    "MNIST": "mnist",
    "FashionMNIST": "fashionmnist",
    "SVHN": "svhn",
    "CIFAR-10": "cifar10",
    "CIFAR-100": "cifar100",
    "TinyImageNet": "tinyimagenet",
}

#: Paper evaluation-model name → dcbench model name. dcbench's ``convnet`` grows a block per
#: doubling of the resolution, so DC's depth-3 (32 px) and depth-4 (64 px) ConvNets are both
#: ``convnet``; IDC/BACON's "ConvNet-3" is the same width-128 instance-norm network. The
#: modified-stem ResNet-18 of the soft-label papers (SRe2L, G-VBSM, RDED, EDC) is a CIFAR-style
#: batch-norm ResNet-18.
MODEL_NAMES: dict[str, str] = {
    "ConvNetD3 (w128, InstanceNorm)": "convnet",
    "ConvNetD4 (w128, InstanceNorm)": "convnet",
    "ConvNet-3 (IDC code)": "convnet",
    "ConvNet (CW128)": "convnet",
    "ConvNetD3 (w128, BatchNorm; FRePo)": "convnet-bn",
    "ConvNetD4 (BatchNorm; FRePo)": "convnet-bn",
    "ResNet-18 (modified stem)": "resnet18-bn",
}

ROLES = ("reported", "alternative", "dc-bench")
CELL = ["method", "dataset", "ipc", "model", "label_type"]
COLUMNS = [
    *CELL, "role", "acc_mean", "acc_std", "paper_method", "paper_dataset", "paper_model",
    "source", "url_or_repo_path", "notes",
]  # fmt: skip
SOURCE_COLUMNS = [
    "method", "dataset", "ipc", "model", "label_type", "acc_mean", "acc_std", "source",
    "url_or_repo_path", "notes",
]  # fmt: skip

#: ``--published`` default: the file in this checkout's ``leaderboards/`` (absent when dcbench is
#: installed without the repository, in which case reports have no published column).
DEFAULT_PUBLISHED = Path(__file__).resolve().parent.parent / "leaderboards" / "published.csv"


def convert_source(source: pd.DataFrame) -> pd.DataFrame:
    """The collected table (``published_results.csv`` columns) → ``published.csv`` rows.

    Rows keep their order. DC-BENCH rows get role ``dc-bench``; of the other rows of one cell the
    first in file order is ``reported`` (the collection lists the primary citation first), the rest
    ``alternative``.
    """
    missing = [c for c in SOURCE_COLUMNS if c not in source.columns]
    if missing:
        raise DcbenchError(f"the source table lacks the columns {', '.join(missing)}")
    out = source[SOURCE_COLUMNS].astype(str).copy()
    out["paper_method"] = out["method"]
    out["paper_dataset"] = out["dataset"]
    out["paper_model"] = out["model"]
    out["method"] = out["method"].map(lambda s: METHOD_NAMES.get(s, s))
    out["dataset"] = out["dataset"].map(lambda s: DATASET_NAMES.get(s, s))
    out["model"] = out["model"].map(lambda s: MODEL_NAMES.get(s, s))
    dc_bench = out["source"].str.contains("DC-BENCH", regex=False)
    first = ~out[CELL].assign(_dcb=dc_bench).duplicated(keep="first")
    out["role"] = "alternative"
    out.loc[first & ~dc_bench, "role"] = "reported"
    out.loc[dc_bench, "role"] = "dc-bench"
    return out[COLUMNS]


def load_published(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``published.csv``: typed columns (``ipc`` is an integer or ``<NA>`` for ``full``,
    accuracies in percent); a malformed file is a one-line error."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DcbenchError(f"cannot read the published numbers {path}: {exc}") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DcbenchError(f"{path} lacks the columns {', '.join(missing)}")
    bad_roles = sorted(set(table["role"]) - set(ROLES))
    if bad_roles:
        raise DcbenchError(f"{path}: unknown role {bad_roles[0]!r}; valid: {', '.join(ROLES)}")
    try:
        ipc = table["ipc"].map(lambda s: pd.NA if s in ("full", "") else int(s))
        mean = pd.to_numeric(table["acc_mean"], errors="raise")
        std = pd.to_numeric(table["acc_std"].replace("", None), errors="raise")
    except ValueError as exc:
        raise DcbenchError(f"{path}: a number could not be read ({exc})") from None
    text = table["acc_mean"].str.strip() + table["acc_std"].str.strip().map(
        lambda v: f" ± {v}" if v else ""
    )
    table = table.assign(ipc=ipc.astype("Int64"), acc_mean=mean, acc_std=std, text=text)
    dup = table[table["role"] != "alternative"].duplicated(CELL + ["role"])
    if dup.any():
        row = table[table["role"] != "alternative"][dup].iloc[0]
        raise DcbenchError(
            f"{path}: two {row['role']} rows for {row['method']} {row['dataset']} ipc "
            f"{row['ipc']} {row['model']} ({row['label_type']}); mark one 'alternative'"
        )
    return table


def published_cells(table: pd.DataFrame, label_type: str) -> pd.DataFrame:
    """One row per (method, dataset, ipc, model) of ``label_type`` with the reported number
    (``published_mean``, ``published_std``, ``published_text`` as printed, ``published_source``)
    and DC-BENCH's (``dcbench_mean``, ``dcbench_text``); either may be missing."""
    part = table[table["label_type"] == label_type]
    keys = ["method", "dataset", "ipc", "model"]
    columns = ["acc_mean", "acc_std", "text", "source"]
    reported = part[part["role"] == "reported"].set_index(keys)[columns]
    reported.columns = ["published_mean", "published_std", "published_text", "published_source"]
    dcb = part[part["role"] == "dc-bench"].set_index(keys)[["acc_mean", "text"]]
    dcb.columns = ["dcbench_mean", "dcbench_text"]
    return reported.join(dcb, how="outer").reset_index()
