import json

import pytest

from lda_bench.core import environment, reports


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "sub" / "r.json"
    reports.write_report({"schema_version": 1, "kind": "profile", "x": float("nan")}, path)
    data = json.loads(path.read_text())
    assert data["x"] is None  # NaN becomes null, the file stays valid JSON
    with pytest.raises(FileExistsError, match="--force"):
        reports.write_report({"schema_version": 1}, path)
    reports.write_report({"schema_version": 1, "kind": "profile", "x": 2}, path, force=True)
    assert json.loads(path.read_text())["x"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp files left


def test_load_report_checks(tmp_path):
    with pytest.raises(reports.ReportError, match="does not exist"):
        reports.load_report(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(reports.ReportError, match="cannot read"):
        reports.load_report(bad)
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    with pytest.raises(reports.ReportError, match="not an lda-bench report"):
        reports.load_report(other)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"schema_version": reports.SCHEMA_VERSION + 1}))
    with pytest.raises(reports.ReportError, match="newer"):
        reports.load_report(newer)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"schema_version": 1, "kind": "eval"}))
    with pytest.raises(reports.ReportError, match="expected 'profile'"):
        reports.load_report(ok, kind="profile")
    assert reports.load_report(ok, kind="eval")["kind"] == "eval"


def test_default_path_is_unique(tmp_path):
    first = reports.default_report_path("profile", "smoke", tmp_path)
    first.write_text("{}")
    second = reports.default_report_path("profile", "smoke", tmp_path)
    assert first != second and second.name.startswith("profile-smoke-")


def test_report_header_records_environment():
    header = environment.report_header("profile", command="lda-bench profile")
    assert header["schema_version"] == reports.SCHEMA_VERSION
    env = header["env"]
    for key in ("python", "torch", "cpu_model", "threads", "device_name", "cuda"):
        assert key in env
    assert header["command"] == "lda-bench profile"
    assert set(header["git"]) == {"commit", "dirty"}


def test_timing_warnings_flag_oversubscription_and_debug_build():
    env = environment.collect_environment()
    env.update(threads=64, cpu_count=2, torch_debug_build=True, thread_env={"OMP_NUM_THREADS": "3"})
    warnings = environment.timing_warnings(env, sample_processes=False)
    assert any("debug build" in w for w in warnings)
    assert any("64 threads on 2 CPUs" in w for w in warnings)
    assert any("OMP_NUM_THREADS=3" in w for w in warnings)


def test_write_json_is_atomic_compact_and_refuses_to_overwrite(tmp_path):
    from lda_bench.core.errors import OutputExistsError, UsageError
    from lda_bench.core.reports import ensure_writable, write_json

    path = tmp_path / "sub" / "preds.json"
    write_json([{"a": 1}], path)
    assert path.read_text() == '[{"a": 1}]'
    with pytest.raises(OutputExistsError, match="choose another --save-predictions") as info:
        ensure_writable(path, force=False, option="--save-predictions")
    assert isinstance(info.value, UsageError) and isinstance(info.value, FileExistsError)
    with pytest.raises(FileExistsError):
        write_json([], path)
    write_json([], path, force=True)
    assert path.read_text() == "[]" and [p.name for p in path.parent.iterdir()] == ["preds.json"]
