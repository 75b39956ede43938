"""The throughput gate: verdict logic on synthetic reports, and the command's exit codes."""

import json
import random
import time

import pytest
import torch
from typer.testing import CliRunner

import upsamplers
from lda_bench.cli import app
from lda_bench.regress.gate import FASTER, NOT_COMPARABLE, SAME, SLOWER, TOO_NOISY, GateSettings, exit_code, judge

runner = CliRunner()


def case(case_id, ratios, status="ok", **extra):
    return {"id": case_id, "label": "L", "upsampler": case_id.split("/")[0], "backend": None, "device": "cpu",
            "status": status, "error": None if status == "ok" else "boom", "ratio": ratios,
            "case_ms": [r * 10 for r in ratios], **extra}


def report(*cases, suite="ci"):
    return {"schema_version": 1, "kind": "regress", "suite": {"name": suite}, "cases": list(cases)}


def noisy(centre, spread, n=20, seed=0):
    rng = random.Random(seed)
    return [centre * (1 + rng.uniform(-spread, spread)) for _ in range(n)]


GATE = GateSettings()


def test_same_within_threshold():
    verdicts, reasons = judge(report(case("a/x", noisy(2.0, 0.05))), report(case("a/x", noisy(2.2, 0.05, seed=1))), GATE)
    assert [v.verdict for v in verdicts] == [SAME] and not reasons
    assert exit_code(verdicts, reasons) == 0


def test_regressed_and_improved():
    base = report(case("a/x", noisy(2.0, 0.05)), case("b/x", noisy(2.0, 0.05)))
    now = report(case("a/x", noisy(3.0, 0.05, seed=1)), case("b/x", noisy(1.0, 0.05, seed=2)))
    verdicts, reasons = judge(base, now, GATE)
    by_id = {v.id: v for v in verdicts}
    assert by_id["a/x"].verdict == SLOWER and by_id["a/x"].change == pytest.approx(1.5, rel=0.05)
    assert by_id["a/x"].p_value < 1e-6
    assert by_id["b/x"].verdict == FASTER
    assert exit_code(verdicts, reasons) == 1


def test_beyond_threshold_but_not_significant_is_too_noisy():
    base = report(case("a/x", [1.0, 1.0, 3.0]))
    now = report(case("a/x", [1.0, 3.0, 3.0]))
    (v,), reasons = judge(base, now, GATE)
    assert v.verdict == TOO_NOISY and exit_code([v], reasons) == 2


def test_wide_spread_is_too_noisy():
    base = report(case("a/x", noisy(2.0, 0.05)))
    now = report(case("a/x", noisy(2.0, 0.9, seed=3)))
    (v,), _ = judge(base, now, GATE)
    assert v.verdict == TOO_NOISY and "spread" in v.reason


def test_incomparable_case_sets_suites_and_devices():
    base = report(case("a/x", noisy(2.0, 0.05)), case("gone/x", noisy(2.0, 0.05)))
    now = report(case("a/x", noisy(2.0, 0.05, seed=1)), case("new/x", noisy(2.0, 0.05)))
    verdicts, reasons = judge(base, now, GATE)
    by_id = {v.id: v.verdict for v in verdicts}
    assert by_id == {"a/x": SAME, "gone/x": NOT_COMPARABLE, "new/x": NOT_COMPARABLE}
    assert exit_code(verdicts, reasons) == 2
    verdicts, reasons = judge(report(case("a/x", [1.0] * 5)), report(case("a/x", [1.0] * 5), suite="other"), GATE)
    assert reasons and all(v.verdict == NOT_COMPARABLE for v in verdicts) and exit_code(verdicts, reasons) == 2
    cuda = report(case("a/x", [1.0] * 5))
    cuda["cases"][0]["device"] = "cuda"
    _, reasons = judge(report(case("a/x", [1.0] * 5)), cuda, GATE)
    assert "different devices" in reasons[0]


def test_other_processor_or_thread_count_is_not_comparable():
    base, now = report(case("a/x", [1.0] * 5)), report(case("a/x", [1.0] * 5))
    base["env"] = {"device_name": "AMD EPYC", "threads": 2}
    now["env"] = {"device_name": "AMD EPYC", "threads": 2}
    assert judge(base, now, GATE)[1] == []
    now["env"] = {"device_name": "Intel Xeon", "threads": 4}
    verdicts, reasons = judge(base, now, GATE)
    assert len(reasons) == 2 and "different processors" in reasons[0] and "thread counts" in reasons[1]
    assert exit_code(verdicts, reasons) == 2


def test_failed_case_is_not_comparable_and_regression_wins_exit_code():
    base = report(case("a/x", noisy(2.0, 0.05)), case("b/x", noisy(2.0, 0.05)))
    now = report(case("a/x", [], status="error"), case("b/x", noisy(4.0, 0.05, seed=4)))
    verdicts, reasons = judge(base, now, GATE)
    assert verdicts[0].verdict == NOT_COMPARABLE and verdicts[1].verdict == SLOWER
    assert exit_code(verdicts, reasons) == 1


