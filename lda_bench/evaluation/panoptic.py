"""COCO-panoptic PQ of a Panoptic FPN checkpoint.

Per image (on the process that owns its batch): mmdet's preprocessing, ``predict_panoptic``
(detections, masks, semantic logits, heuristic fusion), ``pan_to_segments`` (mmdet's
``_pan2json``), optionally the PNG, and the image's PQ numbers against its ground-truth PNG. Rank 0
adds the per-image numbers in dataset order, so one process and N processes give the same
floating-point sums, and writes the prediction JSON (panopticapi format) in dataset order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lda_bench.core.errors import UsageError
from lda_bench.core.reports import write_json
from lda_bench.data.coco_panoptic import CocoPanoptic, pan_to_segments, write_id_png
from lda_bench.data.transforms import DEFAULT_SCALE
from lda_bench.metrics.panoptic import ImageStats, PQAccumulator
from lda_bench.models.panoptic_fpn import PanopticFPN

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
from .inference import prepare_batch

METRIC_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


@dataclass
class PanopticImageResult:
    index: int  # position in the dataset, to restore the order after gathering
    image_id: int
    file_name: str  # the prediction PNG's name (the ground truth's)
    segments_info: list[dict[str, Any]]
    stats: ImageStats


def run_panoptic_batches(
    model: PanopticFPN,
    dataset: CocoPanoptic,
    batches: Sequence[Sequence[int]],
    device: torch.device,
    img_scale: tuple[int, int],
    size_divisor: int,
    png_folder: Path | None = None,
    on_image: Callable[[int], None] | None = None,
) -> list[PanopticImageResult]:
    """Predict and score the given batches of dataset indices; PNGs go to ``png_folder`` if given."""
    scorer = PQAccumulator(dataset.categories_json)  # only its per-image scoring is used here
    if png_folder is not None:
        png_folder.mkdir(parents=True, exist_ok=True)
    results = []
    for batch in batches:
        images, metas = prepare_batch([dataset.read_bgr(i) for i in batch], img_scale, size_divisor, device)
        for index, pan in zip(batch, model.predict_panoptic(images, metas)):
            record = dataset[index]
            ids, segments = pan_to_segments(pan.cpu().numpy(), dataset.categories)
            if png_folder is not None:
                write_id_png(png_folder / record.segm_file, ids)
            stats = scorer.image_stats(dataset.load_panoptic(index), record.segments_info, ids, segments,
                                       record.image_id)
            results.append(PanopticImageResult(index, record.image_id, record.segm_file, segments, stats))
        if on_image is not None:
            on_image(len(batch))
    return results


def panoptic_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The report's panoptic sections from a :meth:`PQAccumulator.summary`."""
    return {
        "metrics": {"panoptic": {k: summary[k] for k in METRIC_KEYS}},
        "per_class": {"panoptic": summary["per_class"]},
        "num_categories": {"panoptic": summary["num_categories"]},
        "num_images_scored": summary["num_images"],
    }


def _prediction_paths(prefix: str | Path | None, force: bool) -> tuple[Path, Path] | tuple[None, None]:
    """``PREFIX.panoptic.json`` and its PNG folder ``PREFIX.panoptic/`` (panopticapi's pairing)."""
    if prefix is None:
        return None, None
    json_file = Path(f"{prefix}.panoptic.json")
    folder = json_file.with_suffix("")
    check_output(json_file, force, "--save-predictions")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise UsageError(f"{folder} is not empty; pass --force to write the prediction PNGs into it")
    return json_file, folder


def _check_classes(model: PanopticFPN, dataset: CocoPanoptic) -> None:
    cats = dataset.categories
    if (model.num_things_classes, model.num_stuff_classes) != (cats.num_things, cats.num_stuff):
        raise EvalError(
            f"the checkpoint predicts {model.num_things_classes} thing + {model.num_stuff_classes} stuff classes "
            f"but {dataset.ann_file} has {cats.num_things} + {cats.num_stuff}"
        )


def run_panoptic(
    ctx: distributed.DistContext, request: EvalRequest, device: torch.device, checkpoint: Any, config: Any,
    model: PanopticFPN, keys: Any, dataset: CocoPanoptic, tasks: list[str],
) -> dict[str, Any] | None:
    _check_classes(model, dataset)
    json_file, png_folder = _prediction_paths(request.save_predictions, request.force)
    scale = request.img_scale or DEFAULT_SCALE
    count = image_count(request.limit, len(dataset))

    def run(batches: list[list[int]], advance: Callable[[int], None]) -> list[PanopticImageResult]:
        return run_panoptic_batches(model, dataset, batches, device, scale, config.size_divisor, png_folder, advance)

    gathered = run_sharded(ctx, request, config, count, request.batch, run)
    if gathered is None:
        return None
    parts, seconds = gathered
    merged = in_dataset_order(parts)
    accumulator = PQAccumulator(dataset.categories_json)
    for result in merged:
        accumulator.add(result.stats)

    report = start_report(request, device, checkpoint, config, model, keys)
    report["dataset"] = {"root": str(request.data), "ann_file": str(dataset.ann_file),
                         "seg_folder": str(dataset.seg_folder), "split": request.split or "val2017",
                         "num_images": count, "images_in_split": len(dataset), "limit": request.limit}
    report["settings"] = {
        "tasks": tasks, "img_scale": list(scale), "size_divisor": config.size_divisor, "batch": request.batch,
        "device": str(device), "world_size": ctx.world_size,
        "test_cfg": {"rpn": vars(model.test_cfg.rpn), "panoptic": vars(model.panoptic_cfg)},
    }
    report["timing"] = timing_section(count, seconds)
    names = checkpoint.class_names
    report["warnings"] = [] if names is None or list(names) == list(dataset.categories.names) else [
        "the checkpoint's class names differ from the panoptic categories; labels are mapped by position "
        "(things by id, then stuff by id, as mmdet orders them)"]
    if json_file is not None:
        payload = {"annotations": [{"image_id": r.image_id, "file_name": r.file_name, "segments_info": r.segments_info}
                                   for r in merged],
                   "categories": dataset.categories_json}
        report["predictions"] = {"panoptic": str(write_json(payload, json_file, request.force)),
                                 "png_folder": str(png_folder)}
    report.update(panoptic_metrics(accumulator.summary()))
    return finish_report(report, request.output, request.force, f"{config.model}-{config.upsampler}", request.write)
