"""A2U: affinity-aware upsampling (Dai, Lu, Shen, CVPR 2021), the detection variant.

Follows ``A2UUp`` / ``InterChannelUp`` of tiny-smart/detection-with-upsamplers (share=True, rank 1,
one kernel group, encode kernel 6, k_up 3). Kernels come only from the high-resolution guide G:

1. per-sample 6x6 filters u, v: adaptive-avg-pool G to 6x6, 1x1 conv C_g -> 1 (``bconv_U``, ``bconv_V``);
2. u and v applied to every channel of G (stride 2, padding 2) -> two C_g x H x W maps, each through
   GroupNorm(32) + LeakyReLU (``bnu``, ``bnv``);
3. affinity = channel sum of their product / sqrt(C_g), 1 x H x W;
4. per-sample 1x1 weights from global-avg-pooled G (``bconv_UP``, C_g -> (2 k_up)^2) lift it to
   4 k_up^2 channels; pixel_shuffle(2); sigmoid, then softmax over the k_up^2 taps;
5. CARAFE reassembly of x with those kernels (zero padding, mmcv semantics).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .guided import GuidedUpsampler, group_norm, odd_kernel
from .ops.reassemble import DEFAULT_MAX_BYTES, carafe_reassemble
from .registry import register

ENCODE_KERNEL = 6  # the 6x6 dynamic filters; padding 2 and stride 2 map 2H x 2W to H x W
ENCODE_PADDING = 2


class InterChannelUp(nn.Module):
    """A2U kernel generator (official class and attribute names; keys ``bnu.0``, ``bconv_UP.1``, ...)."""

    def __init__(self, channels: int, up_kernel: int = 3, norm_groups: int = 32) -> None:
        super().__init__()
        self.up_kernel = up_kernel
        self.bnu = nn.Sequential(group_norm("a2u", norm_groups, channels), nn.LeakyReLU())
        self.bnv = nn.Sequential(group_norm("a2u", norm_groups, channels), nn.LeakyReLU())
        self.bconv_UP = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, (2 * up_kernel) ** 2, 1))
        self.bconv_U = nn.Sequential(nn.AdaptiveAvgPool2d(ENCODE_KERNEL), nn.Conv2d(channels, 1, 1))
        self.bconv_V = nn.Sequential(nn.AdaptiveAvgPool2d(ENCODE_KERNEL), nn.Conv2d(channels, 1, 1))

    def _dynamic_depthwise(self, guide: Tensor, filters: Tensor) -> Tensor:
        # One 6x6 filter per sample, shared by its channels: a grouped conv over the B*C planes.
        b, c, h, w = guide.shape
        weight = filters.view(b, 1, 1, ENCODE_KERNEL, ENCODE_KERNEL).expand(b, c, 1, ENCODE_KERNEL, ENCODE_KERNEL)
        out = F.conv2d(
            guide.reshape(1, b * c, h, w),
            weight.reshape(b * c, 1, ENCODE_KERNEL, ENCODE_KERNEL),
            stride=2,
            padding=ENCODE_PADDING,
            groups=b * c,
        )
        return out.view(b, c, *out.shape[2:])

    def forward(self, guide: Tensor) -> Tensor:
        """Reassembly kernels, B x k_up^2 x sH x sW (softmax over the taps)."""
        b, c = guide.shape[:2]
        u = self._dynamic_depthwise(guide, self.bconv_U(guide))
        v = self._dynamic_depthwise(guide, self.bconv_V(guide))
        affinity = (self.bnu(u) * self.bnv(v)).sum(1, keepdim=True) / math.sqrt(c)  # B x 1 x H x W
        lift = self.bconv_UP(guide)  # B x 4k^2 x 1 x 1: a per-sample 1x1 conv from 1 channel, no bias
        logits = F.pixel_shuffle(affinity * lift, 2)
        return F.softmax(logits.sigmoid(), dim=1)


@register(
    "a2u",
    needs_guide=True,
    reference="Dai, Lu, Shen, Learning Affinity-Aware Upsampling, CVPR 2021 (detection A2UUp, k_up=3)",
)
class A2U(GuidedUpsampler):
    """Affinity-aware kernels from the guide, then k_up x k_up CARAFE reassembly of x.

    Keys: ``kernel_gen.bnu.0.*``, ``kernel_gen.bnv.0.*``, ``kernel_gen.bconv_UP.1.*``,
    ``kernel_gen.bconv_U.1.*``, ``kernel_gen.bconv_V.1.*``. GroupNorm(32) needs C_guide divisible by 32.
    """

    supported_scales = (2,)

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        up_kernel: int = 3,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(channels, scale, guide_channels, max_bytes)
        self.up_kernel = odd_kernel("a2u up_kernel", up_kernel)
        self.kernel_gen = InterChannelUp(self.guide_channels, up_kernel)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The official code keeps PyTorch's default initialisation.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.GroupNorm)):
                m.reset_parameters()

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        assert guide is not None
        return carafe_reassemble(x, self.kernel_gen(guide), self.up_kernel, 2, self.max_bytes)
