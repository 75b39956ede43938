"""Feature pyramid with a pluggable top-down upsampler.

Two layouts, both with mmdet's parameter names:

* ``fpn_carafe`` (mmdet FPN_CARAFE, and LDA-AQU's FPN_LAU which copies it): the extra level is a
  stride-2 3x3 conv on C5 (``lateral_convs.4``) that *starts* the top-down path, so there are four
  upsamplers: ``upsample_modules.3`` takes P6 -> P5, ``.2`` P5 -> P4, ``.1`` P4 -> P3, ``.0`` P3 -> P2.
  Five 3x3 output convs, no activations.
* ``fpn`` (plain mmdet FPN, and the DySample detection repo's FPN_UPSAMPLE): three upsamplers
  (``.2`` P5 -> P4 ... ``.0`` P3 -> P2), four output convs, P6 = max-pool(1, stride 2) of P5.

Parameter-free upsamplers (nearest, bilinear) still occupy ``upsample_modules.N`` but hold no keys,
exactly like mmdet's nn.Upsample modules. Guided upsamplers (``spec.needs_guide``) receive the raw
1x1 lateral of the finer level as guide (for P6 -> P5 that is L5): the convention of the upsampler
papers' FPN code (tiny-smart/detection-with-upsamplers, ``FPN_UPSAMPLE``; docs/mmdet-fidelity.md).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

import upsamplers

from .layers import ConvModule

NECK_TYPES = ("fpn_carafe", "fpn")


def _crop_as(src: Tensor, like: Tensor) -> Tensor:
    """Crop ``src`` to ``like``'s spatial size from the top-left (mmdet FPN_CARAFE.slice_as)."""
    h, w = like.shape[-2:]
    if src.shape[-2] < h or src.shape[-1] < w:
        raise ValueError(
            f"upsampled map {tuple(src.shape[-2:])} is smaller than the lateral {(h, w)}; "
            "an upsampler must give exactly 2x its input"
        )
    return src[..., :h, :w]


class UpsamplerFPN(nn.Module):
    """FPN neck whose top-down upsampling is any registered upsampler."""

    def __init__(
        self,
        in_channels: tuple[int, ...] = (256, 512, 1024, 2048),
        out_channels: int = 256,
        upsampler: str = "nearest",
        upsampler_options: Mapping[str, Any] | None = None,
        neck_type: str = "fpn_carafe",
    ) -> None:
        super().__init__()
        if neck_type not in NECK_TYPES:
            raise ValueError(f"unknown neck {neck_type!r}; valid: {', '.join(NECK_TYPES)}")
        self.neck_type = neck_type
        self.upsampler = upsampler
        self.upsampler_options = dict(upsampler_options or {})
        self.needs_guide = upsamplers.get_spec(upsampler).needs_guide
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        if neck_type == "fpn_carafe":
            self.lateral_convs.append(ConvModule(in_channels[-1], out_channels, 3, stride=2, padding=1))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1))
        steps = len(self.lateral_convs) - 1
        self.upsample_modules = nn.ModuleList(
            upsamplers.build(upsampler, out_channels, scale=2, **self.upsampler_options) for _ in range(steps)
        )

    def _upsample(self, index: int, x: Tensor, guide: Tensor) -> Tensor:
        module = self.upsample_modules[index]
        if not self.needs_guide:
            return module(x)
        # A guide must be exactly 2x the input; when padding is not a multiple of 64 the conv-made P6
        # can be half a pixel short of L5, so extend the guide by edge replication, then crop.
        h, w = 2 * x.shape[-2], 2 * x.shape[-1]
        if guide.shape[-2:] != (h, w):
            guide = F.pad(guide, (0, w - guide.shape[-1], 0, h - guide.shape[-2]), mode="replicate")
        return module(x, guide)

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        c2_to_c5 = list(inputs)
        raw = [conv(c) for conv, c in zip(self.lateral_convs, c2_to_c5)]
        if self.neck_type == "fpn_carafe":
            raw.append(self.lateral_convs[-1](c2_to_c5[-1]))
        laterals = list(raw)
        for i in range(len(laterals) - 1, 0, -1):
            up = self._upsample(i - 1, laterals[i], raw[i - 1])
            laterals[i - 1] = laterals[i - 1] + _crop_as(up, laterals[i - 1])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        if self.neck_type == "fpn":
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
