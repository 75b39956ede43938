"""Semantic segmentation evaluation: dataset -> model -> summed pixel counts -> aAcc / mIoU / mAcc.

One image at a time (ADE20K images differ in size, and mmseg tests with batch 1). Under
``torchrun`` each process takes its shard (``rank, rank + world, ...``) and the counts are summed
over processes before the metrics are computed, so every process returns the numbers a single
process would.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from lda_bench.data.segmentation_transforms import SegTestTransform
from lda_bench.metrics.sem_seg import IGNORE_INDEX, SemSegAccumulator
from lda_bench.models.seg_inference import ADE20K_SLIDE_CROP, ADE20K_SLIDE_STRIDE, InferenceMode, segment

from .distributed import all_reduce_counts, rank_and_world_size, shard_indices

ProgressCallback = Callable[[int, int], None]  # (images done by this process, its total)


class SegDataset(Protocol):
    """What the loop needs from a dataset (``ADE20KDataset`` provides it)."""

    classes: Sequence[str]

    def __len__(self) -> int: ...

    def load_image(self, index: int) -> np.ndarray: ...

    def load_label(self, index: int) -> np.ndarray: ...


def accumulate_sem_seg(
    model: nn.Module,
    dataset: SegDataset,
    indices: Sequence[int],
    *,
    transform: SegTestTransform,
    mode: InferenceMode = "whole",
    crop_size: tuple[int, int] = ADE20K_SLIDE_CROP,
    stride: tuple[int, int] = ADE20K_SLIDE_STRIDE,
    device: str | torch.device = "cpu",
    progress: ProgressCallback | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> SemSegAccumulator:
    """Pixel counts of ``model`` on the images ``indices`` of ``dataset`` (no cross-process step)."""
    accumulator = SemSegAccumulator(len(dataset.classes), ignore_index)
    model.eval().to(device)
    with torch.inference_mode():
        for done, index in enumerate(indices, start=1):
            img, meta = transform(dataset.load_image(index))
            logits = segment(model, img.to(device), meta["ori_shape"], mode, crop_size, stride)
            accumulator.update(logits.argmax(dim=1)[0].cpu(), dataset.load_label(index))
            if progress is not None:
                progress(done, len(indices))
    return accumulator


def evaluate_sem_seg(
    model: nn.Module,
    dataset: SegDataset,
    *,
    transform: SegTestTransform | None = None,
    mode: InferenceMode = "whole",
    crop_size: tuple[int, int] = ADE20K_SLIDE_CROP,
    stride: tuple[int, int] = ADE20K_SLIDE_STRIDE,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Evaluate ``model`` on the first ``limit`` images of ``dataset`` (all when None).

    Under an initialised process group each rank takes its shard and the counts are summed over
    ranks, so every rank returns the same, single-process numbers. The result holds ``aAcc``,
    ``mIoU``, ``mAcc`` in percent, per-class IoU/Acc, the number of images and the protocol
    (transform, inference mode).
    """
    transform = transform or SegTestTransform()
    rank, world_size = rank_and_world_size()
    total = len(dataset) if limit is None else min(max(limit, 0), len(dataset))
    accumulator = accumulate_sem_seg(
        model, dataset, shard_indices(total, rank, world_size), transform=transform, mode=mode,
        crop_size=crop_size, stride=stride, device=device, progress=progress, ignore_index=ignore_index,
    )
    if world_size > 1:
        all_reduce_counts(accumulator)
    metrics = accumulator.compute(dataset.classes)
    metrics["protocol"] = {
        "transform": transform.describe(),
        "mode": mode,
        **({"crop_size": list(crop_size), "stride": list(stride)} if mode == "slide" else {}),
    }
    return metrics
