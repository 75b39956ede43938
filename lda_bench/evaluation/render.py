"""Rich rendering of an eval report."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from lda_bench.metrics.coco import STAT_NAMES


def metrics_table(report: dict[str, Any]) -> Table:
    """One row per COCO number, one column per task (bbox, segm), values in percent."""
    metrics: dict[str, dict[str, Any]] = report.get("metrics", {})
    model = report.get("model", {})
    if model:
        title = f"{model.get('model')} + {model.get('upsampler')} on {report.get('dataset', {}).get('split')}"
        title += f" ({report.get('dataset', {}).get('num_images')} images)"
    else:
        title = f"scores of {report.get('predictions')}"
    table = Table(title=title)
    table.add_column("metric")
    for task in metrics:
        table.add_column(task, justify="right")
    for name in STAT_NAMES:
        row = []
        for task in metrics:
            value = metrics[task].get(name)
            row.append("n/a" if value is None else f"{value:.1f}")
        table.add_row(name, *row)
    return table
