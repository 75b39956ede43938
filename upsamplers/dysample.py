"""DySample: upsampling by dynamic point sampling (Liu et al., ICCV 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Upsampler
from .registry import register


@register("dysample", reference="Liu, Lu, Fu, Cao, DySample, ICCV 2023")
class DySample(Upsampler):
    """One bilinear sample per output pixel at a learned offset from its bilinear position.

    ``style='lp'`` predicts offsets at low resolution then pixel-shuffles them; ``'pl'`` shuffles
    first (4x fewer parameters). ``dyscope=True`` scales offsets by 0.5*sigmoid(scope(x)) instead
    of a fixed 0.25 (DySample+). Defaults are the detection configuration: lp, 4 groups, dynamic.
    Keys: ``offset.*``, ``scope.*`` and the persistent buffer ``init_pos``.
    """

    def __init__(
        self,
        channels: int,
        scale: int = 2,
        style: str = "lp",
        groups: int = 4,
        dyscope: bool = True,
        scope_bias: bool = True,
    ) -> None:
        super().__init__(channels, scale)
        if style not in ("lp", "pl"):
            raise ValueError(f"dysample style must be 'lp' or 'pl', got {style!r}")
        if groups < 1 or channels % groups:
            raise ValueError(f"dysample groups ({groups}) must divide channels ({channels})")
        if style == "pl" and channels % (scale * scale):
            raise ValueError(f"dysample style 'pl' needs channels divisible by scale^2 = {scale * scale}, got {channels}")
        self.style = style
        self.groups = groups
        conv_in = channels // (scale * scale) if style == "pl" else channels
        conv_out = 2 * groups if style == "pl" else 2 * groups * scale * scale
        self.offset = nn.Conv2d(conv_in, conv_out, 1)
        self.scope = nn.Conv2d(conv_in, conv_out, 1, bias=scope_bias) if dyscope else None
        self.register_buffer("init_pos", self._init_pos())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)
            if self.scope.bias is not None:
                nn.init.zeros_(self.scope.bias)

    def _init_pos(self) -> Tensor:
        # Sub-pixel centres in low-res pixels, layout [component x|y][group][sub-row][sub-col].
        s = self.scale
        h = (torch.arange(s, dtype=torch.float32) - (s - 1) / 2) / s
        x_part = h.view(1, s).expand(s, s)  # varies along sub-columns
        y_part = h.view(s, 1).expand(s, s)  # varies along sub-rows
        pos = torch.stack([x_part, y_part]).unsqueeze(1).expand(2, self.groups, s, s)
        return pos.reshape(1, -1, 1, 1).clone()

    def offsets(self, x: Tensor) -> Tensor:
        """Low-res offsets in low-res pixels, B x 2*G*s^2 x H x W, init_pos included."""
        s = self.scale
        if self.style == "pl":
            hr = F.pixel_shuffle(x, s)
            raw = self.offset(hr)
            if self.scope is not None:
                return F.pixel_unshuffle(raw * self.scope(hr).sigmoid(), s) * 0.5 + self.init_pos
            return F.pixel_unshuffle(raw, s) * 0.25 + self.init_pos
        raw = self.offset(x)
        if self.scope is not None:
            return raw * self.scope(x).sigmoid() * 0.5 + self.init_pos
        return raw * 0.25 + self.init_pos

    def upsample(self, x: Tensor, guide: Tensor | None) -> Tensor:
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        offset = self.offsets(x).view(b, 2, g * s * s, h, w)
        ys = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
        xs = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
        centres = torch.stack(
            [xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)]
        ).view(1, 2, 1, h, w)
        size = torch.tensor([w, h], device=x.device, dtype=x.dtype).view(1, 2, 1, 1, 1)
        coords = 2 * (centres + offset) / size - 1  # align_corners=False normalisation
        # 4-D pixel shuffle (the 5-D form fails in backward on permuted gradients).
        grid = F.pixel_shuffle(coords.view(b, 2 * g * s * s, h, w), s).view(b, 2, g, s * h, s * w)
        grid = grid.permute(0, 2, 3, 4, 1).reshape(b * g, s * h, s * w, 2)
        out = F.grid_sample(
            x.reshape(b * g, c // g, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.view(b, c, s * h, s * w)
