"""Latency in interleaved rounds (lda-bench profile --rounds): pairing, rotation, failures, Ctrl-C."""

import json

import pytest

from lda_bench.core.errors import UsageError
from lda_bench.profiling import rounds as rounds_module
from lda_bench.profiling.cases import UpsamplerEntry, build_cases
from lda_bench.profiling.render import fmt_overhead, profile_table
from lda_bench.profiling.rounds import baselines, paired_overhead, rotated, run_cases_in_rounds
from lda_bench.profiling.runner import Settings
from lda_bench.profiling.session import profile
from lda_bench.profiling.suites import load_suite

SETTINGS = Settings(repeats=2, min_time=0.0, rounds=3, metrics=("params", "latency"))


def smoke_cases(*names):
    return build_cases(load_suite("smoke"), [UpsamplerEntry(n) for n in names])


def test_baselines_are_the_first_case_of_each_step():
    cases = smoke_cases("nearest", "bilinear", "lda_aqu")
    labels = [c.label for c in cases]
    first = {label: labels.index(label) for label in labels}
    assert baselines(cases) == [None if first[c.label] == i else first[c.label] for i, c in enumerate(cases)]
    assert baselines(cases).count(None) == len(first)


def test_overheads_are_paired_within_each_round():
    # The machine is twice as slow in the second round and three times in the fourth: still +10%.
    over = paired_overhead([110.0, 220.0, 110.0, 330.0], [100.0, 200.0, 100.0, 300.0])
    assert over["median"] == pytest.approx(0.1) and over["q1"] == pytest.approx(0.1)
    assert over["q3"] == pytest.approx(0.1) and over["rounds"] == 4
    assert paired_overhead([], []) == {}


def test_rotation():
    assert rotated([1, 2, 3], 0) == [1, 2, 3] and rotated([1, 2, 3], 4) == [2, 3, 1] and rotated([], 2) == []


def fake_rounds(monkeypatch, cases, behaviour):
    """time_round replaced: records the order of the cases' upsamplers and returns
    behaviour(upsampler, how many rounds of it so far, this one included)."""
    calls = []

    def fake(workload, device, settings):
        name = cases[workload.index].upsampler
        calls.append(name)
        return behaviour(name, calls.count(name))

    monkeypatch.setattr(rounds_module, "time_round", fake)
    return calls


def test_every_round_times_every_case_in_a_rotated_order(monkeypatch):
    cases = [c for c in smoke_cases("nearest", "bilinear", "lda_aqu") if c.label == "tiny"]
    # Round r is r times slower for everyone; lda_aqu costs twice nearest, bilinear the same.
    cost = {"nearest": 1.0, "bilinear": 1.0, "lda_aqu": 2.0}
    calls = fake_rounds(monkeypatch, cases, lambda name, r: cost[name] * r)
    steps = []
    records, interrupted = run_cases_in_rounds(cases, SETTINGS, on_rounds=steps.append,
                                               on_round=lambda case, r: steps.append((case.upsampler, r)))
    assert not interrupted and steps[0] == 9 and len(steps) == 10
    assert calls == ["nearest", "bilinear", "lda_aqu", "bilinear", "lda_aqu", "nearest", "lda_aqu", "nearest",
                     "bilinear"]
    by = {r["upsampler"]: r for r in records}
    assert by["lda_aqu"]["latency_ms"]["samples"] == [2.0, 4.0, 6.0] and by["lda_aqu"]["latency_ms"]["rounds"] == 3
    assert by["lda_aqu"]["latency_vs_baseline"]["median"] == pytest.approx(1.0)
    assert by["lda_aqu"]["latency_vs_baseline"]["baseline"] == by["nearest"]["id"]
    assert by["bilinear"]["latency_vs_baseline"]["per_round"] == pytest.approx([0.0, 0.0, 0.0])
    assert "latency_vs_baseline" not in by["nearest"]
    assert by["lda_aqu"]["throughput"]["mpix_per_s"] > 0 and by["lda_aqu"]["params"] > 0


def test_a_case_failing_in_a_round_leaves_the_rounds_and_the_others_go_on(monkeypatch):
    cases = [c for c in smoke_cases("nearest", "lda_aqu") if c.label == "tiny"]

    def behaviour(name, r):
        if name == "lda_aqu" and r == 2:
            raise RuntimeError("out of luck")
        return 1.0

    fake_rounds(monkeypatch, cases, behaviour)
    records, interrupted = run_cases_in_rounds(cases, SETTINGS)
    by = {r["upsampler"]: r for r in records}
    assert not interrupted and by["nearest"]["status"] == "ok" and by["nearest"]["latency_ms"]["rounds"] == 3
    assert by["lda_aqu"]["status"] == "error" and "round 2" in by["lda_aqu"]["error"]
    assert by["lda_aqu"]["latency_ms"] is None and "latency_vs_baseline" not in by["lda_aqu"]


def test_ctrl_c_keeps_the_rounds_every_case_finished(monkeypatch):
    cases = [c for c in smoke_cases("nearest", "lda_aqu") if c.label == "tiny"]

    def behaviour(name, r):
        if r == 3 and name == "lda_aqu":
            raise KeyboardInterrupt
        return float(r)

    fake_rounds(monkeypatch, cases, behaviour)
    records, interrupted = run_cases_in_rounds(cases, SETTINGS)
    assert interrupted
    for record in records:  # nearest had timed its third round already: dropped, as lda_aqu has none
        assert record["status"] == "ok" and record["latency_ms"]["samples"] == [1.0, 2.0]


def test_profile_with_rounds_end_to_end(tmp_path):
    out = tmp_path / "rounds.json"
    result = profile("nearest,lda_aqu", suite="smoke", repeats=2, min_time=0.0, rounds=4, metrics="latency",
                     output=out)
    report = json.loads(out.read_text())
    assert result.exit_code == 0 and report["settings"]["rounds"] == 4
    for case in report["cases"]:
        assert case["status"] == "ok" and case["latency_ms"]["rounds"] == 4 and len(case["latency_ms"]["samples"]) == 4
        assert (case["upsampler"] == "lda_aqu") == ("latency_vs_baseline" in case)
    table = profile_table(report)
    assert any(col.header.startswith("vs first") for col in table.columns)
    with pytest.raises(UsageError, match="--rounds"):
        profile("nearest", suite="smoke", rounds=0, save=False)


def test_fmt_overhead():
    assert fmt_overhead(None) == "-"
    assert fmt_overhead({"median": 0.094, "q1": 0.073, "q3": 0.107, "rounds": 9}) == "+9.4% [+7.3, +10.7]"
    assert fmt_overhead({"median": -0.05, "q1": -0.05, "q3": -0.05, "rounds": 3}) == "-5.0%"


def test_without_rounds_nothing_changes():
    records = profile("nearest,bilinear", suite="smoke", repeats=2, min_time=0.0, metrics="latency",
                      save=False).report["cases"]
    assert all("latency_vs_baseline" not in r and "rounds" not in r["latency_ms"] for r in records)
