"""``lda-bench eval`` end to end on a synthetic COCO: a random-weight Mask R-CNN with LDA-AQU saved
in mmdet's layout, one process and two torchrun/gloo processes giving the same numbers; scoring a
results file; the errors and exit codes."""

import json

import pytest
import torch
from eval_helpers import (
    TEST_IMG_SCALE,
    assert_fails_cleanly,
    detecting_model,
    invoke_eval,
    mmdet_checkpoint,
    torchrun_eval,
)

from lda_bench.core.reports import load_report
from lda_bench.data import CocoDetection
from lda_bench.data.synthetic import write_synthetic_coco
from lda_bench.metrics import STAT_NAMES

LAU_META = {"config": "neck=dict(type='FPN_LAU', upsample_cfg=dict(type='lda_aqu', range_factor=11))\n"
                      "test_pipeline=[dict(type='Pad', size_divisor=64)]", "CLASSES": ("square", "triangle", "bar")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_synthetic_coco(root / "coco", num_images=4)
    model = detecting_model(CocoDetection(root / "coco"), "mask_rcnn_r50_fpn", "lda_aqu")
    extra = {f"neck.upsample_modules.{i}.base_offset": torch.zeros(1, 18, 1, 1) for i in range(4)}
    ckpt = mmdet_checkpoint(model, root / "mask_rcnn_lau.pth", meta=LAU_META, extra=extra)
    return root, ckpt


@pytest.fixture(scope="module")
def single_run(setup):
    root, ckpt = setup
    result = invoke_eval("--ckpt", ckpt, "--data", root / "coco", "--img-scale", TEST_IMG_SCALE, "--device", "cpu",
                    "--output", root / "single.json", "--save-predictions", root / "single", "--no-progress")
    assert result.exit_code == 0, result.output
    return result, load_report(root / "single.json", kind="eval")


def test_single_process_report(setup, single_run):
    root, ckpt = setup
    result, report = single_run
    assert "AP50" in result.output and "bbox" in result.output and "segm" in result.output
    assert report["model"]["model"] == "mask_rcnn_r50_fpn" and report["model"]["upsampler"] == "lda_aqu"
    assert report["model"]["sources"]["upsampler"] == "checkpoint keys"
    assert report["checkpoint"]["format"] == "mmdet2" and report["checkpoint"]["weights_only"]
    assert len(report["checkpoint"]["ignored_keys"]) == 4  # the base_offset buffers, listed
    assert report["settings"]["size_divisor"] == 64 and report["settings"]["img_scale"] == [160, 128]
    assert report["settings"]["world_size"] == 1 and report["dataset"]["num_images"] == 4
    for task in ("bbox", "segm"):
        assert list(report["metrics"][task]) == list(STAT_NAMES)
        assert len(report["stats"][task]) == 12
    assert report["num_results"]["bbox"] > 0
    assert report["num_results"]["bbox"] == report["num_results"]["segm"]
    assert {"schema_version", "env", "command", "git", "created"} <= set(report)
    segm = json.loads((root / "single.segm.json").read_text())
    assert segm and "bbox" not in segm[0] and isinstance(segm[0]["segmentation"]["counts"], str)


def test_torchrun_two_gloo_processes_give_the_same_numbers(setup, single_run):
    root, ckpt = setup
    _, single = single_run
    proc = torchrun_eval("--ckpt", ckpt, "--data", root / "coco", "--img-scale", TEST_IMG_SCALE, "--device", "cpu",
                         "--output", root / "dist.json", "--save-predictions", root / "dist", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = load_report(root / "dist.json", kind="eval")
    assert dist["settings"]["world_size"] == 2
    assert dist["stats"] == single["stats"]
    assert dist["metrics"] == single["metrics"]
    for task in ("bbox", "segm"):
        assert (root / f"dist.{task}.json").read_text() == (root / f"single.{task}.json").read_text()


def test_scoring_a_results_file_only(setup, single_run):
    root, _ = setup
    _, single = single_run
    result = invoke_eval("--predictions", root / "single.segm.json", "--ann", root / "coco/annotations/instances_val2017.json",
                    "--output", root / "scored.json")
    assert result.exit_code == 0, result.output
    scored = load_report(root / "scored.json", kind="eval")
    assert scored["mode"] == "score" and list(scored["metrics"]) == ["segm"]
    assert scored["stats"]["segm"] == single["stats"]["segm"]


def test_limit_batch_and_task(setup):
    root, ckpt = setup
    result = invoke_eval("--ckpt", ckpt, "--data", root / "coco", "--img-scale", TEST_IMG_SCALE, "--limit", "2",
                    "--batch", "2", "--task", "bbox", "--output", root / "limited.json", "--no-progress")
    assert result.exit_code == 0, result.output
    report = load_report(root / "limited.json")
    assert list(report["metrics"]) == ["bbox"] and report["num_images_scored"] == 2


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--data", "{root}/missing"], 2, "data folder"),
        (["--data", "{root}"], 2, "annotations/instances_val2017.json"),
        (["--data", "{root}/coco", "--split", "train2017"], 2, "instances_train2017.json"),
        (["--data", "{root}/coco", "--model", "retinanet"], 2, "unknown model 'retinanet'"),
        (["--data", "{root}/coco", "--upsampler", "lda-aqu"], 2, "unknown upsampler 'lda-aqu'"),
        (["--data", "{root}/coco", "--task", "keypoints"], 2, "--task must be"),
        (["--data", "{root}/coco", "--img-scale", "big"], 2, "--img-scale"),
        (["--data", "{root}/coco", "--output", "{ckpt}"], 2, "exists; pass --force"),
        (["--data", "{root}/coco", "--device", "tpu"], 2, "--device"),
        (["--data", "{root}/coco", "--upsampler", "carafe"], 1, "does not fit the model"),
    ],
)
def test_errors_and_exit_codes(setup, args, code, message):
    root, ckpt = setup
    args = [a.format(root=root, ckpt=ckpt) for a in args]
    result = invoke_eval("--ckpt", ckpt, *args, "--no-progress", "--output", root / "never.json") if "--output" not in args \
        else invoke_eval("--ckpt", ckpt, *args, "--no-progress")
    assert_fails_cleanly(result, code, message, root / "never.json")


