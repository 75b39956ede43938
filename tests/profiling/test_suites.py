import pytest

from lda_bench.profiling.suites import SuiteError, builtin_suites, load_suite, parse_suite

VALID = {"name": "s", "inputs": [{"channels": 8, "size": [4, 5]}]}


def test_builtin_suites_load():
    assert {"fpn-coco", "segformer-ade", "smoke"} <= set(builtin_suites())
    fpn = load_suite("fpn-coco")
    assert [(i.height, i.width) for i in fpn.inputs] == [(13, 21), (26, 42), (52, 84), (104, 168)]
    assert all(i.channels == 256 and i.batch == 1 for i in fpn.inputs)
    seg = load_suite("segformer-ade")
    assert sum(i.count for i in seg.inputs) == 6  # six 2x steps in the decode head


def test_defaults():
    suite = parse_suite(VALID)
    assert suite.dtypes == ["fp32"] and suite.devices == ["auto"] and suite.scale == 2
    assert suite.upsamplers[0].name == "all"
    assert suite.inputs[0].label == "4x5"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"inptus": []}, r"unknown key 'inptus' in the top level \(did you mean 'inputs'\?\)"),
        ({"inputs": [{"channels": 8, "size": [4]}]}, r"inputs\[0\].size must be \[height, width\]"),
        ({"inputs": [{"channels": 8, "size": [4, 5], "chanels": 3}]}, r"unknown key 'chanels' in inputs\[0\]"),
        ({"inputs": [{"size": [4, 5]}]}, r"inputs\[0\] is missing 'channels'"),
        ({"inputs": [{"channels": 0, "size": [4, 5]}]}, r"inputs\[0\].channels must be a positive integer"),
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"dtypes": ["fp8"]}, "'dtypes' has unknown value 'fp8'"),
        ({"metrics": ["speed"]}, "'metrics' has unknown value 'speed'"),
        ({"name": ""}, "'name'"),
        ({"scale": 1}, "'scale' must be >= 2"),
        ({"min_time": -1}, "'min_time' must be a non-negative number"),
        ({"upsamplers": [{"options": {}}]}, r"upsamplers\[0\] must be a name or a mapping with 'name'"),
        ({"upsamplers": [{"name": "x", "opts": {}}]}, r"unknown key 'opts' in upsamplers\[0\]"),
    ],
)
def test_validation_errors_name_the_bad_key(change, message):
    with pytest.raises(SuiteError, match=message):
        parse_suite({**VALID, **change}, "my.yaml")


def test_load_errors(tmp_path):
    with pytest.raises(SuiteError, match="unknown suite 'nope'; built-in suites: "):
        load_suite("nope")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SuiteError, match="must be a YAML mapping"):
        load_suite(listy)


REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_builtin_suites_are_the_top_level_suites_folder_of_a_checkout():
    from lda_bench.profiling.suites import suite_dir

    assert suite_dir() == REPO / "suites"
    assert builtin_suites() == sorted(p.stem for p in (REPO / "suites").glob("*.yaml"))


def test_run_takes_a_suite_path_from_a_checkout(monkeypatch):
    import json

    from typer.testing import CliRunner

    from lda_bench.cli import app

    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["run", "suites/smoke.yaml", "-u", "nearest", "--repeats", "1", "--min-time", "0",
                                      "--json", "--no-save"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["suite"]["source"] == "suites/smoke.yaml" and len(report["cases"]) == 2
