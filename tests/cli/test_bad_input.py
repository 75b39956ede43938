"""Every mistake gets one clear line on stderr and the documented exit code, before work starts."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from lda_bench.cli import app
from lda_bench.data.synthetic import write_synthetic_coco

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (root / "truncated.json").write_text('{"schema_version": 1, "kind": "profile", "cases": [')
    (root / "python-tag.yaml").write_text("name: !!python/object/apply:os.system ['echo pwned']\ninputs: []\n")
    (root / "a-file").write_text("")
    (root / "folder").mkdir()
    (root / "sweep.json").write_text(json.dumps({"schema_version": 1, "kind": "sweep", "series": []}))
    (root / "malformed.json").write_text(json.dumps({"schema_version": 1, "kind": "profile", "cases": [{"x": 1}]}))
    write_synthetic_coco(root / "coco", num_images=2, seed=0)
    ann = root / "coco" / "annotations" / "instances_val2017.json"
    images = json.loads(ann.read_text())["images"]
    good = {"image_id": images[0]["id"], "category_id": 1, "bbox": [1.0, 2.0, 10.0, 12.0], "score": 0.9}
    (root / "nan.json").write_text(json.dumps([good, {**good, "bbox": [float("nan"), 1, 2, 3]},
                                               {**good, "bbox": [1, 1, -4, 3]}]).replace("NaN", "NaN"))
    (root / "unknown-category.json").write_text(json.dumps([good, {**good, "category_id": 999}]))
    (root / "unknown-image.json").write_text(json.dumps([{**good, "image_id": 123456}]))
    (root / "empty.json").write_text("[]")
    (root / "truncated-preds.json").write_text('[{"image_id": 1, "category_id": 1, "bbox": [1,2,3')
    (root / "garbage.pth").write_bytes(b"not a checkpoint at all")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root / 'pwned'}",))

    torch.save({"state_dict": {"a": torch.zeros(1)}, "meta": {"x": Evil()}}, root / "evil.pth")
    return root


CASES = [
    (["profile", "-u", "lda_aqu", "-o", "k_u=[1,2"], 2, "not a YAML scalar or flow list"),
    (["profile", "-u", "lda_aqu", "-o", "n_groups=0", "--suite", "smoke"], 2, "n_groups must be a positive integer"),
    (["profile", "-u", "lda_aqu", "-o", "k_u=4", "--suite", "smoke"], 2, "k_u must be odd"),
    (["profile", "-u", "lda_aqu", "-o", "bogus=1", "--suite", "smoke"], 2, "unknown option 'bogus'"),
    (["profile", "-u", "lda_aqu", "-o", "k_u=nan", "--suite", "smoke"], 2, "k_u must be a positive integer"),
    (["profile", "-u", "lda_aqu", "--size", "100000x100000"], 2, "its input and output tensors alone need"),
    (["profile", "--size", "12"], 2, "--size must look like HxW"),
    (["profile", "--max-time", "0", "--suite", "smoke"], 2, "--max-time must be positive"),
    (["profile", "--suite", "smoke", "--output", "{folder}"], 2, "is a folder"),
    (["profile", "--suite", "smoke", "--output", "{a-file}/r.json"], 2, "cannot write there"),
    (["run", "{binary.yaml}"], 2, "is not a text (YAML) file"),
    (["run", "{folder}"], 2, "is a folder"),
    (["run", "{python-tag.yaml}"], 2, "not valid YAML"),
    (["run", "smoke", "-o", "x=@"], 2, "not a YAML scalar"),
    (["compare", "{binary.yaml}", "{binary.yaml}"], 2, "binary.yaml is not a text (JSON) file"),
    (["compare", "{truncated.json}", "{truncated.json}"], 2, "cannot read report"),
    (["compare", "{sweep.json}", "{sweep.json}"], 2, "expected 'profile'"),
    (["compare", "{malformed.json}", "{malformed.json}"], 2, "not a well-formed 'profile' report"),
    (["list", "--channels", "0"], 2, "--channels must be positive"),
    (["regress", "--baseline", "{binary.yaml}"], 3, "binary.yaml is not a text (JSON) file"),
    (["regress", "--baseline", "{sweep.json}"], 3, "expected 'regress'"),
    (["sweep", "--sizes", "100000x100000", "--no-save"], 2, "its input and output tensors alone need"),
    (["sweep", "--time-budget", "0", "--no-save"], 2, "--time-budget positive"),
    (["sweep", "-u", "carafe", "-o", "bogus=1", "--no-save"], 2, "unknown option 'bogus'"),
    (["sweep", "--memory-budget", "-1G", "--no-save"], 2, "--memory-budget must be a positive size"),
    (["plot", "{binary.yaml}", "-o", "{folder}/figs"], 2, "not a text (JSON) file"),
    (["plot", "{truncated.json}", "-o", "{folder}/figs"], 2, "cannot read report"),
    (["eval", "--predictions", "{truncated-preds.json}", "--ann", "{ann}"], 2, "is not valid JSON"),
    (["eval", "--predictions", "{nan.json}", "--ann", "{ann}"], 2,
     "2 of 3 bbox results are invalid: 1 with a bbox that is not 4 finite numbers (first: record 1); "
     "1 with a bbox with negative width or height (first: record 2)"),
    (["eval", "--predictions", "{unknown-category.json}", "--ann", "{ann}"], 2, "1 with a category_id not in"),
    (["eval", "--predictions", "{unknown-image.json}", "--ann", "{ann}"], 2, "1 with an image_id not in"),
    (["eval", "--ckpt", "{garbage.pth}", "--data", "{coco}"], 2, "cannot read checkpoint"),
    (["eval", "--ckpt", "{evil.pth}", "--data", "{coco}"], 2, "pickled Python objects (posix.system) that were not"),
    (["eval", "--ckpt", "{garbage.pth}", "--data", "{coco}", "--upsampler-option", "k=[1"], 2, "not a YAML scalar"),
]


def _arg(text, files):
    names = {"ann": files / "coco" / "annotations" / "instances_val2017.json", "coco": files / "coco"}
    for path in files.iterdir():
        names[path.name] = path
    for name, path in names.items():
        text = text.replace("{" + name + "}", str(path))
    return text


@pytest.mark.parametrize("args,code,message", CASES, ids=[" ".join(a[:3]) + f" {m[:20]}" for a, _, m in CASES])
def test_one_line_and_the_exit_code(files, args, code, message):
    result = runner.invoke(app, [_arg(a, files) for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output, result.stderr
    assert result.stdout.strip() == ""  # nothing measured, nothing printed
    assert not (files / "pwned").exists()  # no code ran from the refused pickle


def test_empty_predictions_score_with_a_counted_warning(files, tmp_path):
    ann = files / "coco" / "annotations" / "instances_val2017.json"
    result = runner.invoke(app, ["eval", "--predictions", str(files / "empty.json"), "--ann", str(ann),
                                 "--output", str(tmp_path / "r.json")])
    assert result.exit_code == 0 and "holds no results: every AP and AR is 0" in result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_records"] == 0 and any("no results" in w for w in report["warnings"])
