"""Shared helpers of the eval tests: a random-weight detector that does detect something, mmdet-layout
checkpoints, and running ``lda-bench eval`` in-process or under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from lda_bench.data import CocoDetection, preprocess
from lda_bench.data.transforms import collate
from lda_bench.models import ImageMeta, build_model
from lda_bench.models.detector import TwoStageDetector
from lda_bench.models.roi_extractor import bbox2roi

# The synthetic images are 128 x 96; this test scale keeps them at 160 x 120 (padded to 192 x 192),
# so a whole Mask R-CNN runs in well under a second per image on a small CPU.
TEST_IMG_SCALE = "160x128"


def detecting_model(data: CocoDetection, name: str = "mask_rcnn_r50_fpn", upsampler: str = "nearest",
                    num_classes: int = 3, seed: int = 0, proposals: int = 60, **kwargs: Any) -> TwoStageDetector:
    """Random weights, with the classifier made to detect something: plain random weights give
    either no box over the 0.05 score threshold or 100 near-uniform ones.

    The box-head features of a random model barely vary between proposals, so the classifier gets a
    large gain, and the background logit (the last class) is raised until only the best
    ``proposals`` proposals of the first image of ``data`` keep a foreground probability above
    0.05 (a few dozen boxes per image after NMS).
    """
    torch.manual_seed(seed)
    model = build_model(name, upsampler, num_classes=num_classes, **kwargs)
    cls = model.roi_head.bbox_head.fc_cls
    with torch.no_grad():
        cls.weight.mul_(1000.0)
        cls.bias.zero_()
        logits = _proposal_logits(model, data)
        fg = logits[:, :-1].max(dim=1).values
        # p_fg > 0.05 roughly when bg - fg < log(19): keep the per_image-th largest margin
        margin = (fg - logits[:, -1]).sort(descending=True).values
        k = min(proposals, margin.numel()) - 1
        cls.bias[-1] = float(margin[k]) + 2.9
    return model


@torch.no_grad()
def _proposal_logits(model: TwoStageDetector, data: CocoDetection) -> torch.Tensor:
    p = preprocess(data.read_bgr(data.images[0]), (160, 128), 64)
    images, meta = collate([p.image]), ImageMeta(p.ori_shape, p.img_shape, p.pad_shape, p.scale_factor)
    feats = model.extract_feat(images)
    scores, deltas = model.rpn_head(feats)
    proposals = model.rpn_head.proposals(scores, deltas, [meta.img_shape], model.test_cfg.rpn)
    logits, _ = model.roi_head.bbox_head(model.roi_head.bbox_roi_extractor(feats, bbox2roi(proposals)))
    return logits


def mmdet_checkpoint(model: TwoStageDetector, path: Path, meta: dict[str, Any] | None = None,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Save as mmcv 1.x does: ``meta``, ``state_dict`` (no lda-bench metadata) and an optimizer."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state.update(extra or {})
    payload = {
        "meta": meta if meta is not None else {"mmdet_version": "2.25.1", "epoch": 12, "iter": 1},
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.02, "momentum": 0.9, "params": [0, 1]}]},
    }
    torch.save(payload, path)
    return path


REPO = Path(__file__).resolve().parent.parent


def invoke_eval(*args: Any) -> Any:
    """``lda-bench eval ARGS`` through Typer's CliRunner, with one thread like torchrun's workers
    (same kernels, same bits, so the two runs can be compared exactly)."""
    from typer.testing import CliRunner

    from lda_bench.cli import app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return CliRunner().invoke(app, ["eval", *map(str, args)])
    finally:
        torch.set_num_threads(threads)


def torchrun_eval(*args: Any, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node N -m lda_bench eval ARGS`` (gloo on CPU)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", str(nproc), "-m", "lda_bench", "eval", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)


def assert_fails_cleanly(result: Any, code: int, message: str, never_written: Path) -> None:
    """Exit ``code`` with ``message`` on one line, no traceback, and no report written."""
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not never_written.exists()
