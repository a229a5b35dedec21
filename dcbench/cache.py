"""A content-keyed cache of intermediate artifacts: trained networks, expert trajectories, teachers.

Methods receive it from the runner (``distill(..., cache=...)``) and call :meth:`ArtifactCache.get`
with everything that determines the artifact; the tensors are computed once, stored as safetensors
under ``<store>/cache/<kind>-<key>.safetensors`` (atomic write, JSON spec and creation cost in the
header), so every IPC, seed and rerun reuses them. Without a store (``root=None``) it memoises in
memory only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import dcbench
from dcbench.protocol import content_key

log = logging.getLogger(__name__)

Tensors = dict[str, torch.Tensor]


class ArtifactCache:
    """Get-or-create store of tensor dicts keyed by ``(kind, spec)``."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = Path(root) if root is not None else None
        self._memory: dict[str, Tensors] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def key(self, kind: str, spec: dict[str, Any]) -> str:
        return f"{kind}-{content_key({'kind': kind, 'spec': spec, 'version': dcbench.__version__})}"

    def path(self, kind: str, spec: dict[str, Any]) -> Path | None:
        return None if self.root is None else self.root / f"{self.key(kind, spec)}.safetensors"

    def get(
        self,
        kind: str,
        spec: dict[str, Any],
        create: Callable[[], tuple[Tensors, dict[str, Any]]],
    ) -> tuple[Tensors, dict[str, Any]]:
        """The cached tensors and info for ``(kind, spec)``; ``create()`` makes them when absent.

        ``create`` returns ``(tensors, info)``; ``info`` (JSON-serialisable, e.g. the network's test
        accuracy) is stored beside the spec, with the creation time in seconds.
        """
        key = self.key(kind, spec)
        if key in self._memory:
            return self._memory[key], self._info.get(key, {})
        path = self.path(kind, spec)
        if path is not None and path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    header = json.loads((f.metadata() or {})["dcbench_cache"])
                    tensors = {k: f.get_tensor(k) for k in f.keys()}
                self._remember(key, tensors, header["info"])
                return tensors, header["info"]
            except (SafetensorError, OSError, KeyError, ValueError) as exc:
                log.warning("ignoring unreadable cache file %s (%s); recomputing", path, exc)
        start = time.perf_counter()
        tensors, info = create()
        info = {**info, "create_seconds": round(time.perf_counter() - start, 3)}
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            header = json.dumps({"kind": kind, "spec": spec, "info": info}, default=str)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".safetensors")
            os.close(fd)
            try:
                save_file(tensors, tmp, metadata={"dcbench_cache": header})
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        self._remember(key, tensors, info)
        return tensors, info

    def _remember(self, key: str, tensors: Tensors, info: dict[str, Any]) -> None:
        self._memory[key] = tensors
        self._info[key] = info
