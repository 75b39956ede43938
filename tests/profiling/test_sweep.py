"""``lda-bench sweep``: series over growing sizes, budgets, fitted exponents, roofline arithmetic."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

import upsamplers
from lda_bench.cli import app
from lda_bench.core.errors import UsageError
from lda_bench.core.stats import power_law_fit
from lda_bench.profiling.roofline import MachineLimits, roofline
from lda_bench.profiling.runner import Settings, count_case_macs, count_case_macs_on_meta
from lda_bench.profiling.sweep import Budget, default_sizes, fit, parse_sizes, plan_series, sweep

FAST = dict(repeats=2, min_time=0.0, channels=8, save=False)


def test_default_sizes_are_the_fpn_steps_then_twice_the_pixels():
    sizes = default_sizes()
    assert sizes[:4] == [(13, 21), (26, 42), (52, 84), (104, 168)] and sizes[4:6] == [(147, 238), (208, 336)]
    pixels = [h * w for h, w in sizes[3:]]
    assert all(1.97 < b / a < 2.03 for a, b in zip(pixels, pixels[1:]))


def test_parse_sizes_sorts_and_checks():
    assert parse_sizes("8x12, 4x6,4x6") == [(4, 6), (8, 12)] and parse_sizes(None) is None
    for bad in ("", "4x", "0x3"):
        with pytest.raises(UsageError, match="--sizes"):
            parse_sizes(bad)


def test_power_law_fit_recovers_exponent_and_spread():
    xs = [100, 200, 400, 800, 1600]
    k, stderr, c = power_law_fit(xs, [3.0 * x**1.5 for x in xs])
    assert k == pytest.approx(1.5) and stderr == pytest.approx(0.0, abs=1e-12) and c == pytest.approx(3.0)
    noisy = [2.0 * x * f for x, f in zip(xs, (1.1, 0.9, 1.05, 0.95, 1.0))]
    k, stderr, _ = power_law_fit(xs, noisy)
    assert abs(k - 1) < 0.1 and 0 < stderr < 0.1
    assert power_law_fit([1, 2], [1, 2])[1] is None  # two points: no spread
    for bad in (([1], [1]), ([1, 1], [2, 3]), ([1, 2], [0, 1])):
        with pytest.raises(ValueError):
            power_law_fit(*bad)


def test_roofline_arithmetic():
    limits = MachineLimits("cpu", 2, {"fp32": 100.0}, copy_gb_s=8.0, triad_gb_s=10.0)
    assert limits.bandwidth_gb_s == 10.0
    memory_bound = roofline(flops=2_000_000_000, seconds=1.0, nbytes=1_000_000_000, dtype="fp32", limits=limits)
    assert memory_bound["intensity_flop_per_byte"] == 2.0 and memory_bound["bound_gflops"] == 20.0
    assert memory_bound["achieved_gflops"] == 2.0 and memory_bound["fraction_of_roofline"] == pytest.approx(0.1)
    assert memory_bound["memory_bound"]
    compute_bound = roofline(flops=50_000_000_000, seconds=1.0, nbytes=1_000_000, dtype="bf16", limits=limits)
    assert compute_bound["bound_gflops"] == 100.0 and not compute_bound["memory_bound"]  # bf16 falls back to fp32
    assert compute_bound["fraction_of_roofline"] == pytest.approx(0.5)
    assert roofline(None, 1.0, 10, "fp32", limits) is None and roofline(10, 0.0, 10, "fp32", limits) is None


@pytest.mark.parametrize("name", [s.name for s in upsamplers.available()])
def test_counting_on_meta_tensors_equals_counting_real_ones(name):
    (plan,) = plan_series(name, None, None, [(6, 8)], 32, 1, "cpu", "fp32")[:1]
    case = plan.cases[0]
    settings = Settings(counter="dispatch")
    assert count_case_macs_on_meta(case, settings)["macs"] == count_case_macs(case, settings)["macs"]


def test_a_tiny_sweep_records_series_fits_and_roofline():
    result = sweep("bilinear,lda_aqu", sizes="4x6,8x12,16x24", backward=True, **FAST)
    report = result.report
    assert result.exit_code == 0 and report["kind"] == "sweep" and [s["upsampler"] for s in report["series"]] == \
        ["bilinear", "lda_aqu"]
    limits = report["machine"]["cpu"]
    assert limits["matmul_gflops"]["fp32"] > 0 and limits["bandwidth_gb_s"] > 0 and limits["threads"] >= 1
    for series in report["series"]:
        assert series["stop_reason"] == "sizes exhausted" and len(series["points"]) == 3
        assert [p["output_pixels"] for p in series["points"]] == [4 * 6 * 4, 8 * 12 * 4, 16 * 24 * 4]
        for point in series["points"]:
            assert point["status"] == "ok" and point["latency_ms"]["n"] >= 2
            assert point["forward_backward_latency_ms"]["median"] > 0 and point["peak_memory_bytes"] > 0
            roof = point["roofline"]
            assert roof["achieved_gflops"] > 0 and 0 < roof["fraction_of_roofline"]
            assert roof["compulsory_bytes"] == point["compulsory_bytes"] > 0
        fits = series["fits"]
        assert fits["time_ms"]["points"] == 3 and fits["time_ms"]["stderr"] is not None
        assert fits["peak_memory_bytes"]["exponent"] > 0.5  # the output dominates: about linear in pixels
    lda = report["series"][1]
    assert lda["label"] == f"lda_aqu ({upsamplers.ops.resolve_backend('auto', 'cpu')})"
    assert [p["macs"] for p in lda["points"]][1] == 4 * lda["points"][0]["macs"]  # linear in pixels


def test_budgets_end_a_series_before_it_is_exceeded():
    points = [{"status": "ok", "output_pixels": 100, "latency_ms": {"median": 10.0}, "peak_memory_bytes": 1000},
              {"status": "ok", "output_pixels": 200, "latency_ms": {"median": 20.0}, "peak_memory_bytes": 2000}]
    assert fit(points, "time_ms")["exponent"] == pytest.approx(1.0)
    assert Budget(10**9, 100.0).stop_reason(points, 400) is None
    assert "memory budget" in Budget(3000, 100.0).stop_reason(points, 400)  # 4000 bytes predicted
    assert "time budget" in Budget(10**9, 0.03).stop_reason(points, 400)  # 40 ms predicted
    result = sweep("bilinear", sizes="4x6,8x12,16x24,32x48", memory_budget=1, **FAST)
    (series,) = result.report["series"]
    assert len(series["points"]) == 1 and series["stop_reason"].startswith("memory budget")


def test_an_out_of_memory_point_ends_its_series(monkeypatch):
    import lda_bench.profiling.sweep as sweep_module

    real = sweep_module.measure_case

    def failing(case, settings, cache):
        if case.height >= 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(case, settings, cache)

    monkeypatch.setattr(sweep_module, "measure_case", failing)
    result = sweep("bilinear", sizes="4x6,8x12,16x24", **FAST)
    (series,) = result.report["series"]
    assert [p["status"] for p in series["points"]] == ["ok", "oom"] and series["stop_reason"].startswith("oom at 8x12")
    assert result.exit_code == 0  # running out of memory is a result, not a failure


def test_cli_sweep_prints_tables_and_writes_the_report(tmp_path):
    out = tmp_path / "s.json"
    result = CliRunner().invoke(app, ["sweep", "-u", "nearest,bilinear", "--sizes", "4x6,8x12", "--channels", "8",
                                      "--repeats", "2", "--min-time", "0", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "growth in output pixels" in result.stdout and "k time" in result.stdout and "% roof" in result.stdout
    report = json.loads(out.read_text())
    assert len(report["series"]) == 2 and math.isfinite(report["series"][1]["fits"]["time_ms"]["exponent"])
    for args, message in ((["--sizes", "4"], "--sizes must look like"),
                          (["--memory-budget", "lots"], "--memory-budget must be a positive size"),
                          (["-u", "nope"], "unknown upsampler"), (["--dtype", "fp8"], "unknown dtype")):
        result = CliRunner().invoke(app, ["sweep", "--no-save", *args])
        assert result.exit_code == 2 and message in result.output, result.output
