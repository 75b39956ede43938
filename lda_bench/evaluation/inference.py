"""Run a detector over dataset images and turn its detections into COCO results records; the
batch preprocessing every detector-style evaluation shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lda_bench.data.coco import CocoDetection, detections_to_coco
from lda_bench.data.transforms import collate, preprocess
from lda_bench.models.detector import TwoStageDetector
from lda_bench.structures import ImageMeta


@dataclass
class ImageResult:
    index: int  # position in the dataset, to restore the order after gathering
    image_id: int
    bbox: list[dict[str, Any]] = field(default_factory=list)
    segm: list[dict[str, Any]] = field(default_factory=list)


def prepare_batch(bgr_images: Sequence[np.ndarray], img_scale: tuple[int, int], size_divisor: int,
                  device: torch.device) -> tuple[torch.Tensor, list[ImageMeta]]:
    """mmdet's test preprocessing of each image, padded into one batch, and the images' metas."""
    prepared = [preprocess(bgr, img_scale, size_divisor) for bgr in bgr_images]
    images = collate([p.image for p in prepared]).to(device)
    return images, [ImageMeta(p.ori_shape, p.img_shape, p.pad_shape, p.scale_factor) for p in prepared]


def run_batches(
    model: TwoStageDetector,
    dataset: CocoDetection,
    batches: Sequence[Sequence[int]],
    device: torch.device,
    img_scale: tuple[int, int],
    size_divisor: int,
    with_masks: bool,
    on_image: Callable[[int], None] | None = None,
) -> list[ImageResult]:
    """Inference on the given batches of dataset indices; ``on_image(n)`` reports progress."""
    results: list[ImageResult] = []
    for batch in batches:
        records = [dataset.images[i] for i in batch]
        images, metas = prepare_batch([dataset.read_bgr(r) for r in records], img_scale, size_divisor, device)
        detections = model.predict(images, metas, with_masks=with_masks)
        for record, det in zip(records, detections):
            bbox, segm = detections_to_coco(det, record.image_id, dataset.cat_ids, with_masks)
            results.append(ImageResult(record.index, record.image_id, bbox, segm))
        if on_image is not None:
            on_image(len(batch))
    return results
