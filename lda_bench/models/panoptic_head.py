"""Panoptic FPN's semantic head (mmdet 2.x ``PanopticFPNHead``) with mmdet's parameter names.

Keys below ``semantic_head.``: ``conv_upsample_layers.{i}.conv.{k}.conv.weight`` (3x3, no bias)
and ``.gn.{weight,bias}`` (GroupNorm 32, then ReLU), and ``conv_logits.{weight,bias}``. Level
``i`` (P2..P5) has ``max(i, 1)`` conv blocks and a x2 bilinear upsampling (align_corners=False)
after each of the first ``i`` of them, so every level reaches stride 4; the four results are
summed and ``conv_logits`` gives ``num_stuff + 1`` channels: stuff classes 0..52 (mmdet labels
80..132 minus 80), then one channel for all things. These upsamplings stay bilinear in the
upsampler comparisons: the pluggable upsamplers sit in the FPN neck.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvGNReLU(nn.Module):
    """mmcv ``ConvModule(3x3, norm_cfg=GN(32))``: keys ``conv.weight``, ``gn.weight``, ``gn.bias``."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.gn(self.conv(x)))


class ConvUpsample(nn.Module):
    """``num_layers`` conv blocks, each of the first ``num_upsample`` followed by bilinear x2."""

    def __init__(self, in_channels: int, inner_channels: int, num_layers: int, num_upsample: int,
                 num_groups: int = 32) -> None:
        super().__init__()
        if num_upsample > num_layers:
            raise ValueError(f"num_upsample ({num_upsample}) must not exceed num_layers ({num_layers})")
        self.num_upsample = num_upsample
        self.conv = nn.ModuleList(
            ConvGNReLU(in_channels if k == 0 else inner_channels, inner_channels, num_groups) for k in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        for k, block in enumerate(self.conv):
            x = block(x)
            if k < self.num_upsample:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return x


class PanopticFPNSemanticHead(nn.Module):
    """Semantic logits (B x (num_stuff + 1) x H/4 x W/4) from FPN levels P2..P5."""

    def __init__(
        self,
        num_things_classes: int = 80,
        num_stuff_classes: int = 53,
        in_channels: int = 256,
        inner_channels: int = 128,
        start_level: int = 0,
        end_level: int = 4,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.num_things_classes = num_things_classes
        self.num_stuff_classes = num_stuff_classes
        self.start_level = start_level
        self.end_level = end_level
        self.conv_upsample_layers = nn.ModuleList(
            ConvUpsample(in_channels, inner_channels, num_layers=max(i, 1), num_upsample=i, num_groups=num_groups)
            for i in range(start_level, end_level)
        )
        self.conv_logits = nn.Conv2d(inner_channels, num_stuff_classes + 1, 1)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        if len(feats) < self.end_level:
            raise ValueError(f"the semantic head needs at least {self.end_level} FPN levels, got {len(feats)}")
        summed = torch.stack(
            [layer(feats[self.start_level + i]) for i, layer in enumerate(self.conv_upsample_layers)]
        ).sum(dim=0)
        return self.conv_logits(summed)


def semantic_logits_to_image(
    seg_logits: Tensor,
    pad_shape: tuple[int, int],
    img_shape: tuple[int, int],
    ori_shape: tuple[int, int],
) -> Tensor:
    """mmdet 2.x ``BaseSemanticHead.simple_test(rescale=True)``: stride-4 logits -> original size.

    Bilinear to the padded input size, crop the padding (``img_shape`` = resized image), bilinear
    to the original image size; align_corners=False throughout.
    """
    logits = F.interpolate(seg_logits, size=tuple(pad_shape), mode="bilinear", align_corners=False)
    logits = logits[:, :, : img_shape[0], : img_shape[1]]
    return F.interpolate(logits, size=tuple(ori_shape), mode="bilinear", align_corners=False)
