"""Panoptic FPN R50 (mmdet 2.x ``PanopticFPN`` / ``TwoStagePanopticSegmentor``).

Mask R-CNN (``backbone``, ``neck``, ``rpn_head``, ``roi_head``) plus ``semantic_head``
(:class:`PanopticFPNSemanticHead`); the fusion head has no parameters. So mmdet's
``panoptic_fpn_r50_fpn_1x_coco`` checkpoints load with strict keys (plain FPN, nearest).

Test time (``simple_test`` with rescale, one image per forward as mmdet tests):

1. RPN proposals as Mask R-CNN; box head scores and boxes rescaled to the original image
   **without** the R-CNN NMS (``get_bboxes(cfg=None)``);
2. ``test_cfg.panoptic``: multiclass NMS with score > 0.6, class-agnostic NMS at IoU 0.5, at
   most 100 detections;
3. masks of those detections (mask head on the boxes times the scale factor), pasted at the
   original size at the detections' own boxes (``_do_paste_mask``, skip_empty=False), >= 0.5;
4. semantic logits at stride 4 -> bilinear to the padded input -> crop to the resized image ->
   bilinear to the original size;
5. :func:`heuristic_fusion` -> one map of mmdet panoptic values (``label + k * 1000``, VOID = 133).

With several images in one batch the semantic logits are resized to the batch's padded size
(mmdet uses the first image's pad shape for the whole batch, which is only right at batch 1).

``model(images)`` is the profiling path: Mask R-CNN's dummy heads plus the semantic logits.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from lda_bench.structures import Detections, ImageMeta

from .detector import TwoStageDetector
from .nms import multiclass_nms
from .panoptic_fusion import PANOPTIC_FPN_TEST_CFG, PanopticTestConfig, heuristic_fusion
from .panoptic_head import PanopticFPNSemanticHead, semantic_logits_to_image


class PanopticFPN(TwoStageDetector):
    """Mask R-CNN + semantic head; ``predict_panoptic`` gives mmdet's panoptic maps."""

    def __init__(
        self,
        num_things_classes: int = 80,
        num_stuff_classes: int = 53,
        upsampler: str = "nearest",
        upsampler_options: Mapping[str, Any] | None = None,
        neck: str = "fpn",
        panoptic_cfg: PanopticTestConfig | None = None,
    ) -> None:
        super().__init__(num_things_classes, upsampler, upsampler_options, neck, with_mask=True)
        self.semantic_head = PanopticFPNSemanticHead(num_things_classes, num_stuff_classes)
        self.num_stuff_classes = num_stuff_classes
        self.panoptic_cfg = panoptic_cfg or PANOPTIC_FPN_TEST_CFG
        self.eval()

    @property
    def num_things_classes(self) -> int:
        return self.num_classes

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Profiling path: RPN and RoI heads on fixed proposals (as Mask R-CNN) and the semantic logits."""
        feats = self.extract_feat(images)
        return (*self.dummy_heads(feats, images), self.semantic_head(feats))

    @torch.no_grad()
    def panoptic_detections(self, feats: tuple[Tensor, ...], metas: Sequence[ImageMeta]) -> list[Detections]:
        """Per image: detections after the panoptic NMS, with boolean masks at the original size."""
        cfg = self.panoptic_cfg
        results = []
        for rois, logits, deltas, meta in self.box_head_outputs(feats, metas):
            scale = torch.tensor(meta.scale_factor, dtype=torch.float32, device=rois.device)
            boxes, scores = self.roi_head.bbox_head.rescaled_boxes(rois, logits, deltas, meta.img_shape, scale)
            boxes, scores, labels = multiclass_nms(boxes, scores, cfg.score_thr, cfg.nms_iou_thr, cfg.max_per_img,
                                                   class_agnostic=cfg.class_agnostic_nms)
            results.append(Detections(boxes, scores, labels))
        device = feats[0].device
        self.add_masks(feats, results, metas, device, cfg.mask_thr_binary, paste_original_boxes=True)
        return results

    @torch.no_grad()
    def semantic_logits(self, feats: tuple[Tensor, ...], input_size: tuple[int, int],
                        metas: Sequence[ImageMeta]) -> list[Tensor]:
        """Per image: (num_stuff + 1) x H x W semantic logits at the original size."""
        logits = self.semantic_head(feats)
        return [semantic_logits_to_image(logits[i : i + 1], input_size, m.img_shape, m.ori_shape)[0]
                for i, m in enumerate(metas)]

    @torch.no_grad()
    def predict_panoptic(self, images: Tensor, metas: Sequence[ImageMeta]) -> list[Tensor]:
        """Panoptic maps (H x W int64 at the original size, mmdet values) of a padded batch."""
        if images.shape[0] != len(metas):
            raise ValueError(f"got {images.shape[0]} images but {len(metas)} metas")
        feats = self.extract_feat(images)
        detections = self.panoptic_detections(feats, metas)
        semantic = self.semantic_logits(feats, tuple(images.shape[-2:]), metas)
        return [
            heuristic_fusion(d.boxes, d.scores, d.labels, d.masks, s, self.num_things_classes, self.num_stuff_classes,
                             self.panoptic_cfg)
            for d, s in zip(detections, semantic)
        ]
