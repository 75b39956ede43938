"""COCO box / mask AP of a detector checkpoint: shard by batch, gather the results records on
rank 0, score them with pycocotools."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from lda_bench.core.reports import write_json
from lda_bench.data.coco import CocoDetection
from lda_bench.data.transforms import DEFAULT_SCALE
from lda_bench.metrics.coco import MetricsError, coco_evaluate
from lda_bench.models.detector import TwoStageDetector

from . import distributed
from .common import (
    EvalError,
    EvalRequest,
    check_output,
    finish_report,
    image_count,
    in_dataset_order,
    run_sharded,
    start_report,
    timing_section,
)
from .inference import ImageResult, run_batches


def score_into(report: dict[str, Any], gt: Any, results: Mapping[str, list[dict[str, Any]]],
               img_ids: Sequence[int] | None) -> None:
    """pycocotools scores of ``results`` (task -> records) into ``report``."""
    report.setdefault("metrics", {})
    report.setdefault("stats", {})
    report.setdefault("num_results", {})
    for task, records in results.items():
        try:
            scored = coco_evaluate(gt, records, task, img_ids)
        except MetricsError as exc:
            raise EvalError(str(exc)) from None
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise EvalError(f"pycocotools could not score the {task} results: {type(exc).__name__}: {exc}") from None
        report["metrics"][task] = scored["metrics"]
        report["stats"][task] = scored["stats"]
        report["num_results"][task] = scored["num_results"]
        report["num_images_scored"] = scored["num_images"]


def run_coco(
    ctx: distributed.DistContext, request: EvalRequest, device: torch.device, checkpoint: Any, config: Any,
    detector: TwoStageDetector, keys: Any, dataset: CocoDetection, tasks: list[str],
) -> dict[str, Any] | None:
    if config.num_classes != len(dataset.cat_ids):
        raise EvalError(
            f"the checkpoint predicts {config.num_classes} classes but {dataset.ann_file} has "
            f"{len(dataset.cat_ids)} categories"
        )
    save = request.save_predictions
    prediction_files = {} if save is None else {t: Path(f"{save}.{t}.json") for t in tasks}
    for path in prediction_files.values():
        check_output(path, request.force, "--save-predictions")
    warnings = []
    names = checkpoint.class_names
    if names is not None and list(names) != dataset.class_names:
        warnings.append("the checkpoint's class names differ from the annotation's categories; labels are "
                        "mapped by position (label i -> i-th category of the annotation file)")

    scale = request.img_scale or DEFAULT_SCALE
    count = image_count(request.limit, len(dataset))

    def run(batches: list[list[int]], advance: Callable[[int], None]) -> list[ImageResult]:
        return run_batches(detector, dataset, batches, device, scale, config.size_divisor, "segm" in tasks, advance)

    gathered = run_sharded(ctx, request, config, count, request.batch, run)
    if gathered is None:
        return None
    parts, seconds = gathered
    merged = in_dataset_order(parts)
    per_task = {t: [rec for r in merged for rec in getattr(r, t)] for t in tasks}

    report = start_report(request, device, checkpoint, config, detector, keys)
    report["dataset"] = {"root": str(dataset.root), "split": dataset.split, "ann_file": str(dataset.ann_file),
                         "num_images": count, "images_in_split": len(dataset), "limit": request.limit}
    report["settings"] = {
        "tasks": tasks, "img_scale": list(scale), "size_divisor": config.size_divisor, "batch": request.batch,
        "device": str(device), "world_size": ctx.world_size,
        "test_cfg": {"rpn": vars(detector.test_cfg.rpn), "rcnn": vars(detector.test_cfg.rcnn)},
    }
    report["timing"] = timing_section(count, seconds)
    report["warnings"] = warnings
    if prediction_files:
        report["predictions"] = {t: str(write_json(per_task[t], p, request.force))
                                 for t, p in prediction_files.items()}
    img_ids = [r.image_id for r in dataset.images[:count]]
    score_into(report, dataset.coco, per_task, img_ids)
    return finish_report(report, request.output, request.force, f"{config.model}-{config.upsampler}", request.write)
