"""Keep freed memory in the process instead of returning it to the kernel (glibc only).

glibc's malloc serves every block larger than its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and gives it back on ``free``. A ConvNet step on a 256-image batch allocates activations of
~130 MB, so on the CPU every step re-faults (and the kernel re-zeroes) hundreds of megabytes: a
forward + backward pass of the 28-px ConvNet at batch 256 measures 1.17 s that way and 0.66 s with
the memory kept (benchmarks/results/distill.md). :func:`retain_freed_memory` turns mmap off for
malloc and raises the trim threshold, so freed blocks are reused. Peak RSS is unchanged; RSS no
longer shrinks after a peak.

The CLI and the benchmark scripts call it once at start-up; library imports never do (it changes
the whole process). ``DCBENCH_MALLOC=system`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters of glibc's malloc.h
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # largest int: give memory back only above 2 GiB of free top


def retain_freed_memory() -> bool:
    """Configure glibc malloc to reuse freed large blocks; True when applied (idempotent).

    No-op (False) on other platforms or C libraries, and with ``DCBENCH_MALLOC=system``.
    """
    if os.environ.get("DCBENCH_MALLOC", "").lower() == "system" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    log.debug("glibc malloc: mmap off, trim threshold %d (%s)", _TRIM_THRESHOLD, ok)
    return ok
