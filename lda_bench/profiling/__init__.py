"""Profiling: what a case is, how it is measured (params, MACs, latency, memory, accuracy), the
suites that list cases, and the run from options to a report (:func:`profile`).

The public timing API (:mod:`.timing`: :func:`synchronize`, :func:`time_calls`,
:func:`measure_latency`) is what the regression gate and the benchmarks time code with.
"""

from .session import ProfileResult, profile
from .timing import LatencyStats, measure_latency, synchronize, time_calls

__all__ = ["LatencyStats", "ProfileResult", "measure_latency", "profile", "synchronize", "time_calls"]
