"""NMS with mmcv's batched semantics, and mmdet's multiclass NMS for the box head."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import nms

# mmcv.ops.batched_nms offsets boxes per class below this many boxes and loops per class above it.
MMCV_SPLIT_THR = 10000


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Indices kept by per-``idxs`` NMS, sorted by decreasing score.

    Below 10,000 boxes this is mmcv's coordinate-offset trick (so IoUs carry the same float
    rounding as mmcv's); above it, a per-class loop, as mmcv does.
    """
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    if boxes.shape[0] < MMCV_SPLIT_THR:
        offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + offsets[:, None], scores, iou_threshold)
    return tv_batched_nms(boxes, scores, idxs, iou_threshold)


def multiclass_nms(
    boxes: Tensor, scores: Tensor, score_thr: float, iou_threshold: float, max_num: int,
    class_agnostic: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet 2.x multiclass_nms.

    Args:
        boxes: N x 4K class-specific boxes (or N x 4 shared).
        scores: N x (K+1) softmax scores, background last.
        class_agnostic: one NMS over all classes (mmcv ``nms_cfg.class_agnostic``, Panoptic FPN's
            test setting) instead of one per class. mmcv still splits per class above 10,000
            boxes; with Panoptic FPN's score threshold 0.6 at most one class per proposal passes,
            so that never happens there and is not copied.

    Returns:
        boxes (M x 4), scores (M), labels (M) in [0, K), sorted by decreasing score, M <= max_num.
    """
    num_classes = scores.shape[1] - 1
    n = scores.shape[0]
    if n == 0:  # no proposals at all (e.g. every RPN box was degenerate)
        return boxes.new_zeros(0, 4), scores.new_zeros(0), torch.zeros(0, dtype=torch.long, device=scores.device)
    if boxes.shape[1] > 4:
        boxes = boxes.view(n, num_classes, 4)
    else:
        boxes = boxes[:, None].expand(n, num_classes, 4)
    fg_scores = scores[:, :-1]
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(fg_scores)
    boxes = boxes.reshape(-1, 4)
    fg_scores = fg_scores.reshape(-1)
    labels = labels.reshape(-1)
    keep = (fg_scores > score_thr).nonzero(as_tuple=False).squeeze(1)
    boxes, fg_scores, labels = boxes[keep], fg_scores[keep], labels[keep]
    if boxes.numel() == 0:
        return boxes.new_zeros(0, 4), fg_scores.new_zeros(0), labels.new_zeros(0)
    if class_agnostic:
        kept = nms(boxes, fg_scores, iou_threshold)
    else:
        kept = batched_nms(boxes, fg_scores, labels, iou_threshold)
    if max_num > 0:
        kept = kept[:max_num]
    return boxes[kept], fg_scores[kept], labels[kept]
