"""mmdet 2.x AnchorGenerator (float anchors, centre offset 0), not torchvision's rounded one.

Base anchors of a level with base size ``s`` (= the stride), ratio ``r`` and scale ``k``:
``h = s * sqrt(r) * k``, ``w = s / sqrt(r) * k``, centred on (0, 0) (the top-left pixel's corner
convention of mmdet >= 2.0), kept as floats (mmdet/core/anchor/anchor_generator.py). torchvision
rounds the half sizes instead (torchvision/models/detection/anchor_utils.py). Grid order: (y, x,
anchor), ratio-major anchors.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class AnchorGenerator:
    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        scales: Sequence[float] = (8.0,),
    ) -> None:
        self.strides = tuple(int(s) for s in strides)
        # float32 like mmdet's torch.Tensor(ratios), so the anchors match it bit for bit.
        self.ratios = torch.tensor(list(ratios), dtype=torch.float32)
        self.scales = torch.tensor(list(scales), dtype=torch.float32)
        self.base_anchors = [self.base_anchors_for(s) for s in self.strides]

    @property
    def num_anchors(self) -> int:
        return len(self.ratios) * len(self.scales)

    def base_anchors_for(self, base_size: int) -> Tensor:
        h_ratios = torch.sqrt(self.ratios)
        w_ratios = 1 / h_ratios
        ws = (base_size * w_ratios[:, None] * self.scales[None, :]).view(-1)
        hs = (base_size * h_ratios[:, None] * self.scales[None, :]).view(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)

    def grid_anchors(self, featmap_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Anchors of every level, each (H*W*A) x 4 in (y, x, anchor) order."""
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps, got {len(featmap_sizes)}")
        out = []
        for (h, w), stride, base in zip(featmap_sizes, self.strides, self.base_anchors):
            shift_x = torch.arange(w, device=device) * stride
            shift_y = torch.arange(h, device=device) * stride
            xx = shift_x.repeat(h)
            yy = shift_y.view(-1, 1).repeat(1, w).view(-1)
            shifts = torch.stack([xx, yy, xx, yy], dim=-1).to(base.dtype)
            out.append((base.to(device)[None, :, :] + shifts[:, None, :]).view(-1, 4))
        return out
