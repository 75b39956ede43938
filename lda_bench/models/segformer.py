"""SegFormer-B1 (mmseg ``EncoderDecoder`` + ``SegformerHead``) with a pluggable upsampler.

Parameter names are mmseg's, so an mmseg SegFormer checkpoint's ``state_dict`` loads with
``strict=True``: ``backbone.*`` (see :mod:`lda_bench.models.mix_transformer`) and
``decode_head.convs.{0..3}.conv.weight`` / ``.bn.*`` (1x1 conv, BN, ReLU per level),
``decode_head.fusion_conv.conv.weight`` / ``.bn.*`` and ``decode_head.conv_seg.{weight,bias}``.

**Upsampling in the decode head.** The stock head (``upsampler="bilinear"``, the default) embeds
the four levels (strides 4, 8, 16, 32) to 256 channels and resizes the three coarse ones straight
to the stride-4 size with one bilinear resize each (align_corners=False); that is mmseg's head
and the "bilinear" baseline of the FADE/SAPA/DySample tables. Any other registered upsampler
replaces those three resizes with **six x2 modules** ``decode_head.upsample_modules.{0..5}``, as
in FADE's SegFormer head and tiny-smart's ``SegformerHead_Upsample``:

* stride 32 -> 4 through modules 0, 1, 2;
* stride 16 -> 4 through modules 3, 4;
* stride 8 -> 4 through module 5.

Each module works on 256 channels. A guided upsampler (``spec.needs_guide``) receives as guide
the embedded feature of the level it upsamples to (the finer ``convs`` output): module 0 gets the
stride-16 embedding, 1 the stride-8, 2 the stride-4; module 3 stride 8, 4 stride 4; 5 stride 4.
Where the input size is not a multiple of 32 a x2 step can overshoot the finer level by a row or
column: the output is cropped top-left to that level (like mmdet's FPN_CARAFE), and a guide that
is one short is padded by edge replication first so the module sees an exact x2 pair. Papers
evaluate these heads on AlignedResize inputs (multiples of 32), where neither happens.
To chain six plain bilinear x2 modules instead of the stock resize, name the class:
``"upsamplers.interpolation:Bilinear"``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import upsamplers

from .mix_transformer import MIT_B1, MiTConfig, MixVisionTransformer

STOCK_UPSAMPLER = "bilinear"
NUM_UPSAMPLE_MODULES = 6
# (level index of the input, module indices applied in turn); level i has stride 4 * 2**i.
UPSAMPLE_CHAINS: tuple[tuple[int, tuple[int, ...]], ...] = ((3, (0, 1, 2)), (2, (3, 4)), (1, (5,)))


class ConvBNReLU(nn.Module):
    """mmcv ``ConvModule(norm_cfg=BN)``: conv without bias, BatchNorm, ReLU (keys conv / bn)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


def _pad_to(x: Tensor, height: int, width: int) -> Tensor:
    pad_h, pad_w = height - x.shape[2], width - x.shape[3]
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class SegformerHead(nn.Module):
    """The all-MLP decode head; returns class logits at stride 4."""

    def __init__(
        self,
        in_channels: Sequence[int] = MIT_B1.stage_channels,
        channels: int = 256,
        num_classes: int = 150,
        dropout_ratio: float = 0.1,
        upsampler: str | None = STOCK_UPSAMPLER,
        upsampler_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"SegformerHead expects 4 input levels, got {len(in_channels)}")
        self.num_classes = num_classes
        self.upsampler = upsampler or STOCK_UPSAMPLER
        self.upsampler_options = dict(upsampler_options or {})
        self.convs = nn.ModuleList(ConvBNReLU(c, channels) for c in in_channels)
        self.fusion_conv = ConvBNReLU(channels * len(in_channels), channels)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.guided = False
        if self.upsampler == STOCK_UPSAMPLER:
            if upsampler_options:
                raise ValueError(
                    "the stock 'bilinear' head resizes in one step and takes no upsampler options; "
                    "name 'upsamplers.interpolation:Bilinear' for six configurable x2 modules"
                )
        else:
            spec = upsamplers.get_spec(self.upsampler)
            self.guided = spec.needs_guide
            options = dict(upsampler_options or {})
            self.upsample_modules = nn.ModuleList(
                upsamplers.build(self.upsampler, channels, scale=2, **options) for _ in range(NUM_UPSAMPLE_MODULES)
            )

    def _up_step(self, module: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        height, width = target.shape[2:]
        if self.guided:
            guide = _pad_to(target, 2 * x.shape[2], 2 * x.shape[3])
            out = module(x, guide)
        else:
            out = module(x)
        if out.shape[2] < height or out.shape[3] < width:
            raise ValueError(
                f"upsampler {self.upsampler!r} turned {tuple(x.shape[2:])} into {tuple(out.shape[2:])}, "
                f"smaller than the next level {height} x {width}; the head needs exact x2 steps"
            )
        return out[:, :, :height, :width]

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        embedded = [conv(f) for conv, f in zip(self.convs, feats)]
        outs = list(embedded)
        if self.upsampler == STOCK_UPSAMPLER:
            size = embedded[0].shape[2:]
            outs = [F.interpolate(e, size=size, mode="bilinear", align_corners=False) for e in embedded]
        else:
            for level, indices in UPSAMPLE_CHAINS:
                x = embedded[level]
                for step, index in enumerate(indices):
                    x = self._up_step(self.upsample_modules[index], x, embedded[level - 1 - step])
                outs[level] = x
        out = self.fusion_conv(torch.cat(outs, dim=1))  # order [stride 4, 8, 16, 32], as mmseg
        return self.conv_seg(self.dropout(out))


class SegFormer(nn.Module):
    """mmseg ``EncoderDecoder``: ``forward`` returns logits resized to the input's size."""

    def __init__(self, backbone: MixVisionTransformer, decode_head: SegformerHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    def forward(self, img: Tensor) -> Tensor:
        logits = self.decode_head(self.backbone(img))
        return F.interpolate(logits, size=img.shape[2:], mode="bilinear", align_corners=False)


def build_segformer(
    config: MiTConfig = MIT_B1,
    upsampler: str | None = STOCK_UPSAMPLER,
    upsampler_options: Mapping[str, Any] | None = None,
    num_classes: int = 150,
    channels: int = 256,
) -> SegFormer:
    """A SegFormer with an MiT encoder of ``config``, in eval mode."""
    head = SegformerHead(config.stage_channels, channels, num_classes, upsampler=upsampler,
                         upsampler_options=upsampler_options)
    return SegFormer(MixVisionTransformer(config), head).eval()


def build_segformer_b1(
    upsampler: str | None = STOCK_UPSAMPLER,
    upsampler_options: Mapping[str, Any] | None = None,
    num_classes: int = 150,
) -> SegFormer:
    """SegFormer-B1 as mmseg's ``segformer_mit-b1_512x512_160k_ade20k`` (eval mode, random weights)."""
    return build_segformer(MIT_B1, upsampler, upsampler_options, num_classes)


def example_inputs(
    batch_size: int = 1,
    height: int = 512,
    width: int = 512,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor]:
    """Positional inputs for profiling ``SegFormer.forward`` (ADE20K training crop: 512 x 512)."""
    return (torch.randn(batch_size, 3, height, width, device=device, dtype=dtype),)
