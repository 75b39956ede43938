"""The structures that models produce and datasets and metrics consume: image geometry, detections,
and the panoptic map encoding. Models and data both import them; neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

# mmdet 2.x panoptic maps: pixel value = label + k * INSTANCE_OFFSET (k >= 1 for the k-th instance,
# 0 for stuff); mmdet/core/evaluation/panoptic_utils.py.
INSTANCE_OFFSET = 1000


@dataclass(frozen=True)
class ImageMeta:
    """Geometry of one preprocessed image (mmdet's img_metas)."""

    ori_shape: tuple[int, int]  # (h, w) of the decoded image
    img_shape: tuple[int, int]  # (h, w) after resizing, before padding
    pad_shape: tuple[int, int]  # (h, w) after padding to the size divisor
    scale_factor: tuple[float, float, float, float]  # float32 (w, h, w, h) new/old size ratios


@dataclass
class Detections:
    """Detections of one image in original-image coordinates, grouped by label as mmdet orders them."""

    boxes: Tensor  # N x 4, x1 y1 x2 y2
    scores: Tensor  # N
    labels: Tensor  # N, contiguous labels 0..K-1
    masks: Tensor | None = None  # N x H x W bool (Mask R-CNN)
