"""FADE: fusing the assets of decoder and encoder (Lu, Liu, Fu, Cao, ECCV 2022 / IJCV 2024).

The L2H form of poppinace/fade (``FADE``, ``FADELite``, ``SemiShift``, ``SemiShiftDepthWise``):

1. semi-shift kernel generation: ``content_encoder(compressor_en(en)) +
   nearest_up(content_encoder(compressor_de(de)))`` -- one shared encoder applied at both resolutions
   (so its bias is added twice), giving k_up^2 logits at high resolution directly;
2. softmax over the k_up^2 taps, CARAFE reassembly of the low-res ``de`` (= x) with them;
3. optional gate ``g = sigmoid(nearest_up(conv1x1(de)))``, output ``g * en + (1 - g) * up``.

``en`` is the guide. The gate is off by default, as in the detection configs (inside an FPN the
result is added to the lateral, which the gate would count twice); ``gate=True`` gives the original
FADE (47,514 parameters at C=256 instead of 47,257).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .guided import GuidedUpsampler, odd_kernel, positive_int, xavier_convs
from .ops.reassemble import DEFAULT_MAX_BYTES, carafe_reassemble
from .registry import register

FADE_REFERENCE = "Lu, Liu, Fu, Cao, FADE, ECCV 2022 / IJCV 2024"


class GateGenerator(nn.Module):
    """``sigmoid(nearest_up(conv1x1(de)))``, B x 1 x sH x sW (key ``conv``)."""

    def __init__(self, in_channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(in_channels, 1, 1)

    def forward(self, de: Tensor) -> Tensor:
        return F.interpolate(self.conv(de), scale_factor=self.scale, mode="nearest").sigmoid()


class SemiShift(nn.Module):
    """Kernel logits from both resolutions (keys ``compressor_en``, ``compressor_de``, ``content_encoder``).

    ``depthwise=True`` is FADE-Lite's ``SemiShiftDepthWise``: the compressors go straight to k_up^2
    channels and the encoder is a depthwise conv on them.
    """

    def __init__(
        self,
        in_channels_en: int,
        in_channels_de: int,
        out_channels: int,
        embedding_dim: int,
        kernel_size: int,
        scale: int,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        self.scale = scale
        width = out_channels if depthwise else embedding_dim
        self.compressor_en = nn.Conv2d(in_channels_en, width, 1)
        self.compressor_de = nn.Conv2d(in_channels_de, width, 1, bias=False)
        self.content_encoder = nn.Conv2d(
            width, out_channels, kernel_size, padding=kernel_size // 2, groups=out_channels if depthwise else 1
        )

    def forward(self, en: Tensor, de: Tensor) -> Tensor:
        low = self.content_encoder(self.compressor_de(de))
        return self.content_encoder(self.compressor_en(en)) + F.interpolate(
            low, scale_factor=self.scale, mode="nearest"
        )


@register("fade", needs_guide=True, reference=FADE_REFERENCE)
class FADE(GuidedUpsampler):
    """Semi-shift kernels from guide and input, k_up x k_up reassembly of x, optional gate.

    Keys: ``ker_generator.compressor_en.{weight,bias}``, ``ker_generator.compressor_de.weight``,
    ``ker_generator.content_encoder.{weight,bias}``, and with ``gate=True`` ``gate_generator.conv.*``.
    """

    lite = False

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        up_kernel_size: int = 5,
        embedding_dim: int = 64,
        encoder_kernel: int = 3,
        gate: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(channels, scale, guide_channels, max_bytes)
        name = type(self).__name__
        self.up_kernel_size = odd_kernel(f"{name} up_kernel_size", up_kernel_size)
        odd_kernel(f"{name} encoder_kernel", encoder_kernel)
        positive_int(f"{name} embedding_dim", embedding_dim)
        self.gate = gate
        if gate:
            self.require_equal_channels("gate (g * guide + (1 - g) * up)")
            self.gate_generator = GateGenerator(channels, scale)
        self.ker_generator = SemiShift(
            self.guide_channels,
            channels,
            up_kernel_size**2,
            embedding_dim,
            encoder_kernel,
            scale,
            depthwise=self.lite,
        )
        self.reset_parameters()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, up_kernel_size={self.up_kernel_size}, gate={self.gate}"

    def reset_parameters(self) -> None:
        xavier_convs(self)  # the official weights_init

    def kernels(self, x: Tensor, guide: Tensor) -> Tensor:
        """Softmax-normalised reassembly kernels, B x k_up^2 x sH x sW."""
        return F.softmax(self.ker_generator(guide, x), dim=1)

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        assert guide is not None
        up = carafe_reassemble(x, self.kernels(x, guide), self.up_kernel_size, self.scale, self.max_bytes)
        if not self.gate:
            return up
        g = self.gate_generator(x)
        return g * guide + (1 - g) * up


@register("fade_lite", needs_guide=True, reference=FADE_REFERENCE + " (FADE-Lite)")
class FADELite(FADE):
    """FADE-Lite: compressors straight to k_up^2 = 25 channels and a depthwise 3x3 encoder.

    Same keys as ``fade``. Gate off by default as for ``fade``; the official FADE-Lite always gates
    (``gate=True``). 13,075 parameters at C=256 (13,332 gated).
    """

    lite = True

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        up_kernel_size: int = 5,
        encoder_kernel: int = 3,
        gate: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(
            channels, scale, guide_channels, up_kernel_size, up_kernel_size**2, encoder_kernel, gate, max_bytes
        )
