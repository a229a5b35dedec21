"""Cost accounting: wall time, peak memory and the environment a number was produced in."""

from __future__ import annotations

import os
import platform
import resource
import threading
import time
from pathlib import Path
from typing import Any

import torch

import dcbench

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CostMeter:
    """Context manager measuring wall seconds and the peak RSS reached *inside* the block.

    The process-lifetime peak (``ru_maxrss``) would charge every job with its predecessors' peaks,
    so RSS is sampled by a background thread every ``interval`` seconds; on CUDA the device's peak
    allocation is recorded too.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.02) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.seconds = 0.0
        self.peak_rss = 0
        self.peak_cuda = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_rss = max(self.peak_rss, current_rss_bytes())

    def __enter__(self) -> CostMeter:
        self.peak_rss = current_rss_bytes()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, current_rss_bytes())
        if self.device.type == "cuda":
            self.peak_cuda = torch.cuda.max_memory_allocated(self.device)

    def as_dict(self, prefix: str) -> dict[str, Any]:
        out = {
            f"{prefix}_seconds": round(self.seconds, 4),
            f"{prefix}_peak_rss_mb": round(self.peak_rss / 2**20, 1),
        }
        if self.device.type == "cuda":
            out[f"{prefix}_peak_cuda_mb"] = round(self.peak_cuda / 2**20, 1)
        return out


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    """What produced a number: versions, device and machine."""
    name = cpu_name()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    return {
        "dcbench_version": dcbench.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "platform": platform.platform(terse=True),
    }
