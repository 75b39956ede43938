"""Detectors and segmenters with a pluggable upsampler, using mmdet/mmseg parameter names."""

from lda_bench.structures import Detections, ImageMeta

from .detector import TwoStageDetector
from .panoptic_fpn import PanopticFPN
from .registry import (
    DEFAULT_SIZE_DIVISOR,
    MODELS,
    ModelSpec,
    build_model,
    example_inputs,
    get_model_spec,
    model_names,
    size_divisor,
)
from .segformer import SegFormer

__all__ = [
    "DEFAULT_SIZE_DIVISOR",
    "Detections",
    "ImageMeta",
    "MODELS",
    "ModelSpec",
    "PanopticFPN",
    "SegFormer",
    "TwoStageDetector",
    "build_model",
    "example_inputs",
    "get_model_spec",
    "model_names",
    "size_divisor",
]
