"""IndexNet: learned index maps for upsampling (Lu et al., ICCV 2019 / TPAMI 2020).

Holistic index block (poppinace/indexnet_matting, ``HolisticIndexBlock``) as used in FPN comparisons:
the index comes from the high-resolution guide only. With ``use_nonlinear`` and ``use_context`` (the
defaults, the variant whose parameter count, 2,100,224 at C=256, matches the published tables):

    logits = Conv1x1(ReLU6(BN(Conv4x4/2(guide))))     4 x H x W, no biases
    index  = pixel_shuffle(sigmoid(logits), 2)         1 x 2H x 2W (the decoder index)
    out    = index * nearest_up2(x)                    broadcast over the channels

The encoder index (softmax of the sigmoid, for index pooling) has no use in an FPN and is omitted.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .guided import GuidedUpsampler
from .registry import register


@register(
    "indexnet",
    needs_guide=True,
    reference="Lu et al., IndexNet (Indices Matter), ICCV 2019; holistic nonlinear index block with context",
)
class IndexNet(GuidedUpsampler):
    """Holistic index block: a sigmoid index map from the guide times the nearest-upsampled input.

    Keys: ``indexnet.0.weight`` [2*C_guide, C_guide, 4, 4], ``indexnet.1.*`` (BatchNorm),
    ``indexnet.3.weight`` [4, 2*C_guide, 1, 1]; with ``use_nonlinear=False`` a single conv,
    ``indexnet.weight`` [4, C_guide, k, k].
    """

    supported_scales = (2,)  # stride-2 index conv and a 2x2 pixel shuffle

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        use_nonlinear: bool = True,
        use_context: bool = True,
    ) -> None:
        super().__init__(channels, scale, guide_channels)
        cg = self.guide_channels
        # 4x4 / pad 1 (context) or 2x2 / pad 0: both map 2H x 2W to H x W at stride 2.
        kernel, padding = (4, 1) if use_context else (2, 0)
        self.use_nonlinear = use_nonlinear
        self.use_context = use_context
        if use_nonlinear:
            self.indexnet: nn.Module = nn.Sequential(
                nn.Conv2d(cg, 2 * cg, kernel, stride=2, padding=padding, bias=False),
                nn.BatchNorm2d(2 * cg),
                nn.ReLU6(inplace=True),
                nn.Conv2d(2 * cg, 4, 1, bias=False),
            )
        else:
            self.indexnet = nn.Conv2d(cg, 4, kernel, stride=2, padding=padding, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The matting models' _initialize_weights: He-normal with fan-out, unit BatchNorm.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def index(self, guide: Tensor) -> Tensor:
        """The decoder index map, B x 1 x 2H x 2W, values in (0, 1)."""
        return F.pixel_shuffle(self.indexnet(guide).sigmoid(), 2)

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        assert guide is not None
        return self.index(guide) * F.interpolate(x, scale_factor=2, mode="nearest")
