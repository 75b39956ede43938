"""The machine's limits, measured in the same run, and where a case stands against them.

:func:`measure_limits` times, on the case's device and thread count, a large matrix product per
dtype (the compute ceiling, in GFLOP/s) and a large copy and a STREAM-style triad (the memory
ceiling, in GB/s, counting the bytes read and written). :func:`roofline` places one measured
case under those ceilings (Williams, Waterman, Patterson, "Roofline", CACM 2009):

* arithmetic intensity = counted FLOPs / compulsory bytes (inputs, outputs and parameters, each
  moved once; what no implementation can avoid);
* achieved GFLOP/s = counted FLOPs / median time;
* bound = min(peak GFLOP/s, intensity x bandwidth); fraction = achieved / bound.

The counted FLOPs follow the MAC policy of :mod:`lda_bench.profiling.flops` (2 x MACs).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch

from lda_bench.core.devices import DTYPES

from .timing import synchronize, time_calls

MATMUL_N = {"cpu": 1024, "cuda": 8192}
STREAM_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}  # per array: far beyond the last-level cache
REPEATS = 5


@dataclass(frozen=True)
class MachineLimits:
    device: str
    threads: int
    matmul_gflops: dict[str, float]  # dtype name -> GFLOP/s
    copy_gb_s: float  # bytes read + written per second
    triad_gb_s: float

    @property
    def bandwidth_gb_s(self) -> float:
        """The memory ceiling: the better of copy and triad."""
        return max(self.copy_gb_s, self.triad_gb_s)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bandwidth_gb_s": self.bandwidth_gb_s,
                "method": f"median of {REPEATS}: square matmul n={MATMUL_N}, copy and triad of "
                          f"{STREAM_BYTES} bytes per array (bytes read + written)"}


def _median_seconds(fn: Any, device: str) -> float:
    fn()  # warm-up: first-touch page faults, library initialisation
    synchronize(device)
    return statistics.median(time_calls(fn, 1, device) for _ in range(REPEATS))


def _matmul_gflops(device: str, dtype: torch.dtype) -> float:
    n = MATMUL_N["cuda" if device.startswith("cuda") else "cpu"]
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / _median_seconds(lambda: torch.mm(a, b), device) / 1e9


def _stream_gb_s(device: str) -> tuple[float, float]:
    size = STREAM_BYTES["cuda" if device.startswith("cuda") else "cpu"] // 4
    src = torch.rand(size, device=device)
    other = torch.rand(size, device=device)
    dst = torch.empty(size, device=device)
    copy_s = _median_seconds(lambda: dst.copy_(src), device)
    triad_s = _median_seconds(lambda: torch.add(src, other, alpha=3.0, out=dst), device)
    return 2 * 4 * size / copy_s / 1e9, 3 * 4 * size / triad_s / 1e9


@lru_cache(maxsize=8)
def _measure(device: str, dtypes: tuple[str, ...], threads: int) -> MachineLimits:
    gflops = {name: _matmul_gflops(device, DTYPES[name]) for name in dtypes}
    copy, triad = _stream_gb_s(device)
    return MachineLimits(device, threads, gflops, copy, triad)


def measure_limits(device: str, dtypes: list[str] | tuple[str, ...]) -> MachineLimits:
    """The ceilings of ``device`` at the current thread count (measured once per process).

    On CPU only float32 and float64 matmuls are measured (half types run as float32 compute on
    most CPUs); on CUDA every dtype asked for.
    """
    on_cuda = device.startswith("cuda")
    wanted = sorted({"fp32", *(d for d in dtypes if on_cuda or d in ("fp32", "fp64"))})
    return _measure(device, tuple(wanted), torch.get_num_threads())


def roofline(flops: int | None, seconds: float | None, nbytes: int | None, dtype: str,
             limits: MachineLimits) -> dict[str, Any] | None:
    """Where one case stands: intensity, achieved GFLOP/s, the bound at that intensity, fraction."""
    if not flops or not seconds or seconds <= 0 or not nbytes or nbytes <= 0:
        return None
    peak = limits.matmul_gflops.get(dtype, limits.matmul_gflops["fp32"])
    intensity = flops / nbytes
    achieved = flops / seconds / 1e9
    bound = min(peak, intensity * limits.bandwidth_gb_s)
    return {"flops": flops, "compulsory_bytes": nbytes, "intensity_flop_per_byte": intensity,
            "achieved_gflops": achieved, "peak_gflops": peak, "bandwidth_gb_s": limits.bandwidth_gb_s,
            "bound_gflops": bound, "memory_bound": intensity * limits.bandwidth_gb_s < peak,
            "fraction_of_roofline": achieved / bound}


def case_roofline(record: dict[str, Any], limits: MachineLimits) -> dict[str, Any] | None:
    """:func:`roofline` of a measured case record (its FLOPs, median forward time, compulsory bytes)."""
    if record.get("status") != "ok":
        return None
    seconds = (record.get("latency_ms") or {}).get("median", 0.0) / 1e3
    return roofline(record.get("flops"), seconds, record.get("compulsory_bytes"), record["dtype"], limits)
