"""Shared helpers of the panoptic tests: a Panoptic FPN that reads the answer from its input's
colours (through the real fusion path), and a random-weight one calibrated to detect something."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lda_bench.data.coco_panoptic import CocoPanoptic
from lda_bench.data.synthetic_panoptic import decode_pixels
from lda_bench.data.transforms import MEAN_RGB, STD_RGB, collate, preprocess
from lda_bench.models import ImageMeta, build_model
from lda_bench.models.panoptic_fpn import PanopticFPN
from lda_bench.models.panoptic_fusion import PanopticTestConfig
from lda_bench.models.roi_extractor import bbox2roi
from lda_bench.structures import Detections

# The synthetic images are 128 x 96: this scale keeps them as they are (factor 1) and pad 32 adds
# nothing, so a model reading pixel colours sees the written values exactly.
KEEP_SIZE_SCALE = (128, 96)


def _pixels(images: Tensor, meta: ImageMeta, index: int) -> np.ndarray:
    """The uint8 RGB image a normalised input was made from (cropped to the resized image)."""
    mean = torch.tensor(MEAN_RGB).view(3, 1, 1)
    std = torch.tensor(STD_RGB).view(3, 1, 1)
    rgb = (images[index].cpu() * std + mean).round().clamp(0, 255).to(torch.uint8)
    h, w = meta.img_shape
    return rgb[:, :h, :w].permute(1, 2, 0).numpy()


class ColourOracle(PanopticFPN):
    """Detections and semantic logits decoded from the synthetic images' colours; the rest (fusion,
    segment conversion, scoring) is the real path. No stuff area limit: the test images are small."""

    def __init__(self, num_things: int = 2, num_stuff: int = 2) -> None:
        super().__init__(num_things, num_stuff, panoptic_cfg=PanopticTestConfig(stuff_area_limit=0))
        self._images: Tensor | None = None

    def extract_feat(self, images: Tensor) -> tuple[Tensor, ...]:
        self._images = images  # the "features" are the image itself
        return (images,)

    def panoptic_detections(self, feats, metas):
        results = []
        for i, meta in enumerate(metas):
            labels, instances = decode_pixels(_pixels(feats[0], meta, i))
            assert meta.img_shape == meta.ori_shape  # the test keeps the size
            boxes, scores, classes, masks = [], [], [], []
            for k in np.unique(instances[instances > 0]):
                mask = (instances == k) & (labels >= 0) & (labels < self.num_things_classes)
                rows, cols = np.nonzero(mask)
                boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
                scores.append(0.9 - 0.01 * int(k))
                classes.append(int(labels[rows[0], cols[0]]))
                masks.append(torch.from_numpy(mask))
            h, w = meta.ori_shape
            results.append(Detections(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores).reshape(-1),
                torch.tensor(classes, dtype=torch.long).reshape(-1),
                torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)))
        return results

    def semantic_logits(self, feats, input_size, metas):
        out = []
        for i, meta in enumerate(metas):
            labels, _ = decode_pixels(_pixels(feats[0], meta, i))
            channel = np.where(labels >= self.num_things_classes, labels - self.num_things_classes,
                               self.num_stuff_classes)  # things and VOID -> the "things" channel
            out.append(torch.nn.functional.one_hot(torch.from_numpy(channel), self.num_stuff_classes + 1)
                       .permute(2, 0, 1).float())
        return out


def detecting_panoptic_model(data: CocoPanoptic, upsampler: str = "nearest", seed: int = 0, proposals: int = 12,
                             **kwargs) -> PanopticFPN:
    """Random weights, with the classifier made to pass Panoptic FPN's 0.6 score threshold for
    about ``proposals`` proposals of the first image (plain random weights give none)."""
    torch.manual_seed(seed)
    cats = data.categories
    model = build_model("panoptic_fpn_r50", upsampler, num_classes=cats.num_things,
                        num_stuff_classes=cats.num_stuff, **kwargs)
    cls = model.roi_head.bbox_head.fc_cls
    with torch.no_grad():
        cls.weight.mul_(1000.0)
        cls.bias.zero_()
        p = preprocess(data.read_bgr(0), KEEP_SIZE_SCALE, 32)
        meta = ImageMeta(p.ori_shape, p.img_shape, p.pad_shape, p.scale_factor)
        feats = model.extract_feat(collate([p.image]))
        scores, deltas = model.rpn_head(feats)
        props = model.rpn_head.proposals(scores, deltas, [meta.img_shape], model.test_cfg.rpn)
        logits, _ = model.roi_head.bbox_head(model.roi_head.bbox_roi_extractor(feats, bbox2roi(props)))
        margin = (logits[:, :-1].max(dim=1).values - logits[:, -1]).sort(descending=True).values
        # p_fg = sigmoid(margin - bias) >= sigmoid(1) = 0.73 for the best `proposals` ones
        cls.bias[-1] = float(margin[min(proposals, margin.numel()) - 1]) - 1.0
        # Random mask logits sit on one side of 0; centre each class's on its median so that the
        # pasted masks cover part of their boxes.
        rois = bbox2roi([props[0][:proposals, :4]])
        mask_logits = model.roi_head.mask_head(model.roi_head.mask_roi_extractor(feats, rois))
        model.roi_head.mask_head.conv_logits.bias -= mask_logits.transpose(0, 1).flatten(1).median(dim=1).values
    return model
