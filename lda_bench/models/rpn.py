"""RPN head (mmdet RPNHead, sigmoid objectness) and its test-time proposal post-processing."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchors import AnchorGenerator
from .box_coder import decode_deltas
from .config import RPNTestConfig
from .nms import batched_nms


class RPNHead(nn.Module):
    def __init__(self, in_channels: int = 256, anchor_generator: AnchorGenerator | None = None) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        a = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(in_channels, a, 1)
        self.rpn_reg = nn.Conv2d(in_channels, a * 4, 1)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw objectness logits (B x A x H x W) and deltas (B x 4A x H x W) per level."""
        scores, deltas = [], []
        for x in feats:
            x = F.relu(self.rpn_conv(x))
            scores.append(self.rpn_cls(x))
            deltas.append(self.rpn_reg(x))
        return scores, deltas

    def proposals(
        self,
        scores: Sequence[Tensor],
        deltas: Sequence[Tensor],
        img_shapes: Sequence[tuple[int, int]],
        cfg: RPNTestConfig,
    ) -> list[Tensor]:
        """Per image, an N x 5 tensor of proposals (x1, y1, x2, y2, score), best first.

        mmdet 2.x RPNHead._get_bboxes: per level, the top ``nms_pre`` sigmoid scores; decode with
        stds 1 and clip to the resized image; drop boxes with w or h <= min_bbox_size; NMS at 0.7 with
        the level as class; keep ``max_per_img``.
        """
        sizes = [tuple(s.shape[-2:]) for s in scores]
        anchors = self.anchor_generator.grid_anchors(sizes, device=scores[0].device)
        results = []
        for b, img_shape in enumerate(img_shapes):
            lvl_scores, lvl_deltas, lvl_anchors, lvl_ids = [], [], [], []
            for level, (s, d, a) in enumerate(zip(scores, deltas, anchors)):
                s = s[b].permute(1, 2, 0).reshape(-1).sigmoid()
                d = d[b].permute(1, 2, 0).reshape(-1, 4)
                if 0 < cfg.nms_pre < s.shape[0]:
                    s, order = s.sort(descending=True)
                    s, order = s[: cfg.nms_pre], order[: cfg.nms_pre]
                    d, a = d[order], a[order]
                lvl_scores.append(s)
                lvl_deltas.append(d)
                lvl_anchors.append(a)
                lvl_ids.append(torch.full_like(s, level, dtype=torch.long))
            s = torch.cat(lvl_scores)
            ids = torch.cat(lvl_ids)
            boxes = decode_deltas(torch.cat(lvl_anchors), torch.cat(lvl_deltas), max_shape=img_shape)
            if cfg.min_bbox_size >= 0:
                w = boxes[:, 2] - boxes[:, 0]
                h = boxes[:, 3] - boxes[:, 1]
                valid = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
                if not bool(valid.all()):
                    boxes, s, ids = boxes[valid], s[valid], ids[valid]
            keep = batched_nms(boxes, s, ids, cfg.iou_threshold)[: cfg.max_per_img]
            results.append(torch.cat([boxes[keep], s[keep, None]], dim=1))
        return results
