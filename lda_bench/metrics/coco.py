"""COCO box / mask AP with pycocotools, reported in percent.

Standard pycocotools settings (maxDets 1/10/100, 101 recall points, area ranges all/small/medium/
large). mmdet 2.x sets maxDets to 100/300/1000 instead, which leaves AP unchanged when there are at
most 100 detections per image (its test setting) but turns its AR columns into AR@100/300/1000.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_TYPES = ("bbox", "segm")

# Names of pycocotools' 12 summary numbers, in its order.
STAT_NAMES = (
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)


class MetricsError(ValueError):
    """Results that pycocotools cannot score (wrong image ids, wrong fields...)."""


def _prepare(results: Sequence[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    out = []
    for r in results:
        if iou_type == "segm":
            if "segmentation" not in r:
                raise MetricsError("segm results need a 'segmentation' field in every record")
            r = {k: v for k, v in r.items() if k != "bbox"}  # mmdet drops bbox so areas are mask areas
        elif "bbox" not in r:
            raise MetricsError("bbox results need a 'bbox' field in every record")
        out.append(r)
    return out


def _load_results(gt: COCO, results: list[dict[str, Any]]) -> COCO:
    if results:
        missing = {r["image_id"] for r in results} - set(gt.getImgIds())
        if missing:
            sample = ", ".join(str(i) for i in sorted(missing)[:5])
            raise MetricsError(f"results name {len(missing)} image id(s) not in the annotations (e.g. {sample})")
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(copy.deepcopy(results))
    # loadRes cannot take an empty list; an empty result set scores like one without detections.
    dt = COCO()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": copy.deepcopy(gt.dataset["categories"]),
                  "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        dt.createIndex()
    return dt


def coco_evaluate(
    gt: COCO,
    results: Sequence[dict[str, Any]],
    iou_type: str,
    img_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score ``results`` (COCO results records) against ``gt``.

    ``img_ids`` restricts the evaluation to those images (e.g. the ones actually run with
    ``--limit``); by default every image of the annotation file counts, as in an official score.

    Returns ``{"metrics": {name: percent or None}, "stats": [12 raw numbers], "summary": text,
    "num_results": n, "num_images": m}``. pycocotools gives -1 where a number is undefined (no
    ground truth in that area range); those become None.
    """
    if iou_type not in IOU_TYPES:
        raise MetricsError(f"unknown iou type {iou_type!r}; valid: {', '.join(IOU_TYPES)}")
    prepared = _prepare(results, iou_type)
    dt = _load_results(gt, prepared)
    evaluator = COCOeval(gt, dt, iou_type)
    ids = sorted(gt.getImgIds()) if img_ids is None else list(img_ids)
    evaluator.params.imgIds = ids
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in np.asarray(evaluator.stats).tolist()]
    metrics = {name: (None if v < 0 else round(100.0 * v, 4)) for name, v in zip(STAT_NAMES, stats)}
    return {
        "metrics": metrics,
        "stats": stats,
        "summary": buffer.getvalue().strip(),
        "num_results": len(prepared),
        "num_images": len(ids),
    }


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _record_problem(record: Any, iou_type: str, image_ids: set[int], category_ids: set[int]) -> str | None:
    """What is wrong with one COCO results record, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    image_id, category_id = record.get("image_id"), record.get("category_id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        return "no integer image_id"
    if not isinstance(category_id, int) or isinstance(category_id, bool):
        return "no integer category_id"
    if not _finite_number(record.get("score")):
        return "no finite score"
    if iou_type == "bbox":
        box = record.get("bbox")
        if not isinstance(box, list) or len(box) != 4 or not all(_finite_number(v) for v in box):
            return "a bbox that is not 4 finite numbers"
        if box[2] < 0 or box[3] < 0:
            return "a bbox with negative width or height"
    else:
        segm = record.get("segmentation")
        if isinstance(segm, dict):
            size, counts = segm.get("size"), segm.get("counts")
            sizes_ok = isinstance(size, list) and len(size) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
            counts_ok = isinstance(counts, str) or (isinstance(counts, list) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts))
            if not (sizes_ok and counts_ok):
                return "an RLE segmentation without a [height, width] 'size' and 'counts'"
        elif not (isinstance(segm, list) and segm and all(isinstance(p, list) and len(p) >= 6 and
                                                         all(_finite_number(v) for v in p) for p in segm)):
            return "a segmentation that is neither RLE nor polygons of finite coordinates"
    if image_id not in image_ids:
        return "an image_id not in the annotations"
    if category_id not in category_ids:
        return "a category_id not in the annotations"
    return None


def check_results(gt: COCO, results: Any, iou_type: str, source: str) -> list[str]:
    """Validate a user's COCO results file before scoring: raises :class:`MetricsError` naming
    how many records are wrong and how (with the first example of each problem); returns the
    warnings to report (an empty file scores 0 everywhere)."""
    if not isinstance(results, list):
        raise MetricsError(f"{source} must hold a JSON list of COCO result records, not a {type(results).__name__}")
    if not results:
        return [f"{source} holds no results: every AP and AR is 0"]
    image_ids, category_ids = set(gt.getImgIds()), set(gt.getCatIds())
    problems: dict[str, list[int]] = {}
    for index, record in enumerate(results):
        problem = _record_problem(record, iou_type, image_ids, category_ids)
        if problem:
            problems.setdefault(problem, []).append(index)
    if problems:
        total = sum(len(v) for v in problems.values())
        detail = "; ".join(f"{len(v)} with {p} (first: record {v[0]})" for p, v in problems.items())
        raise MetricsError(f"{source}: {total} of {len(results)} {iou_type} results are invalid: {detail}")
    return []
