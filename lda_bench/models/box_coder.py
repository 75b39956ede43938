"""mmdet's DeltaXYWHBBoxCoder: encode/decode with means, stds, dw/dh clamping and border clipping."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# mmdet's wh_ratio_clip = 16/1000: |dw|, |dh| <= log(1000/16) after de-normalisation.
MAX_DWH = abs(math.log(16 / 1000))


def encode_deltas(
    proposals: Tensor,
    gt: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> Tensor:
    """Deltas (dx, dy, dw, dh) that take ``proposals`` to ``gt`` (both N x 4, x1y1x2y2), normalised."""
    proposals = proposals.float()
    gt = gt.float()
    px = (proposals[..., 0] + proposals[..., 2]) * 0.5
    py = (proposals[..., 1] + proposals[..., 3]) * 0.5
    pw = proposals[..., 2] - proposals[..., 0]
    ph = proposals[..., 3] - proposals[..., 1]
    gx = (gt[..., 0] + gt[..., 2]) * 0.5
    gy = (gt[..., 1] + gt[..., 3]) * 0.5
    gw = gt[..., 2] - gt[..., 0]
    gh = gt[..., 3] - gt[..., 1]
    deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
    return (deltas - deltas.new_tensor(means)) / deltas.new_tensor(stds)


def decode_deltas(
    rois: Tensor,
    deltas: Tensor,
    means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
    stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    max_shape: tuple[int, int] | None = None,
) -> Tensor:
    """Apply ``deltas`` (N x 4k, k boxes per roi, class-major) to ``rois`` (N x 4); returns N x 4k.

    As mmdet's delta2bbox: de-normalise, clamp dw/dh to +-log(1000/16), exp, and clip to
    ``max_shape`` = (height, width) of the resized image (x to [0, W], y to [0, H], no -1).
    """
    n, k = deltas.shape[0], deltas.shape[1] // 4
    if n == 0:
        return deltas
    d = deltas.reshape(-1, 4) * deltas.new_tensor(stds).view(1, 4) + deltas.new_tensor(means).view(1, 4)
    r = rois.repeat(1, k).reshape(-1, 4)
    pxy = (r[:, :2] + r[:, 2:]) * 0.5
    pwh = r[:, 2:] - r[:, :2]
    gxy = pxy + pwh * d[:, :2]
    gwh = pwh * d[:, 2:].clamp(min=-MAX_DWH, max=MAX_DWH).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_shape is not None:
        boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=max_shape[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=max_shape[0])
    return boxes.reshape(n, -1)
