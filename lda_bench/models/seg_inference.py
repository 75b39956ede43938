"""mmseg test-time inference for any segmenter whose ``forward(img)`` returns logits at the input size.

* ``whole``: one forward on the whole (resized) image, then a bilinear resize of the logits to
  the original image size (align_corners=False). The ADE20K SegFormer and UPerNet configs use it.
* ``slide``: crops of ``crop_size`` every ``stride`` (the last row/column of crops is shifted
  back inside the image), logits summed into place and divided by how many crops covered each
  pixel, then resized to the original size. mmseg's ADE20K sliding configs use crop 512 x 512,
  stride 341 x 341 (the defaults here); its Cityscapes SegFormer configs use 1024 / 768.

The class map is the argmax of the returned logits (mmseg's softmax does not change it).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

InferenceMode = Literal["whole", "slide"]
ADE20K_SLIDE_CROP = (512, 512)
ADE20K_SLIDE_STRIDE = (341, 341)


def whole_inference(model: nn.Module, img: Tensor, ori_shape: tuple[int, int]) -> Tensor:
    logits = model(img)
    return F.interpolate(logits, size=tuple(ori_shape), mode="bilinear", align_corners=False)


def slide_inference(
    model: nn.Module,
    img: Tensor,
    ori_shape: tuple[int, int],
    crop_size: tuple[int, int] = ADE20K_SLIDE_CROP,
    stride: tuple[int, int] = ADE20K_SLIDE_STRIDE,
) -> Tensor:
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    if min(h_crop, w_crop, h_stride, w_stride) < 1:
        raise ValueError(f"crop_size and stride must be positive, got {crop_size} and {stride}")
    batch, _, h_img, w_img = img.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    logits: Tensor | None = None
    count = img.new_zeros((batch, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_logits = model(img[:, :, y1:y2, x1:x2])
            if logits is None:
                logits = img.new_zeros((batch, crop_logits.shape[1], h_img, w_img))
            logits[:, :, y1:y2, x1:x2] += crop_logits
            count[:, :, y1:y2, x1:x2] += 1
    assert logits is not None and bool((count > 0).all())  # the grid covers every pixel by construction
    return F.interpolate(logits / count, size=tuple(ori_shape), mode="bilinear", align_corners=False)


def segment(
    model: nn.Module,
    img: Tensor,
    ori_shape: tuple[int, int],
    mode: InferenceMode = "whole",
    crop_size: tuple[int, int] = ADE20K_SLIDE_CROP,
    stride: tuple[int, int] = ADE20K_SLIDE_STRIDE,
) -> Tensor:
    """Logits (B x classes x H x W at ``ori_shape``) for a preprocessed batch ``img``."""
    if mode == "whole":
        return whole_inference(model, img, ori_shape)
    if mode == "slide":
        return slide_inference(model, img, ori_shape, crop_size, stride)
    raise ValueError(f"unknown inference mode {mode!r}; expected 'whole' or 'slide'")

