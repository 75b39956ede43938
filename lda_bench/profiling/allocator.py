"""Make glibc's malloc behave the same from call to call and from process to process (for the gate).

By default glibc serves large allocations with mmap and adapts its mmap and trim thresholds as
memory is freed, so whether a tensor of a few MiB lands on fresh pages (page faults on first
touch) or on reused heap memory depends on the history of earlier allocations. Measured on a
2-core VM: a workload's time then flips between two modes (6.6 vs 11.7 ms) from call to call,
and the spread of case/reference ratios reached 46% (IQR/median).

Serving every block from the heap instead (no mmap, no trim) made calls within one process
alike (spread 3-8%) but not processes: which freed heap memory a workload reuses is settled once
per process, and in 1 of 20 gate runs CARAFE's ratio to the reference doubled (x1.94) with low
spread, a false alarm. Five fresh processes per mode, ratio of case to reference:

    mode             carafe 104x168   lda_aqu 104x168   dysample 104x168
    default          5.2 - 7.1        2.54 - 2.85       0.77 - 0.95
    heap only        11.4 - 11.9      3.06 - 3.17       0.87 - 0.95
    always mmap      5.2 - 5.6        3.07 - 3.27       1.01 - 1.08

So the gate does the opposite: every block above 128 KiB comes from mmap (fixed threshold, which
also stops glibc from raising it) and goes back to the kernel when freed. Each call then touches
fresh pages, the same way on every call and in every process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's initial default, here fixed
TRIM_THRESHOLD = 128 * 1024


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
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return None
    return ("glibc mallopt: M_MMAP_THRESHOLD=128 KiB, M_TRIM_THRESHOLD=128 KiB "
            "(every large block on fresh pages, returned when freed)")
