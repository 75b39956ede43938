"""Semantic segmentation evaluation: dataset -> model -> summed pixel counts -> aAcc / mIoU / mAcc.

One image at a time (ADE20K images differ in size, and mmseg tests with batch 1). Under
``torchrun`` each process takes its shard (:func:`distributed.shard_batches` with batches of one
image: ``rank, rank + world, ...``) and the integer counts of all processes are summed before the
metrics are computed, so the numbers are exactly a single process's.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from lda_bench.data.segmentation_transforms import ADE20K_TEST_SCALE, SegTestTransform
from lda_bench.metrics.sem_seg import IGNORE_INDEX, SemSegAccumulator
from lda_bench.models.seg_inference import ADE20K_SLIDE_CROP, ADE20K_SLIDE_STRIDE, InferenceMode, segment

from . import distributed
from .common import (
    EvalError,
    EvalRequest,
    finish_report,
    image_count,
    run_sharded,
    start_report,
    timing_section,
)

ALIGNED_RESIZE_DIVISOR = 32  # NVlabs SegFormer's AlignedResize (FADE / SAPA runs)

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


def shard_images(total: int, ctx: distributed.DistContext) -> list[int]:
    """The dataset indices this process evaluates (batches of one image, interleaved over ranks)."""
    return [i for batch in distributed.shard_batches(total, 1, ctx) for i in batch]


def combine(accumulators: Sequence[SemSegAccumulator]) -> SemSegAccumulator:
    """The sum of several processes' counts (exact: integers)."""
    total = SemSegAccumulator(accumulators[0].num_classes, accumulators[0].ignore_index)
    for part in accumulators:
        total.merge(part)
    return total


def protocol(transform: SegTestTransform, mode: InferenceMode, crop_size: tuple[int, int],
             stride: tuple[int, int]) -> dict[str, Any]:
    return {"transform": transform.describe(), "mode": mode,
            **({"crop_size": list(crop_size), "stride": list(stride)} if mode == "slide" else {})}


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
    ctx: distributed.DistContext | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the first ``limit`` images of ``dataset`` (all when None).

    Under a process group (``ctx``, or the initialised default group) each rank takes its shard
    and the counts of all ranks are summed, so every rank returns the same, single-process
    numbers. The result holds ``aAcc``, ``mIoU``, ``mAcc`` in percent, per-class IoU/Acc, the
    number of images and the protocol (transform, inference mode).
    """
    transform = transform or SegTestTransform()
    ctx = ctx or distributed.current_context()
    total = len(dataset) if limit is None else min(max(limit, 0), len(dataset))
    accumulator = accumulate_sem_seg(
        model, dataset, shard_images(total, ctx), transform=transform, mode=mode,
        crop_size=crop_size, stride=stride, device=device, progress=progress, ignore_index=ignore_index,
    )
    metrics = combine(distributed.all_gather(accumulator, ctx)).compute(dataset.classes)
    metrics["protocol"] = protocol(transform, mode, crop_size, stride)
    return metrics


def run_sem_seg(
    ctx: distributed.DistContext, request: EvalRequest, device: torch.device, checkpoint: Any, config: Any,
    model: nn.Module, keys: Any, dataset: Any, tasks: list[str],
) -> dict[str, Any] | None:
    """``lda-bench eval`` of a segmentation checkpoint on ADE20K: the report on rank 0, else None."""
    if config.num_classes != len(dataset.classes):
        raise EvalError(f"the checkpoint predicts {config.num_classes} classes but ADE20K has {len(dataset.classes)}")
    transform = SegTestTransform(request.img_scale or ADE20K_TEST_SCALE,
                                 ALIGNED_RESIZE_DIVISOR if request.aligned_resize else None)
    crop, stride = request.crop_size or ADE20K_SLIDE_CROP, request.stride or ADE20K_SLIDE_STRIDE
    mode: InferenceMode = "slide" if request.mode == "slide" else "whole"
    count = image_count(request.limit, len(dataset))

    def run(batches: list[list[int]], advance: Callable[[int], None]) -> SemSegAccumulator:
        indices = [i for batch in batches for i in batch]
        return accumulate_sem_seg(model, dataset, indices, transform=transform, mode=mode, crop_size=crop,
                                  stride=stride, device=device, progress=lambda done, total: advance(1))

    gathered = run_sharded(ctx, request, config, count, 1, run)
    if gathered is None:
        return None
    parts, seconds = gathered
    metrics = combine(parts).compute(dataset.classes)

    report = start_report(request, device, checkpoint, config, model, keys)
    report["dataset"] = {"root": str(dataset.root), "split": dataset.img_dir.name, "num_images": count,
                         "images_in_split": len(dataset), "limit": request.limit, "reduce_zero_label": True}
    report["settings"] = {"tasks": tasks, "img_scale": list(transform.scale), "batch": 1, "device": str(device),
                          "world_size": ctx.world_size,
                          "protocol": protocol(transform, mode, crop, stride)}
    report["timing"] = timing_section(count, seconds)
    report["warnings"] = []
    report["metrics"] = {"sem_seg": {k: metrics[k] for k in ("aAcc", "mIoU", "mAcc")}}
    report["per_class"] = {"sem_seg": metrics["per_class"]}
    report["num_images_scored"] = metrics["num_images"]
    return finish_report(report, request.output, request.force, f"{config.model}-{config.upsampler}", request.write)
