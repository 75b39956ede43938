"""Model names -> detectors, and the example input the profiler feeds them."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from .detector import TwoStageDetector
from .fpn import NECK_TYPES


@dataclass(frozen=True)
class ModelSpec:
    name: str
    with_mask: bool
    tasks: tuple[str, ...]
    description: str


MODELS: dict[str, ModelSpec] = {
    "faster_rcnn_r50_fpn": ModelSpec(
        "faster_rcnn_r50_fpn", False, ("bbox",), "Faster R-CNN, ResNet-50, FPN with a pluggable upsampler (mmdet 2.x)"
    ),
    "mask_rcnn_r50_fpn": ModelSpec(
        "mask_rcnn_r50_fpn", True, ("bbox", "segm"), "Mask R-CNN, ResNet-50, FPN with a pluggable upsampler (mmdet 2.x)"
    ),
}

# Test-pipeline padding of the mmdet configs: FPN_CARAFE / FPN_LAU configs pad to 64 (so every
# pyramid level is exactly half its parent), the base FPN configs to 32.
DEFAULT_SIZE_DIVISOR = {"fpn_carafe": 64, "fpn": 32}


def model_names() -> list[str]:
    return sorted(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; available: {', '.join(model_names())}")
    return MODELS[name]


def build_model(
    name: str,
    upsampler: str = "nearest",
    upsampler_options: Mapping[str, Any] | None = None,
    num_classes: int = 80,
    neck: str = "fpn_carafe",
) -> TwoStageDetector:
    """Build ``name`` with ``upsampler`` (any registered name) in the FPN top-down path.

    ``neck="fpn_carafe"`` (default) is the 4-upsampler FPN_CARAFE / FPN_LAU layout of the LDA-AQU
    comparison; ``neck="fpn"`` is mmdet's plain FPN (3 upsamplers, max-pool P6). The model is
    returned in eval mode with random weights.
    """
    spec = get_model_spec(name)
    if neck not in NECK_TYPES:
        raise ValueError(f"unknown neck {neck!r}; valid: {', '.join(NECK_TYPES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return TwoStageDetector(num_classes, upsampler, upsampler_options, neck, with_mask=spec.with_mask)


def padded_size(height: int, width: int, size_divisor: int) -> tuple[int, int]:
    return (-(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor)


def example_inputs(
    name: str, height: int = 800, width: int = 1333, batch: int = 1, neck: str = "fpn_carafe", seed: int = 0
) -> Tensor:
    """The padded, normalised image batch ``model(x)`` takes for an image resized to height x width.

    800 x 1333 pads to 832 x 1344 with the FPN_CARAFE divisor 64. Values are a fixed normal sample
    (the cost of the profiling path does not depend on them).
    """
    get_model_spec(name)
    h, w = padded_size(height, width, DEFAULT_SIZE_DIVISOR[neck])
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=generator)
