"""Panoptic quality (PQ, SQ, RQ) with the rules of cocodataset/panopticapi ``pq_compute``.

Per image (``PQAccumulator.update``):

* prediction sanity: every non-zero id in the prediction map must be listed in its segments and
  every listed segment must occur in the map (else :class:`PanopticFormatError`), and its
  category must be a ground-truth category; predicted areas are counted from the map;
* a (ground truth, prediction) pair can match only if the categories are equal and the ground
  truth is not crowd; ``union = area_pred + area_gt - inter - (prediction pixels on VOID)``, so
  predicted pixels on unlabelled ground truth do not count against the prediction;
  it is a true positive iff ``IoU > 0.5`` (strict), which makes matches unique;
* unmatched non-crowd ground truth is a false negative; crowd regions are ignored and kept per
  category (the last crowd segment of a category wins, as in panopticapi);
* an unmatched prediction is a false positive unless more than half of it lies on VOID plus the
  crowd region of its own category.

Ground-truth areas come from the segments' ``area`` field when present (panopticapi reads them
from the JSON), else they are counted from the map.

Per category ``PQ = sum IoU / (TP + FP/2 + FN/2)``, ``SQ = sum IoU / TP``,
``RQ = TP / (TP + FP/2 + FN/2)``; categories with ``TP + FP + FN == 0`` are left out of the
averages over All / Things (isthing = 1) / Stuff. Where no category is counted the average is NaN
(panopticapi would divide by zero). The accumulated state is four numbers per category, so the
states of several processes merge by summation. :meth:`PQAccumulator.image_stats` gives one
image's numbers without accumulating them; adding those in image order (:meth:`add`) gives the
same floating-point sums however the images were spread over processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from lda_bench.data.coco_panoptic import read_id_png

ImageStats = dict[int, list[float]]  # category id -> [TP, FP, FN, IoU sum] of one image

OFFSET = 256 * 256 * 256  # joint (gt, pred) id encoding; every panoptic id is < 256^3
VOID = 0

_TP, _FP, _FN, _IOU = range(4)


class PanopticFormatError(ValueError):
    """A prediction's map and segment list disagree, or it names an unknown category."""


