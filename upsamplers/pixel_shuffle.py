"""Sub-pixel convolution upsampler (mmcv PixelShufflePack)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Upsampler
from .registry import register


@register("pixel_shuffle", reference="Shi et al., CVPR 2016 (mmcv PixelShufflePack, k=3)")
class PixelShuffle(Upsampler):
    """Conv (C -> C*scale^2, kernel k) followed by pixel_shuffle(scale); keys ``upsample_conv.*``."""

    def __init__(self, channels: int, scale: int = 2, upsample_kernel: int = 3) -> None:
        super().__init__(channels, scale)
        if upsample_kernel < 1 or upsample_kernel % 2 == 0:
            raise ValueError(f"pixel_shuffle upsample_kernel must be an odd positive integer, got {upsample_kernel}")
        self.upsample_kernel = upsample_kernel
        self.upsample_conv = nn.Conv2d(
            channels, channels * scale * scale, upsample_kernel, padding=(upsample_kernel - 1) // 2
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.upsample_conv.weight)
        nn.init.zeros_(self.upsample_conv.bias)

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        return F.pixel_shuffle(self.upsample_conv(x), self.scale)
