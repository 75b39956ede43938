"""Rich rendering of an eval report: the COCO numbers, PQ/SQ/RQ, or aAcc/mIoU/mAcc, in percent."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from lda_bench.metrics.coco import STAT_NAMES


def _title(report: dict[str, Any]) -> str:
    model = report.get("model", {})
    if not model:
        return f"scores of {report.get('predictions')}"
    dataset = report.get("dataset", {})
    mask_head = " (CARAFE mask head)" if model.get("mask_head_upsampler") == "carafe" else ""
    return (f"{model.get('model')} + {model.get('upsampler')}{mask_head} on {dataset.get('split')} "
            f"({dataset.get('num_images')} images)")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _coco_table(table: Table, metrics: dict[str, dict[str, Any]]) -> None:
    """One row per COCO number, one column per task (bbox, segm)."""
    table.add_column("metric")
    for task in metrics:
        table.add_column(task, justify="right")
    for name in STAT_NAMES:
        table.add_row(name, *(_fmt(metrics[task].get(name)) for task in metrics))


def _panoptic_table(table: Table, values: dict[str, Any], counts: dict[str, Any]) -> None:
    """Rows All / Things / Stuff, columns PQ, SQ, RQ and the number of categories counted."""
    for column in ("", "PQ", "SQ", "RQ", "categories"):
        table.add_column(column, justify="left" if not column else "right")
    for label, suffix, key in (("All", "", "all"), ("Things", "_th", "things"), ("Stuff", "_st", "stuff")):
        table.add_row(label, *(_fmt(values.get(m + suffix)) for m in ("PQ", "SQ", "RQ")), str(counts.get(key, "")))


def _protocol_caption(protocol: dict[str, Any]) -> str:
    """'Resize; whole' or 'AlignedResize; slide 512x512/341x341': the test protocol in short."""
    caption = f"{str(protocol.get('transform', '')).split(',')[0].split('(')[0]}; {protocol.get('mode')}"
    if protocol.get("mode") == "slide":
        caption += " {}x{}/{}x{}".format(*protocol.get("crop_size", ()), *protocol.get("stride", ()))
    return caption


def _sem_seg_table(table: Table, values: dict[str, Any], protocol: dict[str, Any] | None) -> None:
    table.add_column("metric")
    table.add_column("sem_seg", justify="right")
    for name in ("aAcc", "mIoU", "mAcc"):
        table.add_row(name, _fmt(values.get(name), 2))  # mmseg prints two decimals
    if protocol:
        table.caption = _protocol_caption(protocol)


def metrics_table(report: dict[str, Any]) -> Table:
    """The report's numbers as a Rich table (values in percent)."""
    metrics: dict[str, dict[str, Any]] = report.get("metrics", {})
    title = _title(report)
    table = Table(title=title, min_width=len(title) + 2)  # a narrow table would wrap its title
    if "panoptic" in metrics:
        _panoptic_table(table, metrics["panoptic"], report.get("num_categories", {}).get("panoptic", {}))
    elif "sem_seg" in metrics:
        _sem_seg_table(table, metrics["sem_seg"], report.get("settings", {}).get("protocol"))
    else:
        _coco_table(table, metrics)
    return table