def _category_table(categories: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    table: dict[int, dict[str, Any]] = {}
    for cat in categories:
        table[int(cat["id"])] = {"name": cat.get("name", str(cat["id"])), "isthing": int(cat.get("isthing", 0))}
    if not table:
        raise ValueError("panoptic evaluation needs at least one category")
    return table


class PQAccumulator:
    """Per-category TP, FP, FN and IoU sums over the images seen so far."""

    def __init__(self, categories: Iterable[Mapping[str, Any]]) -> None:
        """``categories``: the ground-truth JSON ``categories`` (``id``, ``name``, ``isthing``)."""
        self.categories = _category_table(categories)
        self.cat_ids = sorted(self.categories)
        self._row = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        self.stats = np.zeros((len(self.cat_ids), 4), dtype=np.float64)
        self.num_images = 0

    # ---- accumulation -------------------------------------------------------------------------
    def update(
        self,
        gt_ids: np.ndarray | Tensor,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_ids: np.ndarray | Tensor,
        pred_segments: Sequence[Mapping[str, Any]],
        image_id: Any = None,
    ) -> None:
        """Add one image: H x W id maps (``rgb2id`` of the PNGs) and their ``segments_info``."""
        self.add(self.image_stats(gt_ids, gt_segments, pred_ids, pred_segments, image_id))

    def add(self, stats: ImageStats) -> None:
        """Add the numbers of one image (from :meth:`image_stats`, possibly of another process)."""
        for cat_id, values in stats.items():
            self.stats[self._row[cat_id]] += np.asarray(values, dtype=np.float64)
        self.num_images += 1

    def image_stats(
        self,
        gt_ids: np.ndarray | Tensor,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_ids: np.ndarray | Tensor,
        pred_segments: Sequence[Mapping[str, Any]],
        image_id: Any = None,
    ) -> ImageStats:
        """TP, FP, FN and IoU sum per category of one image (only categories that occur)."""
        stats: ImageStats = {}

        def count(cat_id: int, column: int, value: float = 1.0) -> None:
            stats.setdefault(cat_id, [0.0, 0.0, 0.0, 0.0])[column] += value

        gt_map = _as_id_map(gt_ids, "ground-truth")
        pred_map = _as_id_map(pred_ids, "prediction")
        if gt_map.shape != pred_map.shape:
            raise PanopticFormatError(
                f"image {image_id}: prediction map {pred_map.shape} and ground truth {gt_map.shape} differ in size"
            )
        gt_segms = {int(s["id"]): dict(s) for s in gt_segments}
        pred_segms = {int(s["id"]): dict(s) for s in pred_segments}
        self._count_pred_areas(pred_map, pred_segms, image_id)
        if any("area" not in s for s in gt_segms.values()):
            ids, counts = np.unique(gt_map, return_counts=True)
            gt_area = dict(zip(ids.tolist(), counts.tolist()))
            for gt_id, seg in gt_segms.items():
                seg.setdefault("area", gt_area.get(gt_id, 0))

        joint = gt_map.astype(np.uint64) * np.uint64(OFFSET) + pred_map.astype(np.uint64)
        labels, counts = np.unique(joint, return_counts=True)
        inter = {(int(lab) // OFFSET, int(lab) % OFFSET): int(c) for lab, c in zip(labels, counts)}

        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (gt_id, pred_id), intersection in inter.items():
            if gt_id not in gt_segms or pred_id not in pred_segms:
                continue
            gt_seg, pred_seg = gt_segms[gt_id], pred_segms[pred_id]
            if gt_seg.get("iscrowd", 0) == 1 or gt_seg["category_id"] != pred_seg["category_id"]:
                continue
            union = pred_seg["area"] + gt_seg["area"] - intersection - inter.get((VOID, pred_id), 0)
            iou = intersection / union
            if iou > 0.5:
                cat_id = int(gt_seg["category_id"])
                count(cat_id, _TP)
                count(cat_id, _IOU, iou)
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)

        crowd_by_category: dict[int, int] = {}
        for gt_id, gt_seg in gt_segms.items():
            if gt_id in gt_matched:
                continue
            if gt_seg.get("iscrowd", 0) == 1:
                crowd_by_category[int(gt_seg["category_id"])] = gt_id
                continue
            count(self._gt_category(gt_seg, image_id), _FN)

        for pred_id, pred_seg in pred_segms.items():
            if pred_id in pred_matched:
                continue
            ignored = inter.get((VOID, pred_id), 0)
            crowd_id = crowd_by_category.get(int(pred_seg["category_id"]))
            if crowd_id is not None:
                ignored += inter.get((crowd_id, pred_id), 0)
            if ignored / pred_seg["area"] > 0.5:
                continue
            count(int(pred_seg["category_id"]), _FP)
        return stats

    def _count_pred_areas(self, pred_map: np.ndarray, pred_segms: dict[int, dict], image_id: Any) -> None:
        unlisted = set(pred_segms)
        ids, counts = np.unique(pred_map, return_counts=True)
        for seg_id, count in zip(ids.tolist(), counts.tolist()):
            if seg_id not in pred_segms:
                if seg_id == VOID:
                    continue
                raise PanopticFormatError(
                    f"image {image_id}: segment id {seg_id} is in the prediction map but not in its segments_info"
                )
            seg = pred_segms[seg_id]
            seg["area"] = count
            unlisted.discard(seg_id)
            if int(seg["category_id"]) not in self.categories:
                raise PanopticFormatError(
                    f"image {image_id}: segment id {seg_id} has unknown category_id {seg['category_id']}"
                )
        if unlisted:
            raise PanopticFormatError(
                f"image {image_id}: segment ids {sorted(unlisted)} are in segments_info but not in the prediction map"
            )

    def _gt_category(self, gt_seg: Mapping[str, Any], image_id: Any) -> int:
        cat_id = int(gt_seg["category_id"])
        if cat_id not in self._row:
            raise PanopticFormatError(
                f"image {image_id}: ground-truth category_id {gt_seg['category_id']} is not in the categories"
            )
        return cat_id

    # ---- merging across processes -------------------------------------------------------------
    def as_tensor(self) -> Tensor:
        """TP, FP, FN, IoU sums per category (rows in sorted category-id order) plus the image count."""
        extra = np.zeros((1, 4))
        extra[0, 0] = self.num_images
        return torch.from_numpy(np.concatenate([self.stats, extra]))

    def load_tensor(self, totals: Tensor) -> None:
        if tuple(totals.shape) != (len(self.cat_ids) + 1, 4):
            raise ValueError(f"expected a {len(self.cat_ids) + 1} x 4 tensor, got {tuple(totals.shape)}")
        values = totals.double().cpu().numpy()
        self.stats = values[:-1].copy()
        self.num_images = int(round(values[-1, 0]))

    def merge(self, other: PQAccumulator) -> PQAccumulator:
        if other.cat_ids != self.cat_ids:
            raise ValueError("cannot merge panoptic accumulators built for different categories")
        self.stats += other.stats
        self.num_images += other.num_images
        return self

    __iadd__ = merge

    # ---- results ------------------------------------------------------------------------------
    def category_counts(self, cat_id: int) -> dict[str, float]:
        tp, fp, fn, iou = self.stats[self._row[cat_id]]
        return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "iou": float(iou)}

    def average(self, isthing: bool | None = None) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """Mean PQ/SQ/RQ (fractions) over counted categories of the selection, and per-class values."""
        pq = sq = rq = 0.0
        n = 0
        per_class: dict[int, dict[str, float]] = {}
        for cat_id in self.cat_ids:
            if isthing is not None and (self.categories[cat_id]["isthing"] == 1) != isthing:
                continue
            tp, fp, fn, iou = self.stats[self._row[cat_id]]
            if tp + fp + fn == 0:
                per_class[cat_id] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = tp + 0.5 * fp + 0.5 * fn
            values = {"pq": iou / denominator, "sq": iou / tp if tp != 0 else 0.0, "rq": tp / denominator}
            per_class[cat_id] = values
            pq, sq, rq = pq + values["pq"], sq + values["sq"], rq + values["rq"]
        if n == 0:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def summary(self) -> dict[str, Any]:
        """mmdet's keys in percent: PQ, SQ, RQ, and _th (things) / _st (stuff), plus counts and per class."""
        result: dict[str, Any] = {}
        counted: dict[str, int] = {}
        per_class: dict[int, dict[str, float]] = {}
        for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
            avg, classes = self.average(isthing)
            for key in ("pq", "sq", "rq"):
                result[key.upper() + suffix] = 100.0 * avg[key]
            counted[{"": "all", "_th": "things", "_st": "stuff"}[suffix]] = avg["n"]
            if isthing is None:
                per_class = classes
        result["num_categories"] = counted
        result["num_images"] = self.num_images
        result["per_class"] = {
            self.categories[cat_id]["name"]: {
                "PQ": 100.0 * v["pq"], "SQ": 100.0 * v["sq"], "RQ": 100.0 * v["rq"], **self.category_counts(cat_id)
            }
            for cat_id, v in per_class.items()
        }
        return result


def _as_id_map(ids: np.ndarray | Tensor, what: str) -> np.ndarray:
    if isinstance(ids, Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise PanopticFormatError(f"{what} id map must be H x W (apply rgb2id to RGB PNGs), got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise PanopticFormatError(f"{what} id map must hold integer ids, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise PanopticFormatError(f"{what} ids must lie in [0, 256^3)")
    return ids


def evaluate_panoptic_files(
    gt_json_file: str | Path,
    pred_json_file: str | Path,
    gt_folder: str | Path | None = None,
    pred_folder: str | Path | None = None,
    only_predicted_images: bool = False,
) -> dict[str, Any]:
    """``pq_compute`` on files: ground truth and predictions in the COCO panoptic format.

    Folders default to the JSON path without ``.json``, as in panopticapi. Every ground-truth
    image needs a prediction unless ``only_predicted_images`` (then the ground truth is limited
    to the predicted images, as an evaluation with ``--limit`` does).
    """
    gt_json_file, pred_json_file = Path(gt_json_file), Path(pred_json_file)
    gt_json = json.loads(gt_json_file.read_text())
    pred_json = json.loads(pred_json_file.read_text())
    gt_folder = Path(gt_folder) if gt_folder is not None else gt_json_file.with_suffix("")
    pred_folder = Path(pred_folder) if pred_folder is not None else pred_json_file.with_suffix("")
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} segmentation folder {folder} does not exist")
    predictions = {ann["image_id"]: ann for ann in pred_json["annotations"]}
    accumulator = PQAccumulator(gt_json["categories"])
    for gt_ann in gt_json["annotations"]:
        pred_ann = predictions.get(gt_ann["image_id"])
        if pred_ann is None:
            if only_predicted_images:
                continue
            raise PanopticFormatError(f"no prediction for the image with id {gt_ann['image_id']}")
        accumulator.update(
            read_id_png(gt_folder / gt_ann["file_name"]),
            gt_ann["segments_info"],
            read_id_png(pred_folder / pred_ann["file_name"]),
            pred_ann["segments_info"],
            image_id=gt_ann["image_id"],
        )
    return accumulator.summary()
