"""COCO box / mask AP with pycocotools, reported in percent.

Standard pycocotools settings (maxDets 1/10/100, 101 recall points, area ranges all/small/medium/
large). mmdet 2.x sets maxDets to 100/300/1000 instead, which leaves AP unchanged when there are at
most 100 detections per image (its test setting) but turns its AR columns into AR@100/300/1000.
"""

from __future__ import annotations

import contextlib
import copy
import io
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
