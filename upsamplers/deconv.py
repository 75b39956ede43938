"""Transposed-convolution upsampler (mmdet FPN_CARAFE type 'deconv')."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Upsampler
from .registry import register


@register("deconv", reference="transposed convolution, k=3 (mmdet FPN_CARAFE 'deconv')")
class Deconv(Upsampler):
    """ConvTranspose2d(C, C, kernel_size, stride=scale) sized to give exactly scale x the input.

    The parameters sit at the top level (``weight`` [C_in, C_out, k, k] and ``bias``) because in
    FPN_CARAFE the upsample module *is* the ConvTranspose2d, so checkpoint keys are
    ``neck.upsample_modules.N.weight``.
    """

    def __init__(self, channels: int, scale: int = 2, kernel_size: int = 3) -> None:
        super().__init__(channels, scale)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"deconv kernel_size must be an odd positive integer, got {kernel_size}")
        self.kernel_size = kernel_size
        self.padding = (kernel_size - 1) // 2
        # output = (H-1)*s - 2p + k + output_padding = H*s  =>  output_padding = s - k + 2p = s - 1 for odd k
        self.output_padding = scale - kernel_size + 2 * self.padding
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        return F.conv_transpose2d(
            x, self.weight, self.bias, stride=self.scale, padding=self.padding, output_padding=self.output_padding
        )