def test_missing_checkpoint_and_predictions_usage(setup):
    root, _ = setup
    result = invoke_eval("--ckpt", root / "nope.pth", "--data", root / "coco")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke_eval("--predictions", root / "single.segm.json")
    assert result.exit_code == 2 and "--ann" in result.output
    result = invoke_eval()
    assert result.exit_code == 2 and "--ckpt and --data" in result.output


def test_untrusted_checkpoint_is_refused_with_one_line_and_exit_2(setup, tmp_path):
    root, ckpt = setup
    payload = torch.load(ckpt, weights_only=True)
    payload["meta"]["when"] = __import__("datetime").date(2024, 1, 1)  # a pickled Python object
    bad = tmp_path / "untrusted.pth"
    torch.save(payload, bad)
    result = invoke_eval("--ckpt", bad, "--data", root / "coco", "--no-progress", "--output", tmp_path / "r.json")
    assert result.exit_code == 2 and "--trust-checkpoint" in result.output  # a wrong request: exit 2
    assert "pickled Python objects (datetime.date) that were not loaded" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Warning" not in result.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("mask_head,shown", [("carafe", True), ("deconv", False), (None, False)])
def test_table_title_names_a_carafe_mask_head(mask_head, shown):
    from lda_bench.evaluation.render import metrics_table

    model = {"model": "mask_rcnn_r50_fpn", "upsampler": "carafe"}
    if mask_head is not None:
        model["mask_head_upsampler"] = mask_head
    report = {"model": model, "dataset": {"split": "val2017", "num_images": 5},
              "metrics": {"bbox": {"AP": 40.0}}}
    title = metrics_table(report).title
    assert title.startswith("mask_rcnn_r50_fpn + carafe") and ("(CARAFE mask head)" in title) is shown
