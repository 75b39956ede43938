"""Detectors and segmenters with a pluggable upsampler, using mmdet/mmseg parameter names."""

from .detector import Detections, ImageMeta, TwoStageDetector
from .registry import DEFAULT_SIZE_DIVISOR, MODELS, build_model, example_inputs, get_model_spec, model_names

__all__ = [
    "DEFAULT_SIZE_DIVISOR",
    "Detections",
    "ImageMeta",
    "MODELS",
    "TwoStageDetector",
    "build_model",
    "example_inputs",
    "get_model_spec",
    "model_names",
]
