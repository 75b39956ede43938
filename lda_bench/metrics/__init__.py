"""Metrics: COCO box/mask AP (pycocotools)."""

from .coco import IOU_TYPES, STAT_NAMES, MetricsError, coco_evaluate

__all__ = ["IOU_TYPES", "STAT_NAMES", "MetricsError", "coco_evaluate"]
