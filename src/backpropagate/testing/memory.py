"""Process memory readings for memory tests and benchmarks (Linux ``/proc``)."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path


def proc_status_bytes(field: str) -> int:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``, ...) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def settle_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS, so RSS shows what is still held."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
