"""Metrics: COCO box/mask AP (pycocotools), panoptic quality, semantic segmentation IoU."""

from .coco import IOU_TYPES, STAT_NAMES, MetricsError, check_results, coco_evaluate

__all__ = ["IOU_TYPES", "STAT_NAMES", "MetricsError", "check_results", "coco_evaluate"]
