"""Peak memory allocated by one call.

* CUDA: the caching allocator's peak (``max_memory_allocated``) during the call, minus what was
  allocated before it.
* CPU: torch.profiler's allocation events (every allocation and free of the CPU allocator, with
  the running total); the peak running total during the call minus the total at its start. This
  is the memory *the case allocated* (inputs and weights that already existed are excluded), not
  the process RSS, and it includes allocations made inside C++ extensions through ATen.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator

import torch

CPU_METHOD = "torch.profiler allocation events: peak bytes allocated during the call beyond those live before it"
CUDA_METHOD = "CUDA caching allocator: max_memory_allocated during the call minus memory_allocated before it"


def _walk(nodes: list[Any]) -> list[Any]:
    out: list[Any] = []
    stack = list(nodes)
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children)
    return out


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what the profiler's C++ side prints at start and stop (kineto's USDT lines, a
    'gpuGetDeviceCount failed' line on CUDA builds without a GPU): noise in every report."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured stderr (tests): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _cpu_peak(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_native_stderr():
        prof.__enter__()
    try:
        fn()  # outside the silenced region: the case's own errors stay visible
    finally:
        with _quiet_native_stderr():
            prof.__exit__(None, None, None)
    events = []
    for node in _walk(prof.profiler.kineto_results.experimental_event_tree()):
        extra = node.extra_fields
        if hasattr(extra, "alloc_size") and hasattr(extra, "total_allocated"):
            events.append((node.start_time_ns, extra.alloc_size, extra.total_allocated))
    if not events:
        return 0
    events.sort(key=lambda e: e[0])
    start_total = events[0][2] - events[0][1]
    return max(0, max(total for _, _, total in events) - start_total)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[int, str]:
    """(peak bytes allocated by one call of ``fn``, how it was measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before), CUDA_METHOD
    return _cpu_peak(fn), CPU_METHOD
