"""Semantic segmentation metrics as mmseg computes them: aAcc, mIoU and mAcc.

Per image, pixels whose label is ``ignore_index`` are dropped and four per-class pixel counts are
taken: intersection (prediction == label), union, predicted area and labelled area. These counts
are **summed over the whole dataset** first; only then
``IoU_c = inter_c / union_c``, ``Acc_c = inter_c / label_c`` and ``aAcc = sum(inter) / sum(label)``.
mIoU and mAcc are NaN-means over classes: a class with union 0 (absent from labels and
predictions) is skipped, and a class that is predicted but never labelled has IoU 0 (counted)
and Acc NaN (skipped). This is mmseg 0.x ``eval_metrics`` and 1.x ``IoUMetric``.

The counts are exact integers, so accumulators from several processes merge by summation.
Values are returned in percent and not rounded (mmseg prints them rounded to 2 decimals).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

IGNORE_INDEX = 255


def _as_long_tensor(array: Tensor | np.ndarray, what: str) -> Tensor:
    if isinstance(array, np.ndarray):
        array = torch.from_numpy(np.ascontiguousarray(array))
    if not isinstance(array, Tensor):
        raise ValueError(f"{what} must be a tensor or numpy array, got {type(array).__name__}")
    if array.is_floating_point():
        raise ValueError(f"{what} must hold integer class indices, got {array.dtype}")
    return array.long().cpu()


def _class_histogram(values: Tensor, num_classes: int) -> Tensor:
    # torch.histc(min=0, max=num_classes-1) as mmseg uses it ignores out-of-range values.
    values = values[(values >= 0) & (values < num_classes)]
    return torch.bincount(values, minlength=num_classes)


def intersect_and_union(
    pred: Tensor | np.ndarray,
    label: Tensor | np.ndarray,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class ``(intersection, union, predicted area, label area)`` pixel counts of one image.

    ``pred`` and ``label`` are H x W class maps of the same shape; ``label`` already has
    reduce_zero_label applied where the dataset needs it.
    """
    pred_t = _as_long_tensor(pred, "pred")
    label_t = _as_long_tensor(label, "label")
    if pred_t.shape != label_t.shape:
        raise ValueError(
            f"prediction shape {tuple(pred_t.shape)} differs from label shape {tuple(label_t.shape)}; "
            "resize the prediction to the label's (original image) size first"
        )
    valid = label_t != ignore_index
    pred_t = pred_t[valid]
    label_t = label_t[valid]
    area_intersect = _class_histogram(pred_t[pred_t == label_t], num_classes)
    area_pred = _class_histogram(pred_t, num_classes)
    area_label = _class_histogram(label_t, num_classes)
    area_union = area_pred + area_label - area_intersect
    return area_intersect, area_union, area_pred, area_label


def _percent(value: float) -> float:
    return float(value) * 100.0


@dataclass
class SemSegAccumulator:
    """Dataset-wide per-class pixel counts; ``update`` per image, ``merge`` across processes."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    area_intersect: Tensor = field(init=False)
    area_union: Tensor = field(init=False)
    area_pred: Tensor = field(init=False)
    area_label: Tensor = field(init=False)
    num_images: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        zeros = torch.zeros(self.num_classes, dtype=torch.int64)
        self.area_intersect, self.area_union = zeros.clone(), zeros.clone()
        self.area_pred, self.area_label = zeros.clone(), zeros.clone()

    def update(self, pred: Tensor | np.ndarray, label: Tensor | np.ndarray) -> None:
        inter, union, area_pred, area_label = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.area_intersect += inter
        self.area_union += union
        self.area_pred += area_pred
        self.area_label += area_label
        self.num_images += 1

    def as_tensor(self) -> Tensor:
        """All counts as one int64 tensor (5 x num_classes), the unit of cross-process reduction."""
        images = torch.zeros(self.num_classes, dtype=torch.int64)
        images[0] = self.num_images
        return torch.stack([self.area_intersect, self.area_union, self.area_pred, self.area_label, images])

    def load_tensor(self, totals: Tensor) -> None:
        """Replace the counts with ``totals`` (the layout of :meth:`as_tensor`, e.g. after a sum)."""
        if tuple(totals.shape) != (5, self.num_classes):
            raise ValueError(f"expected a 5 x {self.num_classes} tensor, got {tuple(totals.shape)}")
        totals = totals.to(torch.int64).cpu()
        self.area_intersect, self.area_union, self.area_pred, self.area_label = (t.clone() for t in totals[:4])
        self.num_images = int(totals[4, 0])

    def merge(self, other: SemSegAccumulator) -> SemSegAccumulator:
        if other.num_classes != self.num_classes or other.ignore_index != self.ignore_index:
            raise ValueError("cannot merge accumulators with different num_classes or ignore_index")
        self.load_tensor(self.as_tensor() + other.as_tensor())
        return self

    __iadd__ = merge

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """``aAcc``, ``mIoU``, ``mAcc`` (percent) and per-class ``IoU``/``Acc`` (NaN where undefined)."""
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"got {len(class_names)} class names for {self.num_classes} classes")
        inter = self.area_intersect.double()
        iou = inter / self.area_union.double()  # 0 / 0 -> NaN: class absent from labels and predictions
        acc = inter / self.area_label.double()
        total_label = float(self.area_label.sum())
        all_acc = float(inter.sum()) / total_label if total_label > 0 else float("nan")
        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        return {
            "aAcc": _percent(all_acc),
            "mIoU": _percent(torch.nanmean(iou)),
            "mAcc": _percent(torch.nanmean(acc)),
            "num_images": self.num_images,
            "per_class": {
                name: {"IoU": _percent(iou[i]), "Acc": _percent(acc[i])} for i, name in enumerate(names)
            },
        }
