"""Paired, interleaved timing of a case against a fixed reference workload of similar shape.

Shared CI machines drift by tens of percent between runs (CPU frequency, noisy neighbours,
memory-bandwidth contention). Drift that is slow compared with one round (milliseconds) affects
both members of a pair alike, so the per-round ratio case / reference cancels it. Rounds
alternate the order (case then reference, reference then case) so that effects tied to position
within a round (cache warmth, turbo ramp) cancel too, and the two members of a round run for about
the same time (the shorter one is repeated) so that pauses from host-level CPU throttling hit
both alike.

The reference workload is plain PyTorch on tensors of the case's own shapes: a bilinear 2x
upsample of the input (output-sized memory traffic, like every upsampler) plus a 1x1 convolution
C -> C at the input resolution (GEMM work, like the projections inside learned upsamplers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from lda_bench.core.devices import DTYPES
from lda_bench.profiling.cases import Case
from lda_bench.profiling.timing import BLOCK_TARGET_S, synchronize, time_calls

REFERENCE_WORKLOAD = "bilinear 2x upsample of the input + 1x1 conv C->C at input resolution (same dtype/device)"
CALIBRATION_WORKLOAD = "512x512 fp32 matmul x4 + 16 MiB copy, on the CPU"


def reference_workload(case: Case) -> Callable[[], Any]:
    """A fixed PyTorch workload with the case's shapes (see module docstring)."""
    gen = torch.Generator().manual_seed(2)
    dtype = DTYPES[case.dtype]
    x = torch.randn(case.input_shape, generator=gen).to(case.device, dtype)
    weight = (torch.randn(case.channels, case.channels, 1, 1, generator=gen) / math.sqrt(case.channels)).to(
        case.device, dtype)

    def run() -> None:
        with torch.inference_mode():
            F.interpolate(x, scale_factor=case.scale, mode="bilinear", align_corners=False)
            F.conv2d(x, weight)

    return run


def calibration_workload() -> Callable[[], Any]:
    """A fixed, shape-independent CPU workload recorded in every run (machine speed indicator)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(512, 512, generator=gen)
    src = torch.randn(4 * 2**20, generator=gen)
    dst = torch.empty_like(src)

    def run() -> None:
        for _ in range(4):
            torch.mm(a, a)
        dst.copy_(src)

    return run


@dataclass
class Timing:
    """How long the gate measures each case: at least ``rounds`` rounds and ``min_time`` seconds of
    timed blocks, at most ``max_time`` seconds once 5 rounds exist; ``warmup`` untimed calls first."""

    rounds: int = 20
    min_time: float = 3.0
    max_time: float = 30.0
    warmup: int = 2
    # A/B mode: a timed block of a side lasts at least this long (several short calls), so that one
    # call's page faults or preemption do not decide a round.
    min_block_s: float = 0.1


@dataclass
class PairedSamples:
    """Per-round times (ms per call) of the case and of the reference, and their ratios."""

    case_ms: list[float] = field(default_factory=list)
    reference_ms: list[float] = field(default_factory=list)
    case_calls: int = 1
    reference_calls: int = 1

    @property
    def ratios(self) -> list[float]:
        return [c / r for c, r in zip(self.case_ms, self.reference_ms)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "case_ms": self.case_ms,
            "reference_ms": self.reference_ms,
            "ratio": self.ratios,
            "case_calls_per_sample": self.case_calls,
            "reference_calls_per_sample": self.reference_calls,
        }


def _best_time(fn: Callable[[], Any], device: torch.device, warmup: int) -> float:
    """Fastest of ``warmup`` single calls (seconds): warms up and estimates the call time."""
    return min(time_calls(fn, 1, device) for _ in range(max(1, warmup)))


def matched_calls(case_s: float, reference_s: float, min_block_s: float = BLOCK_TARGET_S) -> tuple[int, int]:
    """Calls per sample for the case and the reference so that both blocks last about as long.

    Equal block lengths matter on VMs with CPU-bandwidth throttling: a throttling period pauses a
    300 ms block several times but a 26 ms block at most once, so unequal blocks would make the
    ratio depend on the host's quota. Blocks also last at least ``min_block_s``.
    """
    target = max(case_s, reference_s, min_block_s)
    return (max(1, round(target / max(case_s, 1e-9))), max(1, round(target / max(reference_s, 1e-9))))


def measure_paired(
    case_fn: Callable[[], Any],
    reference_fn: Callable[[], Any],
    device: torch.device | str = "cpu",
    *,
    rounds: int = 15,
    min_time: float = 1.0,
    max_time: float = 30.0,
    warmup: int = 2,
) -> PairedSamples:
    """Alternate case and reference for at least ``rounds`` rounds and ``min_time`` seconds."""
    device = torch.device(device)
    synchronize(device)
    case_calls, reference_calls = matched_calls(_best_time(case_fn, device, warmup),
                                                _best_time(reference_fn, device, warmup))
    samples = PairedSamples(case_calls=case_calls, reference_calls=reference_calls)
    start = time.perf_counter()
    i = 0
    while len(samples.case_ms) < rounds or time.perf_counter() - start < min_time:
        order = (0, 1) if i % 2 == 0 else (1, 0)
        times = [0.0, 0.0]
        for which in order:
            fn, calls = (case_fn, samples.case_calls) if which == 0 else (reference_fn, samples.reference_calls)
            times[which] = time_calls(fn, calls, device) / calls * 1e3
        samples.case_ms.append(times[0])
        samples.reference_ms.append(times[1])
        i += 1
        if time.perf_counter() - start > max_time and len(samples.case_ms) >= 5:
            break
    return samples
