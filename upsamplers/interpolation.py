"""Parameter-free baselines: nearest and bilinear interpolation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import Upsampler
from .registry import register


@register("nearest", reference="nearest-neighbour interpolation (FPN baseline)")
class Nearest(Upsampler):
    """Nearest-neighbour interpolation, the standard FPN top-down upsampler."""

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


@register("bilinear", reference="bilinear interpolation, align_corners=False (mmdet FPN_CARAFE)")
class Bilinear(Upsampler):
    """Bilinear interpolation with align_corners=False, as mmdet's FPN_CARAFE configures it."""

    def __init__(self, channels: int, scale: int = 2, align_corners: bool = False) -> None:
        super().__init__(channels, scale)
        self.align_corners = align_corners

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=self.align_corners)
