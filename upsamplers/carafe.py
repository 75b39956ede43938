"""CARAFE: content-aware reassembly of features (mmcv CARAFEPack semantics, pure PyTorch)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Upsampler
from .ops.reassemble import DEFAULT_MAX_BYTES, carafe_reassemble
from .registry import register


@register("carafe", reference="Wang et al., CARAFE, ICCV 2019 (mmcv CARAFEPack)")
class CARAFE(Upsampler):
    """Kernels predicted from the low-res input (compressor 1x1, encoder 3x3, pixel shuffle, softmax),
    then zero-padded k_up x k_up reassembly. Keys ``channel_compressor.*``, ``content_encoder.*``."""

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        up_kernel: int = 5,
        up_group: int = 1,
        encoder_kernel: int = 3,
        encoder_dilation: int = 1,
        compressed_channels: int = 64,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(channels, scale)
        if up_kernel < 1 or up_kernel % 2 == 0:
            raise ValueError(f"carafe up_kernel must be an odd positive integer, got {up_kernel}")
        if up_group < 1 or channels % up_group:
            raise ValueError(f"carafe up_group ({up_group}) must divide channels ({channels})")
        if encoder_kernel < 1 or encoder_kernel % 2 == 0:
            raise ValueError(f"carafe encoder_kernel must be an odd positive integer, got {encoder_kernel}")
        self.up_kernel = up_kernel
        self.up_group = up_group
        self.max_bytes = max_bytes
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            up_kernel * up_kernel * up_group * scale * scale,
            encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2,
            dilation=encoder_dilation,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # mmcv CARAFEPack.init_weights: Xavier everywhere, then the encoder near zero so that the
        # initial kernels are almost uniform.
        for conv in (self.channel_compressor, self.content_encoder):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)

    def kernels(self, x: Tensor) -> Tensor:
        """Softmax-normalised reassembly kernels, B x up_group*k^2 x sH x sW."""
        mask = F.pixel_shuffle(self.content_encoder(self.channel_compressor(x)), self.scale)
        b, c, h, w = mask.shape
        mask = F.softmax(mask.view(b, self.up_group, -1, h, w), dim=2)
        return mask.view(b, c, h, w)

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        return carafe_reassemble(x, self.kernels(x), self.up_kernel, self.scale, self.max_bytes)