def test_changed_macs_are_noted():
    base = report(case("a/x", noisy(2.0, 0.05), macs=100))
    now = report(case("a/x", noisy(2.0, 0.05, seed=1), macs=120))
    (v,), _ = judge(base, now, GATE)
    assert v.verdict == SAME and v.notes == ["macs changed: 100 -> 120"]


def test_gate_settings_validation():
    with pytest.raises(ValueError):
        GateSettings(threshold=0.9)
    with pytest.raises(ValueError):
        GateSettings(alpha=2)


# ----------------------------------------------------------------------------- end to end (CLI)

DELAY = {"seconds": 0.0}


class Tunable(torch.nn.Module):
    """Nearest upsampling plus a busy wait whose length the tests control."""

    def __init__(self, channels, scale=2):
        super().__init__()
        self.scale = scale

    def forward(self, x, guide=None):
        end = time.perf_counter() + DELAY["seconds"]
        while time.perf_counter() < end:
            pass
        return torch.nn.functional.interpolate(x, scale_factor=self.scale)


@pytest.fixture
def tiny_suite(tmp_path):
    upsamplers.register("test_tunable")(Tunable)
    DELAY["seconds"] = 0.0
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nupsamplers: [test_tunable, nearest]\ninputs: [{channels: 4, size: [8, 8]}]\n"
                    "devices: [cpu]\n")
    yield path
    upsamplers.unregister("test_tunable")


def gate(*args):
    return runner.invoke(app, ["regress", *[str(a) for a in args], "--rounds", "12", "--min-time", "0"])


def test_cli_update_judge_and_exit_codes(tmp_path, tiny_suite):
    base = tmp_path / "base.json"
    assert gate("--baseline", base).exit_code == 3  # no baseline yet: set-up error
    result = gate("--update", "--baseline", base, "--suite", tiny_suite)
    assert result.exit_code == 0, result.output
    data = json.loads(base.read_text())
    assert data["kind"] == "regress" and len(data["cases"]) == 2
    assert all(len(c["ratio"]) >= 12 for c in data["cases"])
    assert data["calibration"]["before"]["median_ms"] > 0
    result = gate("--update", "--baseline", base, "--suite", tiny_suite)
    assert result.exit_code == 3 and "--force" in result.output  # never overwrites silently

    DELAY["seconds"] = 0.004  # far beyond the threshold for a ~0.05 ms op
    out = tmp_path / "now.json"
    result = gate("--baseline", base, "--output", out)
    assert result.exit_code == 1, result.output
    assert "slower" in result.stdout and "regression detected" in result.stdout
    verdicts = {v["upsampler"]: v["verdict"] for v in json.loads(out.read_text())["gate"]["verdicts"]}
    assert verdicts["test_tunable"] == "slower"
    result = gate("--baseline", base, "--advisory")
    assert result.exit_code == 0 and "slower" in result.stdout

    other = tmp_path / "other.yaml"
    other.write_text(tiny_suite.read_text().replace("name: tiny", "name: other"))
    result = gate("--baseline", base, "--suite", other)
    assert result.exit_code == 2 and "different suites" in result.output


def test_cli_rejects_bad_threshold(tmp_path):
    result = runner.invoke(app, ["regress", "--baseline", str(tmp_path / "b.json"), "--threshold", "0.5"])
    assert result.exit_code == 2 and "threshold" in result.output


class Failing(torch.nn.Module):
    """Raises on every call: with ``interrupt``, as Ctrl-C would."""

    interrupt = False

    def __init__(self, channels, scale=2):
        super().__init__()

    def forward(self, x, guide=None):
        raise KeyboardInterrupt if Failing.interrupt else RuntimeError("kernel exploded")


def test_measure_records_a_failing_case_and_stops_on_interrupt(tmp_path):
    from lda_bench.regress.session import Timing, measure

    upsamplers.register("test_failing")(Failing)
    try:
        path = tmp_path / "failing.yaml"
        path.write_text("name: failing\nupsamplers: [nearest, test_failing, bilinear]\n"
                        "inputs: [{channels: 4, size: [8, 8]}]\ndevices: [cpu]\n")
        timing = Timing(rounds=5, min_time=0.0)
        report = measure(path, timing=timing)
        status = {c["upsampler"]: (c["status"], c.get("error")) for c in report["cases"]}
        assert status == {"nearest": ("ok", None), "test_failing": ("error", "RuntimeError: kernel exploded"),
                          "bilinear": ("ok", None)}
        assert not report["interrupted"] and report["calibration"]["after"] is not None
        Failing.interrupt = True
        report = measure(path, timing=timing)
        assert [c["upsampler"] for c in report["cases"]] == ["nearest"]
        assert report["interrupted"] and report["calibration"]["after"] is None
    finally:
        Failing.interrupt = False
        upsamplers.unregister("test_failing")
