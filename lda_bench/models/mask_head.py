"""FCNMaskHead (mmdet) and mmdet's mask pasting.

Pasting follows mmdet 2.x ``_do_paste_mask`` as it runs on a GPU (no cropping to the box): each
image pixel centre (+0.5) is mapped into the box, normalised to [-1, 1] and bilinearly sampled from
the 28x28 probabilities with ``grid_sample(align_corners=False)`` and zero padding; a pixel belongs to
the mask when the probability is >= 0.5. torchvision's paste_masks_in_image (1-px padding, 30/28
box expansion, integer boxes, interpolate) gives different masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import upsamplers

from .layers import ConvModule

# The x2 upsampler of the mask head (mmdet FCNMaskHead ``upsample_cfg``): the stock 2x2 stride-2
# deconvolution followed by a ReLU, or CARAFE (mmdet configs/carafe/mask_rcnn_r50_fpn_carafe_1x_coco.py:
# up_kernel 5, 1 group, encoder 3x3, 64 compressed channels), which mmdet follows with no ReLU.
MASK_HEAD_UPSAMPLERS = ("deconv", "carafe")
_MASK_HEAD_CARAFE = {"up_kernel": 5, "up_group": 1, "encoder_kernel": 3, "encoder_dilation": 1,
                     "compressed_channels": 64}


class FCNMaskHead(nn.Module):
    def __init__(self, num_classes: int = 80, channels: int = 256, num_convs: int = 4,
                 upsampler: str = "deconv") -> None:
        super().__init__()
        if upsampler not in MASK_HEAD_UPSAMPLERS:
            raise ValueError(f"unknown mask head upsampler {upsampler!r}; valid: {', '.join(MASK_HEAD_UPSAMPLERS)}")
        self.num_classes = num_classes
        self.upsampler = upsampler
        self.convs = nn.ModuleList(ConvModule(channels, channels, 3, padding=1, relu=True) for _ in range(num_convs))
        if upsampler == "deconv":
            self.upsample: nn.Module = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        else:
            self.upsample = upsamplers.build("carafe", channels=channels, **_MASK_HEAD_CARAFE)
        self.conv_logits = nn.Conv2d(channels, num_classes, 1)

    def forward(self, roi_feats: Tensor) -> Tensor:
        """Per-class mask logits, N x K x 28 x 28 (no background channel)."""
        x = roi_feats
        for conv in self.convs:
            x = conv(x)
        x = self.upsample(x)
        if self.upsampler == "deconv":
            x = F.relu(x)
        return self.conv_logits(x)


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5) -> Tensor:
    """Paste N x M x M mask probabilities into N x height x width boolean masks at ``boxes`` (N x 4).

    Equal to mmdet's un-cropped GPU path; to save memory each mask is only evaluated over the
    pixels where grid_sample can be non-zero (the box grown by half a mask cell), the rest is 0.
    """
    n, m = probs.shape[0], probs.shape[-1]
    out = torch.zeros(n, height, width, dtype=torch.bool, device=probs.device)
    boxes = boxes.float()
    for i in range(n):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        bw, bh = x1 - x0, y1 - y0
        xa, xb = _support(x0, x1, bw, m, width)
        ya, yb = _support(y0, y1, bh, m, height)
        if xa >= xb or ya >= yb:
            continue
        out[i, ya:yb, xa:xb] = _sample_box(probs[i], boxes[i], ya, yb, xa, xb) >= threshold
    return out


def _support(lo: float, hi: float, size: float, m: int, limit: int) -> tuple[int, int]:
    """Pixel range where zero-padded bilinear sampling of the box can be non-zero: the box grown by
    half a mask cell (plus one pixel of margin). A zero-size box maps every pixel to the mask centre
    in mmdet (its inf coordinates become 0), so it spans the whole image."""
    if size <= 0:
        return 0, limit
    return max(0, math.floor(lo - size / (2 * m)) - 1), min(limit, math.ceil(hi + size / (2 * m)) + 1)


def _sample_box(prob: Tensor, box: Tensor, ya: int, yb: int, xa: int, xb: int) -> Tensor:
    """mmdet _do_paste_mask for one mask over image rows ya:yb and columns xa:xb."""
    device = prob.device
    x0, y0, x1, y1 = box[0:1], box[1:2], box[2:3], box[3:4]
    img_y = torch.arange(ya, yb, device=device, dtype=torch.float32) + 0.5
    img_x = torch.arange(xa, xb, device=device, dtype=torch.float32) + 0.5
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    # Degenerate boxes give inf; mmdet replaces those coordinates with 0.
    img_x = torch.where(torch.isinf(img_x), torch.zeros_like(img_x), img_x)
    img_y = torch.where(torch.isinf(img_y), torch.zeros_like(img_y), img_y)
    gx = img_x[None, :].expand(img_y.shape[0], img_x.shape[0])
    gy = img_y[:, None].expand(img_y.shape[0], img_x.shape[0])
    grid = torch.stack([gx, gy], dim=2)[None]
    return F.grid_sample(prob[None, None].float(), grid, align_corners=False)[0, 0]
