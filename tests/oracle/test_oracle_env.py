"""The oracle harness (benchmarks/oracle): its set-up and report in CI, its comparisons where the
oracle's environment exists (LDA_BENCH_ORACLE_VENV=path of the venv that run.py created)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ORACLE = Path(__file__).resolve().parents[2] / "benchmarks" / "oracle"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"oracle_{name}", ORACLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_install_torch_first_and_upstream_last_without_build_isolation():
    groups = load("run").requirement_groups()
    assert groups[0] == ["torch==2.14.1", "torchvision==0.29.1"]
    assert any(r.startswith("setuptools") for r in groups[1])
    # numpy and OpenCV are resolved with upstream, or a later package upgrades them (seen: numpy 2.4,
    # OpenCV 5, whose float32 normalisation differs from OpenCV 4's by one ulp)
    assert {"numpy<2", "opencv-python>=4.5,<5", "mmcv==1.7.2", "mmdet==2.28.2", "mmsegmentation==0.30.0"} <= set(
        groups[-1])


def test_run_refuses_missing_clones_and_its_own_environment(tmp_path, capsys):
    run = load("run")
    assert run.main(["--lda-aqu-repo", str(tmp_path / "nope"), "--venv", str(tmp_path / "v")]) == 2
    assert "does not exist" in capsys.readouterr().err
    import sys

    assert run.main(["--venv", sys.prefix]) == 2
    assert "needs its own" in capsys.readouterr().err


def small_report(equal: bool) -> dict:
    detections = {"upstream": 3, "ours": 3, "same_count": True, "labels_equal": equal, "boxes_max_abs": 0.0,
                  "scores_max_abs": 0.0, "differing_boxes": 0 if equal else 1}
    return {
        "versions": {"python": "3.11", "torch": "2", "numpy": "1.26", "mmcv": "1.7.2", "mmdet": "2.28.2",
                     "mmseg": "0.30.0", "lda_bench": "0.1.0"},
        "shims": {"mmcv._ext": ["nms"]}, "errors": [], "finished": True, "seconds": 1.0,
        "preprocessing": [{"name": "resize", "opencv": "4.11.0", "cases": 1, "values": 10, "differing_values": 0,
                           "differing_cases": [], "mmdet_pipeline": [], "equal": True}],
        "state_dicts": [], "metrics": [], "complexity": [],
        "forward": [{"name": "faster", "preprocess_max_abs": 0.0, "backbone_max_abs": 0.0, "neck_max_abs": 0.0,
                     "proposals": {"upstream": 5, "ours": 5, "unmatched": 0, "matched_max_abs": 0.0},
                     "detections": detections, "equal": equal}],
    }


@pytest.mark.parametrize("equal", [True, False])
def test_report_states_how_many_comparisons_agree(tmp_path, equal):
    report = tmp_path / "r.json"
    report.write_text(json.dumps(small_report(equal)))
    load("report").main([str(report), str(tmp_path / "r.md")])
    text = (tmp_path / "r.md").read_text()
    assert f"**Result: {2 if equal else 1} of 2 comparisons agree" in text
    assert ("**NO**" in text) is not equal


ORACLE_VENV = os.environ.get("LDA_BENCH_ORACLE_VENV")
needs_oracle = pytest.mark.skipif(not ORACLE_VENV, reason="set LDA_BENCH_ORACLE_VENV to the oracle's environment "
                                                          "(python benchmarks/oracle/run.py creates .oracle-venv)")


def compare(tmp_path: Path, *only: str) -> dict:
    python = Path(ORACLE_VENV) / "bin" / "python"
    out = tmp_path / "oracle.json"
    args = [str(python), str(ORACLE / "compare.py"), "--json", str(out)]
    for step in only:
        args += ["--only", step]
    subprocess.run(args, check=False, timeout=1800)
    return json.loads(out.read_text())


def assert_all_equal(report: dict) -> None:
    assert not report["errors"], report["errors"]
    failing = [c["name"] for section in ("preprocessing", "state_dicts", "forward", "metrics")
               for c in report[section] if c.get("equal") is False]
    assert not failing, failing


@needs_oracle
@pytest.mark.slow
def test_oracle_preprocessing_and_segformer(tmp_path):
    report = compare(tmp_path, "preprocessing", "segformer", "metric")
    assert report["preprocessing"] and report["forward"] and len(report["metrics"]) == 3
    assert_all_equal(report)


@needs_oracle
@pytest.mark.slow
def test_oracle_detectors(tmp_path):
    report = compare(tmp_path, "FPN_CARAFE(nearest)", "FPN_CARAFE(carafe)", "ships it", "panoptic")
    assert len(report["state_dicts"]) == 6 and len(report["forward"]) == 5
    assert_all_equal(report)
