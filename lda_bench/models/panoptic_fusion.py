"""mmdet 2.x ``HeuristicFusionHead``: instance detections + semantic logits -> one panoptic map.

Input: the Panoptic-FPN detections of one image after its panoptic NMS (mmdet test_cfg.panoptic:
score > 0.6, class-agnostic NMS at IoU 0.5, at most 100), their masks pasted at the original
image size, and the semantic logits resized to that size (``semantic_logits_to_image``).

1. Masks are binarised at ``mask_thr_binary`` (>= 0.5) unless already boolean.
2. Instances are laid down by descending score. One whose mask is empty, or whose area is more
   than ``mask_overlap`` (0.5) already taken, is dropped; otherwise it takes its free pixels only.
3. The semantic map is ``argmax + num_things``: stuff channels become labels 80..132 and the
   "things" channel becomes 133, i.e. VOID.
4. The k-th kept instance (k = 1, 2, ...) writes ``label + k * INSTANCE_OFFSET`` over its pixels.
5. Every stuff label (and VOID) with fewer than ``stuff_area_limit`` (4096) pixels becomes VOID.

The result holds mmdet's panoptic values; ``lda_bench.data.coco_panoptic.pan_to_segments`` turns
it into a PNG id map and segments. One deliberate difference: ties in score keep the detection
order (a stable sort), where mmdet's ``argsort`` leaves tie order to the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lda_bench.structures import INSTANCE_OFFSET


@dataclass(frozen=True)
class PanopticTestConfig:
    """mmdet ``panoptic_fpn_r50_fpn_1x_coco`` ``test_cfg.panoptic``."""

    score_thr: float = 0.6
    max_per_img: int = 100
    nms_iou_thr: float = 0.5
    class_agnostic_nms: bool = True
    mask_thr_binary: float = 0.5
    mask_overlap: float = 0.5
    stuff_area_limit: int = 4096


PANOPTIC_FPN_TEST_CFG = PanopticTestConfig()


def lay_masks(scores: Tensor, labels: Tensor, masks: Tensor, overlap_thr: float = 0.5) -> tuple[Tensor, Tensor]:
    """Paste boolean ``masks`` (K x H x W) by descending score into an id map (0 = free, k = k-th kept).

    Returns the id map and the labels of the kept instances, in id order.
    """
    id_map = torch.zeros(masks.shape[-2:], dtype=torch.long, device=masks.device)
    if scores.numel() == 0:
        return id_map, labels.new_zeros((0,), dtype=torch.long)
    order = torch.argsort(scores, descending=True, stable=True)
    kept: list[Tensor] = []
    for index in order.tolist():
        mask = masks[index]
        area = mask.sum()
        if area == 0:
            continue
        taken = id_map > 0
        intersect = (mask & taken).sum()
        if intersect / (area + 1e-5) > overlap_thr:  # mmdet's expression, float32 on purpose
            continue
        id_map[mask & ~taken] = len(kept) + 1
        kept.append(labels[index].long())
    kept_labels = torch.stack(kept) if kept else labels.new_zeros((0,), dtype=torch.long)
    return id_map, kept_labels


def heuristic_fusion(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    masks: Tensor,
    seg_logits: Tensor,
    num_things_classes: int = 80,
    num_stuff_classes: int = 53,
    config: PanopticTestConfig = PANOPTIC_FPN_TEST_CFG,
) -> Tensor:
    """One image's panoptic map (H x W int64, mmdet values; VOID = things + stuff).

    ``boxes`` (K x 4, only checked: mmdet's fusion does not use them), ``scores`` (K),
    ``labels`` (K, thing labels 0..num_things-1), ``masks`` (K x H x W, probabilities or
    booleans at the original size), ``seg_logits`` ((num_stuff + 1) x H x W at the same size).
    """
    k = scores.shape[0]
    if boxes.shape[0] != k or labels.shape[0] != k or masks.shape[0] != k:
        raise ValueError(
            f"detections disagree in number: {boxes.shape[0]} boxes, {k} scores, {labels.shape[0]} labels, "
            f"{masks.shape[0]} masks"
        )
    if seg_logits.dim() != 3 or seg_logits.shape[0] != num_stuff_classes + 1:
        raise ValueError(
            f"seg_logits must be (num_stuff + 1 = {num_stuff_classes + 1}) x H x W, got {tuple(seg_logits.shape)}"
        )
    if masks.shape[-2:] != seg_logits.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape[-2:])} and seg_logits {tuple(seg_logits.shape[-2:])} differ in size")
    binary = masks if masks.dtype == torch.bool else masks >= config.mask_thr_binary
    id_map, kept_labels = lay_masks(scores, labels, binary, config.mask_overlap)

    pan = seg_logits.argmax(dim=0) + num_things_classes
    for instance, label in enumerate(kept_labels.tolist(), start=1):
        pan[id_map == instance] = label + instance * INSTANCE_OFFSET

    ids, counts = torch.unique(pan % INSTANCE_OFFSET, return_counts=True)
    is_stuff = ids >= num_things_classes
    small = ids[is_stuff][counts[is_stuff] < config.stuff_area_limit]
    pan[torch.isin(pan, small)] = num_things_classes + num_stuff_classes
    return pan
