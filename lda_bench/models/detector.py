"""Two-stage detectors (Faster / Mask R-CNN) with mmdet 2.x module names and test-time behaviour.

Two entry points:

* ``model(images)`` -- the plain-tensor path for profiling (params, FLOPs, latency). It is mmdet's
  ``forward_dummy``, the path mmdet's get_flops measures: backbone, neck, RPN convs, the box head on
  1000 fixed proposals and, for Mask R-CNN, the mask head on the first 100. It skips the
  data-dependent post-processing (NMS, decoding, pasting), so its cost does not depend on the
  weights or the image content.
* ``model.predict(images, metas)`` -- full inference: proposals, boxes in original-image
  coordinates, labels and, for Mask R-CNN, pasted boolean masks.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from lda_bench.structures import Detections, ImageMeta

from .bbox_head import Shared2FCBBoxHead
from .config import TestConfig
from .fpn import UpsamplerFPN
from .mask_head import FCNMaskHead, paste_masks
from .resnet import resnet50
from .roi_extractor import RoIExtractor, bbox2roi
from .rpn import RPNHead

DUMMY_PROPOSALS = 1000
DUMMY_MASK_ROIS = 100


class StandardRoIHead(nn.Module):
    def __init__(self, num_classes: int, with_mask: bool, mask_head_upsampler: str = "deconv") -> None:
        super().__init__()
        self.bbox_roi_extractor = RoIExtractor(7)
        self.bbox_head = Shared2FCBBoxHead(num_classes)
        if with_mask:
            self.mask_roi_extractor = RoIExtractor(14)
            self.mask_head = FCNMaskHead(num_classes, upsampler=mask_head_upsampler)

    @property
    def with_mask(self) -> bool:
        return hasattr(self, "mask_head")


class TwoStageDetector(nn.Module):
    """ResNet-50 + upsampler FPN + RPN + RoI heads; ``state_dict`` keys are mmdet's."""

    def __init__(
        self,
        num_classes: int = 80,
        upsampler: str = "nearest",
        upsampler_options: Mapping[str, Any] | None = None,
        neck: str = "fpn_carafe",
        with_mask: bool = False,
        test_cfg: TestConfig | None = None,
        mask_head_upsampler: str = "deconv",
    ) -> None:
        super().__init__()
        self.backbone = resnet50(frozen_stages=1)  # as every mmdet R50 config (_base_/models/*.py)
        self.neck = UpsamplerFPN(tuple(self.backbone.out_channels), 256, upsampler, upsampler_options, neck)
        self.rpn_head = RPNHead(256)
        self.roi_head = StandardRoIHead(num_classes, with_mask, mask_head_upsampler)
        self.num_classes = num_classes
        self.test_cfg = test_cfg or TestConfig()
        self.eval()  # detection checkpoints run with frozen BN statistics

    @property
    def with_mask(self) -> bool:
        return self.roi_head.with_mask

    @property
    def mask_head_upsampler(self) -> str | None:
        return self.roi_head.mask_head.upsampler if self.with_mask else None

    def extract_feat(self, images: Tensor) -> tuple[Tensor, ...]:
        """P2..P6 (strides 4..64)."""
        return self.neck(self.backbone(images))

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Profiling path (mmdet forward_dummy); returns raw head outputs as plain tensors."""
        return self.dummy_heads(self.extract_feat(images), images)

    def dummy_heads(self, feats: tuple[Tensor, ...], images: Tensor) -> tuple[Tensor, ...]:
        """The RPN and RoI heads of the profiling path on fixed proposals."""
        rpn_scores, rpn_deltas = self.rpn_head(feats)
        proposals = _dummy_proposals(images.shape[-2], images.shape[-1], DUMMY_PROPOSALS, images.device)
        rois = bbox2roi([proposals])
        cls_logits, deltas = self.roi_head.bbox_head(self.roi_head.bbox_roi_extractor(feats, rois))
        outs = (*rpn_scores, *rpn_deltas, cls_logits, deltas)
        if self.with_mask:
            mask_rois = rois[:DUMMY_MASK_ROIS]
            outs += (self.roi_head.mask_head(self.roi_head.mask_roi_extractor(feats, mask_rois)),)
        return outs

    @torch.no_grad()
    def predict(self, images: Tensor, metas: Sequence[ImageMeta], with_masks: bool = True) -> list[Detections]:
        """Full test-time inference of a padded batch (B x 3 x H x W) with one meta per image.

        ``with_masks=False`` skips the mask head of a Mask R-CNN (boxes only).
        """
        if images.shape[0] != len(metas):
            raise ValueError(f"got {images.shape[0]} images but {len(metas)} metas")
        cfg = self.test_cfg
        feats = self.extract_feat(images)
        results = []
        for r, c, d, meta in self.box_head_outputs(feats, metas):
            scale = torch.tensor(meta.scale_factor, dtype=torch.float32, device=images.device)
            boxes, scores, labels = self.roi_head.bbox_head.detections(r, c, d, meta.img_shape, scale, cfg.rcnn)
            # bbox2result groups detections by label, keeping the NMS order inside each label.
            order = torch.sort(labels, stable=True).indices
            results.append(Detections(boxes[order], scores[order], labels[order]))
        if self.with_mask and with_masks:
            self.add_masks(feats, results, metas, images.device, cfg.rcnn.mask_thr_binary)
        return results

    def box_head_outputs(
        self, feats: tuple[Tensor, ...], metas: Sequence[ImageMeta]
    ) -> list[tuple[Tensor, Tensor, Tensor, ImageMeta]]:
        """Per image: RoIs (from the RPN proposals), class logits, deltas, and its meta."""
        rpn_scores, rpn_deltas = self.rpn_head(feats)
        proposals = self.rpn_head.proposals(rpn_scores, rpn_deltas, [m.img_shape for m in metas], self.test_cfg.rpn)
        rois = bbox2roi(proposals)
        cls_logits, deltas = self.roi_head.bbox_head(self.roi_head.bbox_roi_extractor(feats, rois))
        counts = [p.shape[0] for p in proposals]
        return list(zip(rois.split(counts), cls_logits.split(counts), deltas.split(counts), metas))

    def add_masks(self, feats: tuple[Tensor, ...], results: list[Detections], metas: Sequence[ImageMeta],
                  device: torch.device, threshold: float, paste_original_boxes: bool = False) -> None:
        """Fill ``results[i].masks``: boolean masks pasted at the original size (probability >= threshold).

        mmdet runs the mask head on the detections mapped back to network-input coordinates. Mask
        R-CNN's get_seg_masks pastes them divided by the scale factor again; Panoptic FPN's
        simple_test_mask pastes at the detections' own boxes (``paste_original_boxes``), which
        can differ from the former in the last float bit.
        """
        scales = [torch.tensor(m.scale_factor, dtype=torch.float32, device=device) for m in metas]
        net_boxes = [r.boxes * s for r, s in zip(results, scales)]
        if sum(b.shape[0] for b in net_boxes) == 0:
            for r, m in zip(results, metas):
                r.masks = torch.zeros(0, *m.ori_shape, dtype=torch.bool, device=device)
            return
        mask_rois = bbox2roi(net_boxes)
        logits = self.roi_head.mask_head(self.roi_head.mask_roi_extractor(feats, mask_rois))
        for r, m, b, s, lg in zip(results, metas, net_boxes, scales, logits.split([len(b) for b in net_boxes])):
            probs = lg[torch.arange(lg.shape[0], device=device), r.labels].sigmoid()
            boxes = r.boxes if paste_original_boxes else b / s
            r.masks = paste_masks(probs, boxes, m.ori_shape[0], m.ori_shape[1], threshold)


def _dummy_proposals(height: int, width: int, count: int, device: torch.device | str) -> Tensor:
    """Deterministic boxes spread over the image (mmdet draws random ones; any boxes cost the same)."""
    t = torch.linspace(0.0, 1.0, count, device=device)
    x1 = t * width * 0.5
    y1 = (1 - t) * height * 0.5
    return torch.stack([x1, y1, x1 + width * 0.25 + 16, y1 + height * 0.25 + 16], dim=1)
