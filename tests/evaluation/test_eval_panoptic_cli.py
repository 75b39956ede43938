"""``lda-bench eval`` of a Panoptic FPN checkpoint on a synthetic COCO-panoptic: a random-weight
model with LDA-AQU saved in mmdet's layout, its task and model read from the keys, one process and
two torchrun/gloo processes giving the same numbers and files; scoring the saved predictions; errors."""

import json

import pytest
import torch
from eval_helpers import assert_fails_cleanly, invoke_eval, mmdet_checkpoint, torchrun_eval
from panoptic_helpers import detecting_panoptic_model

from lda_bench.core.reports import load_report
from lda_bench.data.coco_panoptic import open_coco_panoptic
from lda_bench.data.synthetic_panoptic import write_synthetic_coco_panoptic

SCALE = "128x96"  # keeps the synthetic 128 x 96 images as they are
META = {"config": "model = dict(type='PanopticFPN')\ntest_pipeline = [dict(type='Pad', size_divisor=32)]",
        "CLASSES": ("person", "car", "banner", "tree")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("paneval")
    write_synthetic_coco_panoptic(root / "coco", num_images=3)
    model = detecting_panoptic_model(open_coco_panoptic(root / "coco"), "lda_aqu")
    return root, mmdet_checkpoint(model, root / "panoptic_fpn_lau.pth", meta=META)


@pytest.fixture(scope="module")
def single_run(setup):
    root, ckpt = setup
    result = invoke_eval("--ckpt", ckpt, "--data", root / "coco", "--img-scale", SCALE, "--device", "cpu",
                    "--output", root / "single.json", "--save-predictions", root / "single", "--no-progress")
    assert result.exit_code == 0, result.output
    return result, load_report(root / "single.json", kind="eval")


def test_single_process_report(setup, single_run):
    root, _ = setup
    result, report = single_run
    assert "PQ" in result.output and "Things" in result.output and "Stuff" in result.output
    model = report["model"]
    assert (model["model"], model["upsampler"], model["neck"]) == ("panoptic_fpn_r50", "lda_aqu", "fpn")
    assert model["sources"]["model"] == "checkpoint keys" and model["num_stuff_classes"] == 2
    assert report["settings"]["tasks"] == ["panoptic"] and report["settings"]["size_divisor"] == 32
    assert report["settings"]["test_cfg"]["panoptic"]["score_thr"] == 0.6
    metrics = report["metrics"]["panoptic"]
    assert set(metrics) == {"PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"}
    assert 0.0 <= metrics["PQ"] < 100.0
    assert set(report["per_class"]["panoptic"]) == {"person", "car", "banner", "tree"}
    assert report["num_images_scored"] == 3 and {"schema_version", "env", "command"} <= set(report)
    pred = json.loads((root / "single.panoptic.json").read_text())
    assert [a["file_name"] for a in pred["annotations"]] == [f"{2000 + 11 * i:012d}.png" for i in range(3)]
    assert any(s["isthing"] for a in pred["annotations"] for s in a["segments_info"])
    assert len(list((root / "single.panoptic").iterdir())) == 3


def test_torchrun_two_gloo_processes_give_the_same_numbers(setup, single_run):
    root, ckpt = setup
    _, single = single_run
    proc = torchrun_eval("--ckpt", ckpt, "--data", root / "coco", "--img-scale", SCALE, "--device", "cpu",
                         "--output", root / "dist.json", "--save-predictions", root / "dist", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = load_report(root / "dist.json", kind="eval")
    assert dist["settings"]["world_size"] == 2
    assert dist["metrics"] == single["metrics"] and dist["per_class"] == single["per_class"]
    assert (root / "dist.panoptic.json").read_text() == (root / "single.panoptic.json").read_text()
    for png in (root / "single.panoptic").iterdir():
        assert (root / "dist.panoptic" / png.name).read_bytes() == png.read_bytes()


def test_scoring_the_saved_predictions(setup, single_run):
    root, _ = setup
    _, single = single_run
    result = invoke_eval("--predictions", root / "single.panoptic.json",
                    "--ann", root / "coco/annotations/panoptic_val2017.json", "--output", root / "scored.json")
    assert result.exit_code == 0, result.output
    scored = load_report(root / "scored.json", kind="eval")
    assert scored["mode"] == "score" and scored["metrics"] == single["metrics"]


def test_limit_and_explicit_task(setup):
    root, ckpt = setup
    result = invoke_eval("--ckpt", ckpt, "--data", root / "coco", "--img-scale", SCALE, "--limit", "1", "--task",
                    "panoptic", "--output", root / "limited.json", "--no-progress")
    assert result.exit_code == 0, result.output
    assert load_report(root / "limited.json")["num_images_scored"] == 1


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--data", "{root}/missing"], 2, "data folder"),
        (["--data", "{root}/coco", "--split", "train2017"], 2, "panoptic_train2017.json"),
        (["--data", "{root}/coco", "--task", "bbox"], 2, "cannot be scored on bbox"),
        (["--data", "{root}/coco", "--task", "panoptic,bbox"], 2, "on their own"),
        (["--data", "{root}/coco", "--mode", "slide"], 2, "only apply to sem_seg"),
        (["--data", "{root}/coco", "--model", "mask_rcnn_r50_fpn"], 1, "holds a panoptic_fpn_r50 state dict"),
        (["--data", "{root}/coco", "--upsampler", "carafe"], 1, "does not fit the model"),
    ],
)
def test_errors_and_exit_codes(setup, args, code, message):
    root, ckpt = setup
    args = [a.format(root=root) for a in args]
    result = invoke_eval("--ckpt", ckpt, *args, "--img-scale", SCALE, "--no-progress", "--output", root / "never.json")
    assert_fails_cleanly(result, code, message, root / "never.json")


def test_class_count_mismatch_is_an_error(setup, tmp_path):
    root, _ = setup
    model = detecting_panoptic_model(open_coco_panoptic(root / "coco"), proposals=2)
    state = {k: v for k, v in model.state_dict().items()}
    state["semantic_head.conv_logits.weight"] = torch.zeros(5, 128, 1, 1)  # 4 stuff classes + things
    state["semantic_head.conv_logits.bias"] = torch.zeros(5)
    ckpt = tmp_path / "wrong.pth"
    torch.save({"meta": {}, "state_dict": state}, ckpt)
    result = invoke_eval("--ckpt", ckpt, "--data", root / "coco", "--img-scale", SCALE, "--no-progress",
                    "--output", tmp_path / "r.json")
    assert result.exit_code == 1 and "2 thing + 4 stuff classes" in result.output
