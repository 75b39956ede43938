"""``lda-bench eval``: evaluate a checkpoint (COCO box/mask AP, COCO-panoptic PQ, ADE20K mIoU), or
score a results file, and write a report.

The checkpoint is read first: its model decides the task when ``--task`` is not given (bbox+segm
for Mask R-CNN, panoptic for Panoptic FPN, sem_seg for SegFormer) and with it the dataset layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

import upsamplers
from lda_bench.core.environment import report_header
from lda_bench.core.errors import UsageError
from lda_bench.core.options import parse_options, split_list
from lda_bench.data.ade20k import ADE20KDataset
from lda_bench.data.coco import CocoDetection, load_coco_api
from lda_bench.data.coco_panoptic import open_coco_panoptic
from lda_bench.data.errors import DataError
from lda_bench.metrics.coco import IOU_TYPES, MetricsError, check_results
from lda_bench.metrics.panoptic import PanopticFormatError, evaluate_panoptic_files
from lda_bench.models import get_model_spec, model_names
from lda_bench.models.checkpoints import (
    CheckpointError,
    UnreadableCheckpointError,
    build_from_checkpoint,
    load_checkpoint,
    resolve_model_config,
)
from lda_bench.models.introspect import ModelInferenceError

from . import distributed
from .coco_run import run_coco, score_into
from .common import (
    EvalRequest,
    agree,
    check_output,
    finish_report,
    parse_img_scale,
    parse_size_pair,
    process_device,
)
from .panoptic import panoptic_metrics, run_panoptic
from .sem_seg import run_sem_seg

TASKS = (*IOU_TYPES, "panoptic", "sem_seg")
DEFAULT_SPLIT = {"detector": "val2017", "panoptic": "val2017", "segformer": "validation"}
SEM_SEG_ONLY = ("--mode", "--aligned-resize", "--crop-size", "--stride")


def parse_tasks(tasks: str | Sequence[str] | None) -> list[str] | None:
    """``"bbox,segm"`` -> ["bbox", "segm"]; panoptic and sem_seg stand alone."""
    if tasks is None:
        return None
    items = split_list(tasks) or []
    bad = [t for t in items if t not in TASKS]
    if bad or not items:
        raise UsageError(f"--task must be bbox, segm, bbox,segm, panoptic or sem_seg, got {tasks!r}")
    items = list(dict.fromkeys(items))
    if len(items) > 1 and not set(items) <= set(IOU_TYPES):
        raise UsageError(f"--task {','.join(items)}: panoptic and sem_seg are evaluated on their own")
    return items


def score_predictions(
    predictions: str | Path,
    ann: str | Path,
    tasks: str | Sequence[str] | None = None,
    output: str | Path | None = None,
    force: bool = False,
    write: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Score a results file (no model involved): a COCO results JSON (bbox / segm) against an
    instances JSON, or a COCO-panoptic prediction JSON (its PNGs in the folder of the same name)
    against a panoptic JSON (its PNGs likewise)."""
    predictions, ann = Path(predictions), Path(ann)
    task_list = parse_tasks(tasks)
    check_output(output, force)
    if not predictions.is_file():
        raise UsageError(f"predictions file {predictions} does not exist")
    try:
        records = json.loads(predictions.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{predictions} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {predictions}: {exc.strerror or exc}") from None
    panoptic = task_list == ["panoptic"] or (task_list is None and isinstance(records, dict) and "annotations" in records)
    if task_list == ["sem_seg"]:
        raise UsageError("--predictions scores COCO (bbox, segm) and COCO-panoptic results; not sem_seg")
    report = report_header("eval", "cpu", command)
    report["mode"] = "score"
    report["predictions"] = str(predictions)
    report["annotations"] = str(ann)
    if panoptic:
        _score_panoptic_files(report, predictions, ann)
        return finish_report(report, output, force, predictions.stem, write)
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UsageError(f"{predictions} must hold a JSON list of COCO result records (or a panoptic JSON)")
    if task_list is None:
        task_list = ["segm"] if records and "segmentation" in records[0] else ["bbox"]
    try:
        gt = load_coco_api(ann)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    warnings = []
    for task in task_list:
        try:
            warnings += check_results(gt, records, task, str(predictions))
        except MetricsError as exc:
            raise UsageError(str(exc)) from None
    report["warnings"] = list(dict.fromkeys(warnings))
    report["num_records"] = len(records)
    score_into(report, gt, {t: records for t in task_list}, None)
    return finish_report(report, output, force, predictions.stem, write)


def _score_panoptic_files(report: dict[str, Any], predictions: Path, ann: Path) -> None:
    if not ann.is_file():
        raise UsageError(f"annotation file {ann} does not exist")
    try:
        summary = evaluate_panoptic_files(ann, predictions)
    except FileNotFoundError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    except (PanopticFormatError, KeyError, ValueError, TypeError, OSError) as exc:
        raise UsageError(f"cannot score {predictions}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    report.update(panoptic_metrics(summary))


def evaluate(
    ckpt: str | Path | None = None,
    data: str | Path | None = None,
    split: str | None = None,
    tasks: str | Sequence[str] | None = None,
    limit: int | None = None,
    batch: int = 1,
    device: str = "auto",
    output: str | Path | None = None,
    force: bool = False,
    model: str | None = None,
    upsampler: str | None = None,
    upsampler_options: Sequence[str] | Mapping[str, Any] | None = None,
    trust_checkpoint: bool = False,
    predictions: str | Path | None = None,
    ann: str | Path | None = None,
    img_scale: str | Sequence[int] | None = None,
    size_divisor: int | None = None,
    save_predictions: str | Path | None = None,
    progress: bool = True,
    write: bool = True,
    command: str | None = None,
    mode: str = "whole",
    aligned_resize: bool = False,
    crop_size: str | Sequence[int] | None = None,
    stride: str | Sequence[int] | None = None,
) -> dict[str, Any] | None:
    """Evaluate ``ckpt`` on the dataset under ``data`` (or, with ``predictions`` + ``ann``, only
    score a results file). Returns the report on the main process and None on the others.

    The task follows the checkpoint's model unless ``tasks`` is given: COCO bbox/segm
    (``data`` = COCO root), ``panoptic`` (COCO root with the panoptic annotations) or
    ``sem_seg`` (ADE20K; ``mode``, ``aligned_resize``, ``crop_size`` and ``stride`` choose the
    test protocol). ``split`` and ``img_scale`` default to the task's (val2017 / validation;
    1333x800 / 2048x512). Under torchrun the images are split over the processes by batch and
    combined on rank 0, which gives the same numbers as one process. The report (and prediction
    files) are written atomically, only when the run completes.
    """
    if predictions is not None:
        if ckpt is not None or data is not None:
            raise UsageError("--predictions only scores a results file; do not combine it with --ckpt/--data")
        if ann is None:
            raise UsageError("--predictions needs --ann ANNOTATIONS.json")
        return score_predictions(predictions, ann, tasks, output, force, write, command)
    if ckpt is None or data is None:
        raise UsageError("give --ckpt and --data (or --predictions with --ann)")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be >= 1, got {limit}")
    if batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    if size_divisor is not None and size_divisor < 1:
        raise UsageError(f"--size-divisor must be >= 1, got {size_divisor}")
    if model is not None and model not in model_names():
        raise UsageError(f"unknown model {model!r}; available: {', '.join(model_names())}")
    if upsampler is not None:
        try:
            upsamplers.get_spec(upsampler)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if mode not in ("whole", "slide"):
        raise UsageError(f"--mode must be whole or slide, got {mode!r}")
    request = EvalRequest(
        ckpt=Path(ckpt), data=Path(data), split=split, tasks=parse_tasks(tasks), limit=limit, batch=batch,
        device=device, output=output, force=force, model=model, upsampler=upsampler,
        upsampler_options=parse_options(upsampler_options, "--upsampler-option") or None, trust_checkpoint=trust_checkpoint,
        ann=None if ann is None else Path(ann), img_scale=None if img_scale is None else parse_img_scale(img_scale),
        size_divisor=size_divisor, save_predictions=save_predictions, progress=progress, write=write,
        command=command, mode=mode, aligned_resize=aligned_resize,
        crop_size=parse_size_pair(crop_size, "--crop-size", "512x512"),
        stride=parse_size_pair(stride, "--stride", "341x341"),
    )
    if model is not None and request.tasks is not None:
        _check_tasks(model, request.tasks)
    check_output(output, force)
    if not request.ckpt.is_file():
        raise UsageError(f"checkpoint {request.ckpt} does not exist")
    torch_device = process_device(device)

    ctx = distributed.init_distributed(torch_device.type)
    try:
        return _evaluate_checkpoint(ctx, request, process_device(device, ctx))
    finally:
        distributed.cleanup(ctx)


def _check_tasks(model: str, tasks: Sequence[str]) -> None:
    spec = get_model_spec(model)
    unsupported = [t for t in tasks if t not in spec.tasks]
    if unsupported:
        raise UsageError(f"{model} cannot be scored on {', '.join(unsupported)} (it gives {', '.join(spec.tasks)})")


def _check_family_options(family: str, request: EvalRequest) -> None:
    """Options that only one kind of evaluation takes: a usage error elsewhere."""
    seg_only = [name for name, used in zip(SEM_SEG_ONLY, (request.mode != "whole", request.aligned_resize,
                                                          request.crop_size is not None, request.stride is not None))
                if used]
    if family != "segformer" and seg_only:
        raise UsageError(f"{', '.join(seg_only)} only apply to sem_seg (ADE20K) evaluation")
    if family == "segformer":
        if request.batch != 1:
            raise UsageError("sem_seg evaluates one image at a time (mmseg's test setting); leave --batch at 1")
        for name, value in (("--size-divisor", request.size_divisor), ("--ann", request.ann),
                            ("--save-predictions", request.save_predictions)):
            if value is not None:
                raise UsageError(f"{name} does not apply to sem_seg evaluation")


def _open_dataset(family: str, request: EvalRequest) -> Any:
    split = request.split or DEFAULT_SPLIT[family]
    try:
        if family == "panoptic":
            return open_coco_panoptic(request.data, split, request.ann)
        if family == "segformer":
            if not request.data.is_dir():
                raise DataError(f"data folder {request.data} does not exist (expected ADEChallengeData2016)")
            try:
                return ADE20KDataset(request.data, split)
            except (FileNotFoundError, ValueError) as exc:
                raise DataError(str(exc).splitlines()[0]) from None
        return CocoDetection(request.data, split, request.ann)
    except DataError as exc:
        raise UsageError(str(exc)) from None


def _evaluate_checkpoint(ctx: distributed.DistContext, request: EvalRequest,
                         device: torch.device) -> dict[str, Any] | None:
    error, checkpoint, config = None, None, None
    try:
        checkpoint = load_checkpoint(request.ckpt, trust=request.trust_checkpoint)
    except UnreadableCheckpointError as exc:  # not a checkpoint, or one refused: the request is wrong
        error = str(exc)
    agree(error, ctx, usage=True)
    try:
        config = resolve_model_config(checkpoint, request.model, request.upsampler, request.upsampler_options,
                                      request.size_divisor)
    except (CheckpointError, ModelInferenceError) as exc:
        error = str(exc)
    except ValueError as exc:  # unknown names or options coming from the checkpoint's metadata
        error = f"cannot build the model for {request.ckpt}: {exc}"
    agree(error, ctx)
    assert checkpoint is not None and config is not None
    spec = get_model_spec(config.model)
    tasks = request.tasks or list(spec.tasks)
    _check_tasks(config.model, tasks)
    _check_family_options(spec.family, request)
    dataset = _open_dataset(spec.family, request)

    error, model, keys = None, None, None
    try:
        model, keys = build_from_checkpoint(checkpoint, config)
    except CheckpointError as exc:
        error = str(exc)
    except ValueError as exc:
        error = f"cannot build the model for {request.ckpt}: {exc}"
    agree(error, ctx)
    runner = {"detector": run_coco, "panoptic": run_panoptic, "segformer": run_sem_seg}[spec.family]
    return runner(ctx, request, device, checkpoint, config, model.to(device), keys, dataset, tasks)
