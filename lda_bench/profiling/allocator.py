"""Make glibc's malloc behave the same from call to call (for the regression gate).

By default glibc serves large allocations with mmap and adapts its mmap and trim thresholds as
memory is freed, so whether a tensor of a few MiB lands on fresh pages (page faults on first
touch) or on reused heap memory depends on the history of earlier allocations. Measured on a
2-core VM: a workload's time then flips between two modes (6.6 vs 11.7 ms) from call to call,
and the spread of case/reference ratios reached 46% (IQR/median); with fixed thresholds it was
4-5%. Even above glibc's largest mmap threshold (32 MiB, so the 70 MB maps of the P2 level), a
block sometimes came from freed heap memory and sometimes from fresh pages (13 vs 36 ms for the
same bilinear upsampling). So the gate serves every block from the heap (no mmap) and never trims
it: after warm-up every call reuses memory that is already mapped, the same on every call.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**40  # never give freed heap memory back


def stabilize_malloc() -> str | None:
    """Fix glibc's mmap/trim thresholds for this process; a description, or None if not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, min(TRIM_THRESHOLD, 2**31 - 1)) != 1:
        return None
    return "glibc mallopt: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB (every block from the heap, freed memory reused)"
