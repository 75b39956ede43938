"""Timing, the one way every command and benchmark times code.

* :func:`synchronize` waits for a device's queued work (a no-op on CPU);
* :func:`time_calls` times back-to-back calls (CUDA events on GPU, ``perf_counter`` on CPU);
* :func:`measure_latency`: warm-up, then timed runs until a time budget and a minimum count are
  both met, as :class:`LatencyStats`.

On CUDA every run is bracketed by CUDA events (device time) and the stream is synchronised
before reading them; on CPU ``time.perf_counter`` brackets each run. Very short calls are timed
in blocks of several calls (the sample is the block time divided by the calls), so that timer
overhead stays below about 0.1 % of a sample.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lda_bench.core.stats import iqr, median

BLOCK_TARGET_S = 1e-3  # calls shorter than this are timed in blocks


@dataclass
class LatencyStats:
    """Per-call latency in milliseconds."""

    samples: list[float] = field(default_factory=list)
    calls_per_sample: int = 1

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def iqr(self) -> float:
        return iqr(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "iqr": self.iqr,
            "min": self.min,
            "mean": self.mean,
            "n": self.n,
            "calls_per_sample": self.calls_per_sample,
            "samples": list(self.samples),
        }


def synchronize(device: torch.device | str) -> None:
    """Wait until ``device`` has finished its queued work (CUDA); nothing to wait for on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], calls: int, device: torch.device | str = "cpu") -> float:
    """Seconds for ``calls`` back-to-back calls of ``fn`` (CUDA events on GPU, device time)."""
    device = torch.device(device)
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return time.perf_counter() - t0


def measure_latency(
    fn: Callable[[], Any],
    device: torch.device | str = "cpu",
    *,
    min_time: float = 1.0,
    repeats: int = 10,
    warmup: int = 2,
    warmup_time: float = 0.1,
    max_time: float | None = None,
) -> LatencyStats:
    """Time ``fn`` until ``min_time`` seconds of samples and at least ``repeats`` samples.

    ``max_time`` (seconds) stops sampling early once at least 3 samples exist, so one very slow
    case cannot hold a suite hostage.
    """
    if repeats < 1 or min_time < 0 or warmup < 0:
        raise ValueError("repeats must be >= 1 and min_time, warmup must be >= 0")
    device = torch.device(device)
    synchronize(device)
    # Warm-up: lazy initialisation, allocator growth, autotuners. Also estimates the call time.
    t_start = time.perf_counter()
    warm_calls = 0
    per_call = math.inf
    while warm_calls < max(1, warmup) or time.perf_counter() - t_start < warmup_time:
        elapsed = time_calls(fn, 1, device)
        per_call = min(per_call, elapsed)
        warm_calls += 1
        if warm_calls >= max(1, warmup) and elapsed > warmup_time:
            break
    calls = 1 if per_call >= BLOCK_TARGET_S else max(1, math.ceil(BLOCK_TARGET_S / max(per_call, 1e-9)))
    stats = LatencyStats(calls_per_sample=calls)
    spent = 0.0
    t_begin = time.perf_counter()
    while stats.n < repeats or spent < min_time:
        elapsed = time_calls(fn, calls, device)
        stats.samples.append(elapsed / calls * 1e3)
        spent += elapsed
        if max_time is not None and stats.n >= 3 and time.perf_counter() - t_begin >= max_time:
            break
    return stats
