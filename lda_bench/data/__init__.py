"""Dataset readers and writers: COCO detection, COCO-panoptic, ADE20K, test-time preprocessing,
synthetic data for tests."""

from .coco import CocoDetection, DataError, ImageRecord, detections_to_coco, load_coco_api
from .transforms import DEFAULT_SCALE, Preprocessed, preprocess, rescale_size, resize_linear_uint8

__all__ = [
    "DEFAULT_SCALE",
    "CocoDetection",
    "DataError",
    "ImageRecord",
    "Preprocessed",
    "detections_to_coco",
    "load_coco_api",
    "preprocess",
    "rescale_size",
    "resize_linear_uint8",
]
