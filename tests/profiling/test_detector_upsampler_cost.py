"""benchmarks/detector_upsampler_cost.py: paired per-round overheads and a tiny end-to-end run."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "detector_upsampler_cost.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("detector_upsampler_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_overheads_are_paired_within_each_round(bench):
    # The machine gets 2x slower in the second round: paired ratios still see +10% and -5%.
    rounds = [{"nearest": 100.0, "a": 110.0, "b": 95.0}, {"nearest": 200.0, "a": 220.0, "b": 190.0}]
    over = bench.paired_overheads(rounds)
    assert over == {"a": pytest.approx([0.1, 0.1]), "b": pytest.approx([-0.05, -0.05])}


def test_quartiles(bench):
    assert bench.quartiles([3.0]) == (3.0, 3.0, 3.0)
    assert bench.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 3.0, 4.0)


def test_rounds_rotate_the_order_and_time_every_model(bench):
    calls = []
    models = {n: (lambda n=n: calls.append(n)) for n in ("nearest", "a", "b")}
    rounds = bench.measure(models, rounds=3, calls=2, progress=lambda _: None)
    assert len(rounds) == 3 and all(set(r) == {"nearest", "a", "b"} for r in rounds)
    firsts = [calls[i * 9] for i in range(3)]  # 3 models x (1 untimed + 2 timed) calls per round
    assert firsts == ["nearest", "a", "b"]


def test_a_tiny_detector_run_writes_its_report(bench, tmp_path):
    out = tmp_path / "cost.json"
    report = bench.main(["-u", "lda_aqu", "--size", "64x64", "--rounds", "2", "--calls", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["summary"].keys() == {"nearest", "lda_aqu"} == report["summary"].keys()
    assert saved["summary"]["lda_aqu"]["backend"] in ("cpp", "reference")
    assert len(saved["rounds_ms"]) == 2 and all(v > 0 for r in saved["rounds_ms"] for v in r.values())
    assert "| lda_aqu |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):  # no silent overwrite
        bench.main(["-u", "lda_aqu", "--size", "64x64", "--rounds", "1", "--out", str(out)])
