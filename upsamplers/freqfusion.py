"""FreqFusion: frequency-aware feature fusion (Chen et al., TPAMI 2024), in its FPN form.

A *fusion* module, not a pure upsampler: given the fused coarser map x (the low-res "lr" feature)
and the raw finer lateral (the guide, "hr"), it returns the new finer lateral

    out = hr_enhanced + lr_upsampled

which a neck uses *instead of* ``lateral + up(x)`` (``fuses_guide = True``; see
:func:`upsamplers.guided.fpn_merge`). This follows ``FreqFusion`` of Linwei-Chen/FreqFusion with the
detection configuration of ``FreqFusionCARAFEFPN`` (scale_factor 1 kernels, semi_conv,
comp_feat_upsample, high- and low-pass on, hr_residual, feature_resample with 4 groups):

1. compress hr and lr to (C_hr + C_lr) / 8 channels (1x1 convs);
2. AHPF, initial: 3x3 kernels from compressed hr (``content_encoder2``), Hamming-windowed and
   renormalised softmax; compressed hr <- 2 * hr_c - lowpass(hr_c);
3. ALPF: 5x5 kernel logits from compressed hr (``content_encoder``) plus the lr logits reassembled
   to high res with the initial hr kernels; normalised, they upsample lr (CARAFE, scale 2) and the
   lr high-pass logits, which join the hr high-pass logits;
4. hr_enhanced = (hr - lowpass(hr)) + hr with the final 3x3 kernels;
5. LocalSimGuidedSampler (a DySample-like resampler driven by the features and 8 cosine-similarity
   maps, dilation 2, of both compressed maps) resamples lr_upsampled.

All reassembly is the mmcv carafe (zero padding), as with mmcv installed; the official pure-PyTorch
fallback pads with *reflect* and is therefore not reproduced. 104,690 parameters at C=256.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .guided import GuidedUpsampler, odd_kernel, positive_int, xavier_convs
from .ops.reassemble import DEFAULT_MAX_BYTES, carafe_reassemble
from .registry import register

SIM_WINDOW = 3  # 3x3 neighbourhood for the cosine similarities, dilation 2 -> 8 maps
SIM_DILATION = 2


def hamming2d(size: int) -> Tensor:
    """Outer product of two numpy-style Hamming windows (0.54 - 0.46 cos(2 pi n / (M - 1))), 1 x 1 x M x M."""
    if size == 1:
        window = torch.ones(1, dtype=torch.float64)
    else:
        n = torch.arange(size, dtype=torch.float64)
        window = 0.54 - 0.46 * torch.cos(2 * math.pi * n / (size - 1))
    return torch.outer(window, window).float()[None, None]


def neighbour_cosine_similarity(x: Tensor, window: int = SIM_WINDOW, dilation: int = SIM_DILATION) -> Tensor:
    """Cosine similarity of every pixel with its window*window - 1 dilated neighbours (zero padded).

    B x (window^2 - 1) x H x W, neighbours in row-major order without the centre (the order of
    ``F.unfold``, as in the official ``compute_similarity``).
    """
    h, w = x.shape[2:]
    pad = (window // 2) * dilation
    padded = F.pad(x, (pad, pad, pad, pad))
    maps = []
    for t in range(window * window):
        if t == window * window // 2:
            continue
        dy, dx = divmod(t, window)
        neighbour = padded[:, :, dy * dilation : dy * dilation + h, dx * dilation : dx * dilation + w]
        maps.append(F.cosine_similarity(x, neighbour, dim=1))
    return torch.stack(maps, dim=1)


class LocalSimGuidedSampler(nn.Module):
    """FreqFusion's offset generator and resampler (official name; the neck calls it ``dysampler``).

    Offsets at low res, lp style: ``(offset(lr) + unshuffle(hr_offset(hr))) *
    sigmoid(direct_scale(lr) + unshuffle(hr_direct_scale(hr))) + init_pos``, where lr and hr are the
    GroupNorm-ed compressed maps concatenated with their 8 similarity maps. The sampled feature is
    the already upsampled lr map (bilinear, border padding, align_corners=False).
    """

    def __init__(self, in_channels: int, groups: int = 4, kernel_size: int = 3, norm: bool = True) -> None:
        super().__init__()
        self.groups = groups
        feat = in_channels + SIM_WINDOW * SIM_WINDOW - 1
        pad = kernel_size // 2
        self.offset = nn.Conv2d(feat, 2 * groups * 4, kernel_size, padding=pad)
        self.direct_scale = nn.Conv2d(feat, 2 * groups * 4, kernel_size, padding=pad)
        self.hr_offset = nn.Conv2d(feat, 2 * groups, kernel_size, padding=pad)
        self.hr_direct_scale = nn.Conv2d(feat, 2 * groups, kernel_size, padding=pad)
        self.norm = norm
        if norm:
            if in_channels < 8 or in_channels % (in_channels // 8):
                raise ValueError(
                    f"freqfusion feature_resample_norm uses GroupNorm(C/8, C) on the {in_channels} compressed "
                    "channels; they must be at least 8 and divisible by C // 8"
                )
            self.norm_hr: nn.Module = nn.GroupNorm(in_channels // 8, in_channels)
            self.norm_lr: nn.Module = nn.GroupNorm(in_channels // 8, in_channels)
        else:
            self.norm_hr = nn.Identity()
            self.norm_lr = nn.Identity()
        self.register_buffer("init_pos", self._init_pos())

    def _init_pos(self) -> Tensor:
        # Sub-pixel centres +-0.25 low-res pixels, layout [x|y][group][sub-row][sub-col] (as DySample).
        h = torch.tensor([-0.25, 0.25])
        x_part = h.view(1, 2).expand(2, 2)
        y_part = h.view(2, 1).expand(2, 2)
        pos = torch.stack([x_part, y_part]).unsqueeze(1).expand(2, self.groups, 2, 2)
        return pos.reshape(1, -1, 1, 1).clone()

    def offsets(self, hr_x: Tensor, lr_x: Tensor) -> Tensor:
        """Low-res offsets, B x 2*groups*4 x H x W, in low-res pixels, init_pos included."""
        hr = self.norm_hr(hr_x)
        lr = self.norm_lr(lr_x)
        hr = torch.cat([hr, neighbour_cosine_similarity(hr)], dim=1)
        lr = torch.cat([lr, neighbour_cosine_similarity(lr)], dim=1)
        direction = self.offset(lr) + F.pixel_unshuffle(self.hr_offset(hr), 2)
        scope = (self.direct_scale(lr) + F.pixel_unshuffle(self.hr_direct_scale(hr), 2)).sigmoid()
        return direction * scope + self.init_pos

    def forward(self, hr_x: Tensor, lr_x: Tensor, feat2sample: Tensor) -> Tensor:
        offset = self.offsets(hr_x, lr_x)
        b, _, h, w = offset.shape
        g = self.groups
        # Absolute positions (x, y) in low-res pixels, normalised for align_corners=False; normalised
        # coordinates do not depend on the resolution of the sampled (2x) map.
        xs = torch.arange(w, device=offset.device, dtype=offset.dtype) + 0.5
        ys = torch.arange(h, device=offset.device, dtype=offset.dtype) + 0.5
        pos = offset.view(b, 2, g * 4, h, w)
        gx = 2 * (xs.view(1, 1, 1, w) + pos[:, 0]) / w - 1
        gy = 2 * (ys.view(1, 1, h, 1) + pos[:, 1]) / h - 1
        grid = F.pixel_shuffle(torch.cat([gx, gy], dim=1), 2).view(b, 2, g, 2 * h, 2 * w)
        grid = grid.permute(0, 2, 3, 4, 1).reshape(b * g, 2 * h, 2 * w, 2)
        c = feat2sample.shape[1]
        out = F.grid_sample(
            feat2sample.reshape(b * g, c // g, *feat2sample.shape[2:]),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return out.view(b, c, 2 * h, 2 * w)


@register(
    "freqfusion",
    needs_guide=True,
    reference="Chen et al., Frequency-aware Feature Fusion for Dense Image Prediction, TPAMI 2024",
)
class FreqFusion(GuidedUpsampler):
    """Fusion module: returns hr_enhanced + lr_upsampled, which REPLACES the FPN lateral (fuses_guide).

    Keys: ``hr_channel_compressor.*``, ``lr_channel_compressor.*``, ``content_encoder.*`` (ALPF),
    ``content_encoder2.*`` (AHPF), ``dysampler.{offset,direct_scale,hr_offset,hr_direct_scale,
    norm_hr,norm_lr}.*``, and the buffers ``hamming_lowpass``, ``hamming_highpass``,
    ``dysampler.init_pos``. ``parts(x, guide)`` gives the official triple.
    """

    fuses_guide = True
    supported_scales = (2,)

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        guide_channels: int | None = None,
        lowpass_kernel: int = 5,
        highpass_kernel: int = 3,
        encoder_kernel: int = 3,
        compressed_channels: int | None = None,
        feature_resample: bool = True,
        feature_resample_group: int = 4,
        feature_resample_norm: bool = True,
        hamming_window: bool = True,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        super().__init__(channels, scale, guide_channels, max_bytes)
        self.require_equal_channels("(its output is hr + upsampled lr)")
        self.lowpass_kernel = odd_kernel("freqfusion lowpass_kernel", lowpass_kernel)
        self.highpass_kernel = odd_kernel("freqfusion highpass_kernel", highpass_kernel)
        odd_kernel("freqfusion encoder_kernel", encoder_kernel)
        if compressed_channels is None:
            compressed_channels = (self.guide_channels + channels) // 8  # the neck's compress_ratio 8
        comp = positive_int("freqfusion compressed_channels", compressed_channels)
        self.compressed_channels = comp
        self.hr_channel_compressor = nn.Conv2d(self.guide_channels, comp, 1)
        self.lr_channel_compressor = nn.Conv2d(channels, comp, 1)
        pad = encoder_kernel // 2
        self.content_encoder = nn.Conv2d(comp, lowpass_kernel**2, encoder_kernel, padding=pad)
        self.content_encoder2 = nn.Conv2d(comp, highpass_kernel**2, encoder_kernel, padding=pad)
        self.feature_resample = feature_resample
        if feature_resample:
            group = positive_int("freqfusion feature_resample_group", feature_resample_group)
            if comp % group or channels % group:
                raise ValueError(
                    f"freqfusion feature_resample_group ({group}) must divide channels ({channels}) and "
                    f"compressed_channels ({comp})"
                )
            self.dysampler = LocalSimGuidedSampler(comp, group, encoder_kernel, feature_resample_norm)
        one = torch.ones(1)
        self.register_buffer("hamming_lowpass", hamming2d(lowpass_kernel) if hamming_window else one)
        self.register_buffer("hamming_highpass", hamming2d(highpass_kernel) if hamming_window else one.clone())
        self.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, lowpass_kernel={self.lowpass_kernel}, "
                f"highpass_kernel={self.highpass_kernel}, compressed_channels={self.compressed_channels}, "
                f"feature_resample={self.feature_resample}")

    def reset_parameters(self) -> None:
        # FreqFusion.init_weights: Xavier-uniform on *every* conv -- the sampler's included, which
        # overwrites the sampler's own small/zero init -- then the two kernel encoders normal(0.001).
        xavier_convs(self)
        for m in self.modules():
            if isinstance(m, nn.GroupNorm):
                m.reset_parameters()
        for conv in (self.content_encoder, self.content_encoder2):
            nn.init.normal_(conv.weight, std=0.001)
            nn.init.zeros_(conv.bias)

    @staticmethod
    def normalise_kernels(logits: Tensor, window: Tensor) -> Tensor:
        """Softmax over the k*k taps, times the Hamming window, renormalised to sum 1 per pixel."""
        mask = F.softmax(logits, dim=1) * window.reshape(1, -1, 1, 1)
        return mask / mask.sum(dim=1, keepdim=True)

    def _reassemble(self, x: Tensor, kernels: Tensor, kernel_size: int, scale: int) -> Tensor:
        return carafe_reassemble(x, kernels, kernel_size, scale, self.max_bytes)

    def parts(self, x: Tensor, guide: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The official return value: (low-pass kernels, hr_enhanced, lr_upsampled)."""
        self.check_input(x, guide)
        return self._parts(x, guide)

    def _parts(self, x: Tensor, guide: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lk, hk = self.lowpass_kernel, self.highpass_kernel
        win_lo, win_hi = self.hamming_lowpass, self.hamming_highpass
        hr, lr = guide, x
        hr_c = self.hr_channel_compressor(hr)
        lr_c = self.lr_channel_compressor(lr)
        # Initial AHPF from hr alone sharpens the compressed hr map (x - lowpass(x) is its high band).
        mask_hr_hr = self.content_encoder2(hr_c)
        hr_c = hr_c + hr_c - self._reassemble(hr_c, self.normalise_kernels(mask_hr_hr, win_hi), hk, 1)
        # ALPF logits: hr part plus the lr logits carried to high res by the initial hr low-pass kernels.
        mask_lr_hr = self.content_encoder(hr_c)
        init_lo = self.normalise_kernels(mask_lr_hr, win_lo)
        mask_lr = mask_lr_hr + self._reassemble(self.content_encoder(lr_c), init_lo, lk, 2)
        kernels_lo = self.normalise_kernels(mask_lr, win_lo)
        mask_hr = mask_hr_hr + self._reassemble(self.content_encoder2(lr_c), kernels_lo, lk, 2)
        lr_up = self._reassemble(lr, kernels_lo, lk, 2)
        hr_high = hr - self._reassemble(hr, self.normalise_kernels(mask_hr, win_hi), hk, 1)
        hr_out = hr_high + hr  # hr_residual
        if self.feature_resample:
            lr_up = self.dysampler(hr_c, lr_c, lr_up)
        return kernels_lo, hr_out, lr_up

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        assert guide is not None
        _, hr_out, lr_up = self._parts(x, guide)
        return hr_out + lr_up
