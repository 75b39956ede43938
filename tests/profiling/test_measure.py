import time

import pytest
import torch

from lda_bench.profiling.memory import peak_memory_bytes
from lda_bench.profiling.timing import LatencyStats, measure_latency


def test_stats():
    s = LatencyStats(samples=[4.0, 1.0, 3.0, 2.0, 100.0])
    assert s.median == 3.0 and s.min == 1.0 and s.n == 5
    assert s.mean == pytest.approx(22.0)
    assert s.iqr == pytest.approx(4.0 - 2.0)
    d = s.as_dict()
    assert set(d) >= {"median", "iqr", "min", "mean", "n", "samples"}


def test_repeats_and_min_time_are_both_honoured():
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.002)

    stats = measure_latency(slow, repeats=5, min_time=0.0, warmup=1, warmup_time=0.0)
    assert stats.n == 5 and stats.calls_per_sample == 1
    assert all(s >= 2.0 for s in stats.samples)  # each sample is at least the 2 ms sleep
    stats = measure_latency(slow, repeats=1, min_time=0.05, warmup=1, warmup_time=0.0)
    assert sum(stats.samples) >= 50.0


def test_fast_calls_are_timed_in_blocks():
    stats = measure_latency(lambda: None, repeats=3, min_time=0.0, warmup=1, warmup_time=0.0)
    assert stats.calls_per_sample > 1 and stats.n >= 3


def test_max_time_stops_sampling_early():
    stats = measure_latency(lambda: time.sleep(0.01), repeats=1000, min_time=0.0, max_time=0.05, warmup=1,
                            warmup_time=0.0)
    assert 3 <= stats.n < 1000


def test_invalid_arguments():
    with pytest.raises(ValueError):
        measure_latency(lambda: None, repeats=0)


def test_cpu_peak_counts_what_the_call_allocates():
    n = 1 << 20  # 4 MiB of float32

    def two_buffers_alive():
        a = torch.ones(n)
        b = torch.ones(n)
        return a.sum() + b.sum()

    def one_at_a_time():
        for _ in range(3):
            a = torch.ones(n)
            a.sum()
            del a

    peak, method = peak_memory_bytes(two_buffers_alive)
    assert 8 * 2**20 <= peak < 9 * 2**20 and "profiler" in method
    peak, _ = peak_memory_bytes(one_at_a_time)
    assert 4 * 2**20 <= peak < 5 * 2**20  # freed buffers do not add up

    existing = torch.ones(n)
    peak, _ = peak_memory_bytes(lambda: existing.add_(1))
    assert peak < 2**16  # in-place work on an existing tensor allocates (almost) nothing
