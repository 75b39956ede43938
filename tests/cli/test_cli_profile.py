"""The profile/run/compare/list/env commands driven through Typer's runner."""

import json

import pytest
import torch
from typer.testing import CliRunner

import upsamplers
from lda_bench.cli import app
from lda_bench.core.reports import SCHEMA_VERSION

runner = CliRunner()
FAST = ["--suite", "smoke", "--repeats", "2", "--min-time", "0"]
CASE_FIELDS = {"id", "upsampler", "options", "backend", "input_shape", "guide_shape", "dtype", "device", "params",
               "macs", "flops", "uncounted_ops", "latency_ms", "throughput", "peak_memory_bytes", "status", "error"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_profile_writes_a_complete_report(tmp_path):
    out = tmp_path / "r.json"
    result = invoke("profile", "-u", "nearest,lda_aqu", *FAST, "--output", out)
    assert result.exit_code == 0, result.output
    assert "lda_aqu" in result.stdout and "nearest" in result.stdout and "P3->P2" not in result.stdout
    report = json.loads(out.read_text())
    assert report["schema_version"] == SCHEMA_VERSION and report["kind"] == "profile"
    for key in ("tool_version", "created", "command", "git", "env", "settings", "cases", "summary"):
        assert key in report
    assert {"python", "torch", "cuda", "device_name", "cpu_model", "threads"} <= set(report["env"])
    assert len(report["cases"]) == 4  # 2 upsamplers x 2 smoke inputs
    for case in report["cases"]:
        assert CASE_FIELDS <= set(case)
        assert case["status"] == "ok" and case["error"] is None
        assert case["flops"] == 2 * case["macs"]
        lat = case["latency_ms"]
        assert lat["n"] >= 2 and len(lat["samples"]) == lat["n"] and lat["min"] <= lat["median"]
        assert case["throughput"]["mpix_per_s"] > 0 and case["throughput"]["images_per_s"] > 0
        assert case["peak_memory_bytes"] > 0 and case["accuracy"]["finite"]
    lda = [c for c in report["cases"] if c["upsampler"] == "lda_aqu"][0]
    assert lda["backend"] == upsamplers.ops.resolve_backend("auto", "cpu") and lda["params"] == 560
    assert lda["input_shape"] == [1, 16, 5, 7] and lda["guide_shape"] is None
    ids = [c["id"] for c in report["cases"]]
    assert len(set(ids)) == len(ids)


def test_json_mode_prints_only_json(tmp_path):
    result = invoke("profile", "-u", "bilinear", *FAST, "--json", "--no-save")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert [c["upsampler"] for c in report["cases"]] == ["bilinear", "bilinear"]


def test_single_size_and_options(tmp_path):
    result = invoke("profile", "-u", "lda_aqu", "--size", "3x4", "--channels", "16", "-o", "k_u=5", "-o", "rpb=false",
                    "--repeats", "1", "--min-time", "0", "--json", "--no-save", "--backward")
    assert result.exit_code == 0, result.output
    (case,) = json.loads(result.stdout)["cases"]
    assert case["options"] == {"k_u": 5, "rpb": False}
    assert case["input_shape"] == [1, 16, 3, 4] and case["output_shape"] == [1, 16, 6, 8]
    assert case["forward_backward_latency_ms"]["n"] >= 1


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    result = invoke("profile", "-u", "nearest", *FAST, "--output", out)
    assert result.exit_code == 2 and "--force" in result.output and out.read_text() == "{}"
    result = invoke("profile", "-u", "nearest", *FAST, "--output", out, "--force")
    assert result.exit_code == 0 and json.loads(out.read_text())["kind"] == "profile"


@pytest.mark.parametrize(
    "args,message",
    [
        (["-u", "lda_aq"], "did you mean 'lda_aqu'"),
        (["--size", "12"], "--size must look like HxW"),
        (["--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["--suite", "nope"], "unknown suite 'nope'"),
        (["--counter", "abacus"], "unknown --counter"),
        (["-u", "lda_aqu", "--backend", "magic"], "unknown backend 'magic'"),
        (["-o", "novalue"], "--option expects KEY=VALUE"),
        (["--rounds", "0"], "--rounds must be positive"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(args, message):
    result = invoke("profile", *args, "--no-save")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device():
    result = invoke("profile", "-u", "nearest", *FAST, "--device", "cuda", "--no-save")
    assert result.exit_code == 2 and "CUDA is not available" in result.output


class Broken(torch.nn.Module):
    def __init__(self, channels, scale=2):
        super().__init__()

    def forward(self, x, guide=None):
        raise RuntimeError("kaboom")


class Interrupting(torch.nn.Module):
    def __init__(self, channels, scale=2):
        super().__init__()

    def forward(self, x, guide=None):
        raise KeyboardInterrupt


@pytest.fixture
def extra_upsamplers():
    upsamplers.register("test_broken")(Broken)
    upsamplers.register("test_interrupting")(Interrupting)
    yield
    upsamplers.unregister("test_broken")
    upsamplers.unregister("test_interrupting")


def test_failing_case_is_recorded_and_others_go_on(tmp_path, extra_upsamplers):
    out = tmp_path / "r.json"
    result = invoke("profile", "-u", "test_broken,nearest", *FAST, "--output", out)
    assert result.exit_code == 1
    report = json.loads(out.read_text())
    statuses = {(c["upsampler"], c["label"]): c["status"] for c in report["cases"]}
    assert statuses[("test_broken", "tiny")] == "error" and statuses[("nearest", "tiny")] == "ok"
    broken = [c for c in report["cases"] if c["upsampler"] == "test_broken"][0]
    assert "kaboom" in broken["error"]
    assert report["summary"] == {"planned": 4, "ok": 2, "failed": 2}


def test_ctrl_c_keeps_finished_cases(tmp_path, extra_upsamplers):
    out = tmp_path / "r.json"
    result = invoke("profile", "-u", "nearest,test_interrupting", *FAST, "--output", out)
    assert result.exit_code == 130
    report = json.loads(out.read_text())
    assert report["interrupted"] is True
    assert [c["upsampler"] for c in report["cases"]] == ["nearest"]
    assert "interrupted" in result.output


def test_run_suite_file(tmp_path):
    suite = tmp_path / "mine.yaml"
    suite.write_text(
        "name: mine\nupsamplers: [nearest, {name: dysample, options: {style: pl}}]\n"
        "inputs: [{channels: 8, size: [3, 3]}]\ndevices: [cpu]\nrepeats: 1\nmin_time: 0\n"
    )
    result = invoke("run", suite, "--json", "--no-save")
    assert result.exit_code == 0, result.output
    cases = json.loads(result.stdout)["cases"]
    assert [(c["upsampler"], c["options"]) for c in cases] == [("nearest", {}), ("dysample", {"style": "pl"})]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ninputs: [{channels: 8, size: [3, 3], colour: red}]\n")
    result = invoke("run", bad, "--no-save")
    assert result.exit_code == 2 and "unknown key 'colour'" in result.output


def test_compare_two_reports(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke("profile", "-u", "nearest,bilinear", *FAST, "--output", a).exit_code == 0
    assert invoke("profile", "-u", "nearest", *FAST, "--output", b).exit_code == 0
    result = invoke("compare", a, b)
    assert result.exit_code == 0, result.output
    assert "nearest" in result.stdout and "(absent)" in result.stdout and "x" in result.stdout
    result = invoke("compare", a, b, "--json")
    cases = {c["id"]: c for c in json.loads(result.stdout)["cases"]}
    assert len(cases) == 4
    nearest = [c for i, c in cases.items() if i.startswith("nearest")]
    assert all(c["ratio"] > 0 for c in nearest)
    assert invoke("compare", a, tmp_path / "missing.json").exit_code == 2


def test_list_and_env():
    result = invoke("list")
    assert result.exit_code == 0
    for name in ("lda_aqu", "carafe", "dysample", "39,410", "74,148"):
        assert name in result.stdout
    rows = json.loads(invoke("list", "--json").stdout)["upsamplers"]
    assert {r["name"]: r["params"] for r in rows}["lda_aqu"] == 39_410
    result = invoke("env", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert "torch" in data["env"] and isinstance(data["warnings"], list)
    assert invoke("env").exit_code == 0


def test_help_has_examples():
    for command in ("profile", "run", "compare", "env", "list", "regress", "eval"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout


def test_profile_whole_model():
    result = invoke("profile", "--model", "faster_rcnn_r50_fpn", "-u", "nearest,lda_aqu", "--size", "64x64",
                    "--repeats", "1", "--min-time", "0", "--counter", "both", "--json", "--no-save")
    assert result.exit_code == 0, result.output
    cases = {c["upsampler"]: c for c in json.loads(result.stdout)["cases"]}
    assert cases["lda_aqu"]["params"] - cases["nearest"]["params"] == 4 * 39_410
    for case in cases.values():
        assert case["status"] == "ok" and case["model"] == "faster_rcnn_r50_fpn"
        assert case["input_shape"] == [1, 3, 64, 64]
        assert case["counters_agree"] and not case["uncounted_ops"]
    assert cases["lda_aqu"]["backend"] == upsamplers.ops.resolve_backend("auto", "cpu")
    assert cases["lda_aqu"]["macs"] > cases["nearest"]["macs"]
    result = invoke("profile", "--model", "no_such_model", "--no-save")
    assert result.exit_code == 2 and "unknown model" in result.output


def test_rounds_add_the_paired_overhead_column():
    result = invoke("profile", "-u", "nearest,bilinear", *FAST, "--rounds", "4", "--metrics", "latency", "--no-save")
    assert result.exit_code == 0, result.output
    assert "vs first, paired" in result.stdout and "baseline" in result.stdout
    result = invoke("run", "smoke", "-u", "nearest,bilinear", "--repeats", "2", "--min-time", "0", "--rounds", "3",
                    "--json", "--no-save")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["rounds"] == 3
    assert all(c["latency_ms"]["rounds"] == 3 for c in report["cases"])
    assert [("latency_vs_baseline" in c) for c in report["cases"]] == [c["upsampler"] == "bilinear"
                                                                      for c in report["cases"]]


def test_metrics_option_measures_and_shows_only_those(tmp_path):
    out = tmp_path / "params.json"
    result = invoke("profile", "-u", "nearest,lda_aqu", *FAST, "--metrics", "params", "--output", out)
    assert result.exit_code == 0, result.output
    assert "params" in result.stdout and "560" in result.stdout  # LDA-AQU at the smoke suite's 8 channels
    assert "MACs" not in result.stdout and "median" not in result.stdout and "peak mem" not in result.stdout
    report = json.loads(out.read_text())
    assert report["settings"]["metrics"] == ["params"]
    for case in report["cases"]:
        assert case["params"] is not None and case["macs"] is None and case["latency_ms"] is None
    result = invoke("profile", "-u", "lda_aqu", *FAST, "--metrics", "params,speed", "--no-save")
    assert result.exit_code == 2 and "unknown metric 'speed'" in result.output
