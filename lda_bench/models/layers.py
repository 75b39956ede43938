"""Small building blocks shared by the detector modules."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvModule(nn.Module):
    """A convolution stored as ``<name>.conv`` (mmcv ConvModule's key layout), optionally followed by ReLU.

    The FPN and mask-head convolutions of mmdet checkpoints live under ``...conv.weight``; wrapping
    them keeps those keys without renaming.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        relu: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x) if self.relu else x
