"""mmseg's single-scale test pipeline for ADE20K, without mmcv or OpenCV.

* ``Resize(img_scale=(2048, 512), keep_ratio=True)``: mmcv ``imrescale``, i.e. factor
  ``min(2048 / long side, 512 / short side)`` and size ``int(w * f + 0.5), int(h * f + 0.5)``
  (rounded; torchvision would floor), bilinear on the uint8 image, result re-quantised to uint8.
* optionally ``size_divisor=32``: the AlignedResize of NVlabs SegFormer (used by the FADE and
  SAPA SegFormer runs), equal to mmseg's ``Resize + ResizeToMultiple``: a **second** uint8 resize
  (not a pad) of the rescaled image to the next multiples of 32.
* ``Normalize``: RGB, ``(x - mean) / std`` with the ImageNet statistics x 255, float32.

Bilinear resampling is OpenCV's ``INTER_LINEAR`` on uint8 (what mmcv calls), emulated with its
11-bit fixed-point arithmetic by :func:`lda_bench.data.transforms.resize_linear_uint8`, the same
code the COCO pipeline uses (a float ``F.interpolate`` + round would differ by one grey level on
about a tenth of the pixels). The protocol goes with every number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from .transforms import MEAN_RGB as IMAGENET_MEAN  # noqa: F401  (re-exported: the ADE20K configs' values)
from .transforms import STD_RGB as IMAGENET_STD  # noqa: F401
from .transforms import normalize_rgb, resize_linear_uint8

ADE20K_TEST_SCALE = (2048, 512)


def rescale_size(width: int, height: int, scale: tuple[int, int] = ADE20K_TEST_SCALE) -> tuple[int, int]:
    """mmcv ``rescale_size`` for a (long, short) edge pair: the largest keep-ratio size that fits."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


def align_size(width: int, height: int, size_divisor: int) -> tuple[int, int]:
    """Round both sides up to multiples of ``size_divisor`` (mmcv ``imresize_to_multiple``)."""
    return (
        int(math.ceil(width / size_divisor)) * size_divisor,
        int(math.ceil(height / size_divisor)) * size_divisor,
    )


def resize_uint8(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``cv2.resize(INTER_LINEAR)`` of an H x W x C uint8 image to ``height x width`` (mmcv imresize)."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an H x W x C uint8 image, got {image.dtype} {image.shape}")
    return resize_linear_uint8(image, width, height)


def normalize(image: np.ndarray) -> Tensor:
    """H x W x 3 uint8 RGB -> 1 x 3 x H x W float32, ImageNet mean/std (mmseg's Normalize = mmcv.imnormalize)."""
    return normalize_rgb(image)[None]


@dataclass(frozen=True)
class SegTestTransform:
    """The test pipeline: keep-ratio resize to ``scale``, optional alignment, normalisation."""

    scale: tuple[int, int] = ADE20K_TEST_SCALE
    size_divisor: int | None = None  # 32 = AlignedResize (NVlabs SegFormer, FADE/SAPA runs)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the network input for an image of ``width x height``."""
        width, height = rescale_size(width, height, self.scale)
        if self.size_divisor:
            width, height = align_size(width, height, self.size_divisor)
        return width, height

    def __call__(self, image: np.ndarray) -> tuple[Tensor, dict[str, Any]]:
        """RGB uint8 image -> (1 x 3 x h x w input, meta with ``ori_shape`` and ``img_shape``)."""
        height, width = image.shape[:2]
        new_w, new_h = rescale_size(width, height, self.scale)
        resized = resize_uint8(image, new_w, new_h)
        if self.size_divisor:
            # A second resize of the already quantised image, as AlignedResize does.
            resized = resize_uint8(resized, *align_size(new_w, new_h, self.size_divisor))
        meta = {"ori_shape": (height, width), "img_shape": resized.shape[:2]}
        return normalize(resized), meta

    def describe(self) -> str:
        name = f"AlignedResize(size_divisor={self.size_divisor})" if self.size_divisor else "Resize"
        return f"{name}, scale {self.scale[0]}x{self.scale[1]} keep_ratio, bilinear uint8; ImageNet normalise"
