"""Multi-level RoIAlign as mmdet's SingleRoIExtractor, on torchvision.ops.roi_align.

mmdet 2.x uses mmcv RoIAlign with ``aligned=True`` (half-pixel shift) and ``sampling_ratio=0``
(adaptive); torchvision's MultiScaleRoIAlign defaults to aligned=False, sampling_ratio=2, which
would silently shift every RoI feature (mmcv/ops/roi_align.py vs torchvision/ops/poolers.py;
docs/mmdet-fidelity.md).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import roi_align

FINEST_SCALE = 56


def bbox2roi(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image N_i x 4 boxes -> sum(N_i) x 5 rois ``[batch_index, x1, y1, x2, y2]``."""
    rois = []
    for index, b in enumerate(boxes):
        rois.append(torch.cat([b.new_full((b.shape[0], 1), float(index)), b[:, :4]], dim=1))
    return torch.cat(rois, dim=0)


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: int = FINEST_SCALE) -> Tensor:
    """Level of each roi: floor(log2(sqrt(w*h) / 56 + 1e-6)) clamped to [0, num_levels - 1].

    So scale < 112 -> level 0 (P2), [112, 224) -> 1, [224, 448) -> 2, >= 448 -> 3.
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class RoIExtractor:
    """Pools each roi from the level :func:`map_roi_levels` picks (no parameters)."""

    def __init__(self, output_size: int, strides: Sequence[int] = (4, 8, 16, 32)) -> None:
        self.output_size = output_size
        self.strides = tuple(strides)

    def __call__(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        feats = feats[: len(self.strides)]
        channels = feats[0].shape[1]
        out = feats[0].new_zeros(rois.shape[0], channels, self.output_size, self.output_size)
        if rois.shape[0] == 0:
            return out
        levels = map_roi_levels(rois, len(self.strides))
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            inds = (levels == level).nonzero(as_tuple=False).squeeze(1)
            if inds.numel() == 0:
                continue
            out[inds] = roi_align(
                feat, rois[inds].to(feat.dtype), self.output_size, spatial_scale=1.0 / stride,
                sampling_ratio=0, aligned=True,
            )
        return out
