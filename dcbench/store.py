"""The result store: one atomic JSON record per evaluation, distilled artifacts stored once.

Layout under the store root::

    records/<key>.json            one per (job, evaluator, model, eval_seed); its existence with
                                  status "ok" is the done marker
    artifacts/<key>.safetensors   one per distillation, reused by every evaluation

Keys are content hashes of everything that determines the number (method config, dataset, ipc,
seeds, preset, protocol versions, package version). Writes go to a temporary file in the same folder
and ``os.replace``, so a crash never leaves a half-written record.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dcbench.cache import ArtifactCache
from dcbench.distilled import DistilledSet
from dcbench.errors import DcbenchError

SCHEMA_VERSION = 1
log = logging.getLogger(__name__)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the whole new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class StoreScan:
    """All readable records of a store plus the problems met while reading it."""

    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class ResultStore:
    """A directory of records and artifacts (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, *, create: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.records_dir = self.root / "records"
        self.artifacts_dir = self.root / "artifacts"
        if create:
            try:
                self.records_dir.mkdir(parents=True, exist_ok=True)
                self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DcbenchError(
                    f"cannot create the store at {self.root}: {exc.strerror}"
                ) from None
            if not os.access(self.records_dir, os.W_OK) or not os.access(
                self.artifacts_dir, os.W_OK
            ):
                raise DcbenchError(f"the store {self.root} is not writable")
        elif not self.records_dir.is_dir():
            raise DcbenchError(f"{self.root} is not a dcbench store (no records/ folder)")
        self.cache = ArtifactCache(self.root / "cache")

    # --- records -------------------------------------------------------------------------------

    def record_path(self, key: str) -> Path:
        return self.records_dir / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key``, or None if absent or unreadable."""
        path = self.record_path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_done(self, key: str) -> bool:
        record = self.get(key)
        return record is not None and record.get("status") == "ok"

    def put(self, record: dict[str, Any]) -> None:
        """Write one record atomically (it must carry its ``key``)."""
        record = {"schema": SCHEMA_VERSION, **record}
        atomic_write_text(
            self.record_path(record["key"]), json.dumps(record, indent=1, sort_keys=True)
        )

    def scan(self) -> StoreScan:
        """Read every record; corrupt files and newer schemas are reported, not fatal."""
        scan = StoreScan()
        for path in sorted(self.records_dir.glob("*.json")):
            if path.name.startswith("."):  # a write interrupted before its os.replace
                continue
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(record, dict) or "key" not in record:
                    raise ValueError("not a record")
            except (OSError, ValueError) as exc:
                scan.problems.append(f"corrupt record {path}: {exc}")
                continue
            if record.get("schema", 0) > SCHEMA_VERSION:
                scan.problems.append(
                    f"{path} has schema {record['schema']} (this dcbench reads up to "
                    f"{SCHEMA_VERSION}); upgrade dcbench to read it"
                )
                continue
            scan.records.append(record)
        return scan

    def records(self) -> Iterator[dict[str, Any]]:
        yield from self.scan().records

    def to_dataframe(self, *, include_failed: bool = False) -> pd.DataFrame:
        """One row per record: identity columns, metrics and cost flattened."""
        return records_to_frame(self.scan().records, include_failed=include_failed)

    # --- artifacts -----------------------------------------------------------------------------

    def artifact_path(self, key: str) -> Path:
        return self.artifacts_dir / f"{key}.safetensors"

    def has_artifact(self, key: str) -> bool:
        return self.artifact_path(key).is_file()

    def save_artifact(self, key: str, distilled: DistilledSet) -> int:
        """Store a distilled set; returns its size in bytes."""
        return distilled.save(self.artifact_path(key))

    def load_artifact(self, key: str) -> DistilledSet:
        return DistilledSet.load(self.artifact_path(key))


IDENTITY = [
    "method", "dataset", "ipc", "distill_seed", "preset", "evaluator", "protocol_version",
    "model", "eval_seed", "status",
]  # fmt: skip


def records_to_frame(
    records: list[dict[str, Any]], *, include_failed: bool = False
) -> pd.DataFrame:
    """Records → a flat DataFrame (``metrics.*`` and ``cost.*`` columns, accuracy in [0, 1])."""
    rows = []
    for r in records:
        if r.get("status") != "ok" and not include_failed:
            continue
        row = {k: r.get(k) for k in IDENTITY}
        row["key"] = r["key"]
        row["label_kind"] = r.get("label_kind")
        row["error"] = r.get("error")
        row["dcbench_version"] = r.get("env", {}).get("dcbench_version")
        row["device"] = r.get("env", {}).get("device")
        for group in ("metrics", "cost"):
            for k, v in (r.get(group) or {}).items():
                row[k] = v
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else IDENTITY + ["key", "accuracy"])
    return frame
