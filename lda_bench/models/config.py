"""Test-time settings of the mmdet 2.x Faster/Mask R-CNN R50-FPN 1x configs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RPNTestConfig:
    nms_pre: int = 1000  # top-k per level before NMS
    max_per_img: int = 1000  # proposals kept after NMS
    iou_threshold: float = 0.7
    min_bbox_size: float = 0.0  # proposals with w or h <= this are dropped


@dataclass(frozen=True)
class RCNNTestConfig:
    score_thr: float = 0.05
    iou_threshold: float = 0.5
    max_per_img: int = 100
    mask_thr_binary: float = 0.5


@dataclass(frozen=True)
class TestConfig:
    rpn: RPNTestConfig = field(default_factory=RPNTestConfig)
    rcnn: RCNNTestConfig = field(default_factory=RCNNTestConfig)
