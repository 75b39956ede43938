"""``lda-bench eval`` of a SegFormer-B1 checkpoint on a synthetic ADE20K: random weights with LDA-AQU
in the decode head, saved in mmseg's layout; model, upsampler and task read from the keys; one
process and two torchrun/gloo processes giving the same numbers; the sliding-window and
AlignedResize protocols; errors and exit codes."""

import pytest
import torch
from eval_helpers import assert_fails_cleanly, invoke_eval, torchrun_eval
from synthetic_seg import make_ade20k

from lda_bench.core.reports import load_report
from lda_bench.data.ade20k import ADE20K_CLASSES
from lda_bench.models import build_model

SCALE = "64x32"  # tiny images stay tiny (mmseg's 2048x512 would blow them up to 512 rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("semeval")
    make_ade20k(root / "ade", sizes=((40, 56), (48, 48), (36, 60)))
    torch.manual_seed(0)
    model = build_model("segformer_b1", "lda_aqu")
    payload = {"meta": {"CLASSES": ADE20K_CLASSES, "mmseg_version": "0.30.0"},
               "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    torch.save(payload, root / "segformer_b1_lau.pth")
    return root, root / "segformer_b1_lau.pth"


@pytest.fixture(scope="module")
def single_run(setup):
    root, ckpt = setup
    result = invoke_eval("--ckpt", ckpt, "--data", root / "ade", "--img-scale", SCALE, "--device", "cpu",
                    "--output", root / "single.json", "--no-progress")
    assert result.exit_code == 0, result.output
    return result, load_report(root / "single.json", kind="eval")


def test_single_process_report(single_run):
    result, report = single_run
    assert "mIoU" in result.output and "aAcc" in result.output
    model = report["model"]
    assert (model["model"], model["upsampler"], model["neck"]) == ("segformer_b1", "lda_aqu", None)
    assert model["sources"]["upsampler"] == "checkpoint keys" and model["num_classes"] == 150
    assert model["upsampler_options"]["n_groups"] == 2
    assert report["checkpoint"]["format"] == "mmdet2" and report["checkpoint"]["weights_only"]
    settings = report["settings"]
    assert settings["tasks"] == ["sem_seg"] and settings["protocol"]["mode"] == "whole"
    assert settings["protocol"]["transform"].startswith("Resize,")
    assert set(report["metrics"]["sem_seg"]) == {"aAcc", "mIoU", "mAcc"}
    assert 0.0 <= report["metrics"]["sem_seg"]["mIoU"] <= 100.0
    assert len(report["per_class"]["sem_seg"]) == 150 and report["num_images_scored"] == 3
    assert report["dataset"]["split"] == "validation"


def test_torchrun_two_gloo_processes_give_the_same_numbers(setup, single_run):
    root, ckpt = setup
    _, single = single_run
    proc = torchrun_eval("--ckpt", ckpt, "--data", root / "ade", "--img-scale", SCALE, "--device", "cpu",
                         "--output", root / "dist.json", "--no-progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = load_report(root / "dist.json", kind="eval")
    assert dist["settings"]["world_size"] == 2
    assert dist["metrics"] == single["metrics"] and dist["per_class"] == single["per_class"]


def test_slide_and_aligned_resize(setup):
    root, ckpt = setup
    result = invoke_eval("--ckpt", ckpt, "--data", root / "ade/ADEChallengeData2016", "--img-scale", SCALE,
                    "--mode", "slide", "--crop-size", "32x32", "--stride", "21x21", "--aligned-resize",
                    "--limit", "2", "--output", root / "slide.json", "--no-progress")
    assert result.exit_code == 0, result.output
    report = load_report(root / "slide.json")
    protocol = report["settings"]["protocol"]
    assert protocol["mode"] == "slide" and protocol["crop_size"] == [32, 32] and protocol["stride"] == [21, 21]
    assert protocol["transform"].startswith("AlignedResize(size_divisor=32)")
    assert report["num_images_scored"] == 2


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--data", "{root}/missing"], 2, "does not exist"),
        (["--data", "{root}"], 2, "ADEChallengeData2016 layout"),
        (["--data", "{root}/ade", "--split", "training"], 2, "images/training"),
        (["--data", "{root}/ade", "--task", "panoptic"], 2, "cannot be scored on panoptic"),
        (["--data", "{root}/ade", "--batch", "2"], 2, "one image at a time"),
        (["--data", "{root}/ade", "--size-divisor", "32"], 2, "--size-divisor does not apply"),
        (["--data", "{root}/ade", "--save-predictions", "{root}/p"], 2, "--save-predictions does not apply"),
        (["--data", "{root}/ade", "--mode", "tiles"], 2, "--mode must be whole or slide"),
        (["--data", "{root}/ade", "--crop-size", "big"], 2, "--crop-size must look like 512x512"),
        (["--data", "{root}/ade", "--model", "retinanet"], 2, "unknown model 'retinanet'"),
        (["--data", "{root}/ade", "--upsampler", "carafe"], 1, "does not fit the model"),
    ],
)
def test_errors_and_exit_codes(setup, args, code, message):
    root, ckpt = setup
    args = [a.format(root=root) for a in args]
    result = invoke_eval("--ckpt", ckpt, *args, "--img-scale", SCALE, "--no-progress", "--output", root / "never.json")
    assert_fails_cleanly(result, code, message, root / "never.json")
