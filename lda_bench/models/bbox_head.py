"""Shared2FCBBoxHead (mmdet): two shared FCs, an 81-way classifier with background LAST, 80x4 deltas."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .box_coder import decode_deltas
from .config import RCNNTestConfig
from .nms import multiclass_nms

# mmdet's RCNN DeltaXYWHBBoxCoder target_stds for the R50-FPN configs.
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


class Shared2FCBBoxHead(nn.Module):
    def __init__(self, num_classes: int = 80, in_channels: int = 256, roi_size: int = 7, fc_channels: int = 1024) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, num_classes * 4)

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits (N x K+1, background last) and class-major deltas (N x 4K)."""
        x = roi_feats.flatten(1)  # C x 7 x 7 order, as the checkpoint's shared_fcs.0 expects
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    def rescaled_boxes(
        self,
        rois: Tensor,
        cls_logits: Tensor,
        deltas: Tensor,
        img_shape: tuple[int, int],
        scale_factor: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Class-specific boxes (N x 4K, original-image coordinates) and softmax scores (N x K+1) of
        one image before NMS: mmdet get_bboxes(rescale=True, cfg=None), as Panoptic FPN calls it.

        Softmax over K+1; decode per class against the proposals, clip to the resized image, divide
        by the (w, h, w, h) scale factor.
        """
        scores = F.softmax(cls_logits, dim=-1)
        boxes = decode_deltas(rois[:, 1:], deltas, stds=RCNN_STDS, max_shape=img_shape)
        if boxes.shape[0] > 0:
            boxes = (boxes.view(boxes.shape[0], -1, 4) / scale_factor.to(boxes)).view(boxes.shape[0], -1)
        return boxes, scores

    def detections(
        self,
        rois: Tensor,
        cls_logits: Tensor,
        deltas: Tensor,
        img_shape: tuple[int, int],
        scale_factor: Tensor,
        cfg: RCNNTestConfig,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Boxes in original-image coordinates, scores and labels of one image (mmdet get_bboxes):
        :meth:`rescaled_boxes`, then multiclass NMS."""
        boxes, scores = self.rescaled_boxes(rois, cls_logits, deltas, img_shape, scale_factor)
        return multiclass_nms(boxes, scores, cfg.score_thr, cfg.iou_threshold, cfg.max_per_img)
