"""Model names -> models with a pluggable upsampler, and the example input the profiler feeds them.

Every registered model takes a plain image tensor in ``model(x)`` and returns a tensor or a tuple
of tensors (the path ``lda-bench profile --model`` measures and fvcore traces); evaluation goes
through each family's own ``predict*`` method. Families:

* ``detector``: Faster / Mask R-CNN R50 (:class:`TwoStageDetector`), COCO bbox / segm;
* ``panoptic``: Panoptic FPN R50 (:class:`PanopticFPN`), COCO-panoptic PQ;
* ``segformer``: SegFormer-B1 (:class:`SegFormer`), ADE20K mIoU.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .detector import TwoStageDetector
from .fpn import NECK_TYPES
from .mask_head import MASK_HEAD_UPSAMPLERS
from .panoptic_fpn import PanopticFPN
from .segformer import STOCK_UPSAMPLER, build_segformer_b1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "detector" | "panoptic" | "segformer"
    tasks: tuple[str, ...]  # what `lda-bench eval` can score; all of them by default
    description: str
    with_mask: bool = False
    default_upsampler: str = "nearest"
    default_neck: str | None = None  # FPN layout; None for models without an FPN neck
    default_size: tuple[int, int] = (800, 1333)  # (height, width) of the profiling input, before padding
    num_classes: int = 80  # detector / thing classes, or segmentation classes
    num_stuff_classes: int | None = None  # Panoptic FPN only

    @property
    def has_neck(self) -> bool:
        return self.default_neck is not None


MODELS: dict[str, ModelSpec] = {
    "faster_rcnn_r50_fpn": ModelSpec(
        "faster_rcnn_r50_fpn", "detector", ("bbox",),
        "Faster R-CNN, ResNet-50, FPN with a pluggable upsampler (mmdet 2.x)", default_neck="fpn_carafe",
    ),
    "mask_rcnn_r50_fpn": ModelSpec(
        "mask_rcnn_r50_fpn", "detector", ("bbox", "segm"),
        "Mask R-CNN, ResNet-50, FPN with a pluggable upsampler (mmdet 2.x)", with_mask=True, default_neck="fpn_carafe",
    ),
    # Plain FPN by default: mmdet's Panoptic FPN config, and the published upsampler comparison
    # (DySample: +24.6K = 3 modules), use mmdet's FPN with 3 top-down steps.
    "panoptic_fpn_r50": ModelSpec(
        "panoptic_fpn_r50", "panoptic", ("panoptic",),
        "Panoptic FPN, ResNet-50, Mask R-CNN heads + semantic head, FPN with a pluggable upsampler (mmdet 2.x)",
        with_mask=True, default_neck="fpn", num_stuff_classes=53,
    ),
    "segformer_b1": ModelSpec(
        "segformer_b1", "segformer", ("sem_seg",),
        "SegFormer-B1 (mmseg), decode-head upsamplings replaced by a pluggable upsampler",
        default_upsampler=STOCK_UPSAMPLER, default_size=(512, 512), num_classes=150,
    ),
}

# Test-pipeline padding of the mmdet configs: FPN_CARAFE / FPN_LAU configs pad to 64 (so every
# pyramid level is exactly half its parent), the base FPN configs (and Panoptic FPN) to 32.
DEFAULT_SIZE_DIVISOR = {"fpn_carafe": 64, "fpn": 32}


def model_names() -> list[str]:
    return sorted(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; available: {', '.join(model_names())}")
    return MODELS[name]


def _positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def resolve_neck(spec: ModelSpec, neck: str | None) -> str | None:
    """The neck layout of ``spec`` built with ``neck`` (None = the model's default)."""
    if not spec.has_neck:
        if neck is not None:
            raise ValueError(f"{spec.name} has no FPN neck; do not pass neck={neck!r}")
        return None
    neck = neck or spec.default_neck
    if neck not in NECK_TYPES:
        raise ValueError(f"unknown neck {neck!r}; valid: {', '.join(NECK_TYPES)}")
    return neck


def size_divisor(name: str, neck: str | None = None) -> int | None:
    """The test pipeline's pad divisor of ``name`` with ``neck``; None where it does not pad."""
    neck = resolve_neck(get_model_spec(name), neck)
    return DEFAULT_SIZE_DIVISOR[neck] if neck is not None else None


def build_model(
    name: str,
    upsampler: str | None = None,
    upsampler_options: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    neck: str | None = None,
    num_stuff_classes: int | None = None,
    mask_head_upsampler: str | None = None,
) -> nn.Module:
    """Build ``name`` with ``upsampler`` (any registered name; None = the model's default).

    Detectors and Panoptic FPN put it in the FPN top-down path: ``neck="fpn_carafe"`` is the
    4-upsampler FPN_CARAFE / FPN_LAU layout of the LDA-AQU detection comparison (the detectors'
    default), ``neck="fpn"`` mmdet's plain FPN (3 upsamplers, max-pool P6; Panoptic FPN's default).
    SegFormer puts six x2 modules in its decode head (``"bilinear"`` = mmseg's stock head).
    ``num_classes`` counts object classes (thing classes for Panoptic FPN, whose stuff classes
    are ``num_stuff_classes``) or segmentation classes. ``mask_head_upsampler`` (Mask R-CNN only) is
    the x2 step of the mask head: ``"deconv"`` (default, mmdet's stock head) or ``"carafe"`` (mmdet's
    CARAFE Mask R-CNN config). The model is in eval mode, random weights.
    """
    spec = get_model_spec(name)
    upsampler = upsampler or spec.default_upsampler
    classes = _positive(spec.num_classes if num_classes is None else num_classes, "num_classes")
    neck = resolve_neck(spec, neck)
    if num_stuff_classes is not None and spec.num_stuff_classes is None:
        raise ValueError(f"{name} has no stuff classes; num_stuff_classes is for panoptic models")
    if mask_head_upsampler is not None:
        if spec.family != "detector" or not spec.with_mask:
            raise ValueError(f"{name} has no configurable mask head; mask_head_upsampler is for mask_rcnn_r50_fpn")
        if mask_head_upsampler not in MASK_HEAD_UPSAMPLERS:
            raise ValueError(f"unknown mask head upsampler {mask_head_upsampler!r}; "
                             f"valid: {', '.join(MASK_HEAD_UPSAMPLERS)}")
    if spec.family == "segformer":
        return build_segformer_b1(upsampler, upsampler_options, classes)
    if spec.family == "panoptic":
        stuff = _positive(spec.num_stuff_classes if num_stuff_classes is None else num_stuff_classes,
                          "num_stuff_classes")
        return PanopticFPN(classes, stuff, upsampler, upsampler_options, neck)
    return TwoStageDetector(classes, upsampler, upsampler_options, neck, with_mask=spec.with_mask,
                            mask_head_upsampler=mask_head_upsampler or "deconv")


def padded_size(height: int, width: int, size_divisor: int) -> tuple[int, int]:
    return (-(-height // size_divisor) * size_divisor, -(-width // size_divisor) * size_divisor)


def example_inputs(
    name: str,
    height: int | None = None,
    width: int | None = None,
    batch: int = 1,
    neck: str | None = None,
    seed: int = 0,
) -> Tensor:
    """The image batch ``model(x)`` takes for an image of ``height x width`` (None = the model's default).

    Detectors and Panoptic FPN get the size padded as their test pipeline pads (800 x 1333 ->
    832 x 1344 with the FPN_CARAFE divisor 64, 800 x 1344 with plain FPN's 32); SegFormer takes
    the size as given (512 x 512 by default, its ADE20K crop). Padding an already padded size
    changes nothing. Values are a fixed normal sample (the cost of the profiling path does not
    depend on them).
    """
    spec = get_model_spec(name)
    default_h, default_w = spec.default_size
    h = _positive(default_h if height is None else height, "height")
    w = _positive(default_w if width is None else width, "width")
    _positive(batch, "batch")
    divisor = size_divisor(name, neck)
    if divisor is not None:
        h, w = padded_size(h, w, divisor)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, h, w, generator=generator)
