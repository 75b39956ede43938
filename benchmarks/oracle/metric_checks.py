"""Metric checks: mmseg mean_iou, mmdet's COCO evaluation and mmdet's panoptic PQ against ours."""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import SEED, quiet
from upstream import source_tree

from lda_bench.data.coco import detections_to_coco
from lda_bench.metrics.coco import coco_evaluate
from lda_bench.metrics.sem_seg import SemSegAccumulator
from lda_bench.structures import Detections


def blob_labels(rng: np.random.Generator, height: int, width: int, classes: int, blobs: int) -> np.ndarray:
    """A label map made of rectangles and discs, like a real annotation (few classes per image, large regions)."""
    label = np.full((height, width), rng.integers(1, classes + 1), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(blobs):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, min(height, width) / 3)
        if rng.random() < 0.5:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
        else:
            inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r * rng.uniform(0.3, 2))
        label[inside] = rng.integers(0, classes + 1)  # 0 = "other", ignored after reduce_zero_label
    return label


def sem_seg_metric_check() -> dict[str, Any]:
    from mmseg.core.evaluation import mean_iou

    from lda_bench.data.ade20k import reduce_zero_label

    rng = np.random.default_rng(SEED)
    labels, preds = [], []
    for _ in range(8):
        h, w = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        raw = blob_labels(rng, h, w, 150, 20)
        noisy = blob_labels(rng, h, w, 150, 20)
        keep = rng.random((h, w)) < 0.7
        pred = np.where(keep, raw.astype(np.int64) - 1, noisy.astype(np.int64) - 1).clip(0, 149)
        labels.append(raw)
        preds.append(pred)
    up = mean_iou(preds, labels, num_classes=150, ignore_index=255, reduce_zero_label=True)
    acc = SemSegAccumulator(150, ignore_index=255)
    for pred, raw in zip(preds, labels):
        acc.update(pred, reduce_zero_label(raw))
    ours = acc.compute()
    up_miou = float(np.nanmean(up["IoU"])) * 100
    up_macc = float(np.nanmean(up["Acc"])) * 100
    up_aacc = float(up["aAcc"]) * 100
    iou_ours = np.array([ours["per_class"][str(k)]["IoU"] for k in range(150)], dtype=np.float64)
    per_class = float(np.nanmax(np.abs(np.nan_to_num(iou_ours, nan=-1) - np.nan_to_num(up["IoU"] * 100, nan=-1))))
    record = {"name": "ADE20K mIoU (mmseg mean_iou, reduce_zero_label, ignore 255)", "images": len(labels),
              "upstream": {"mIoU": up_miou, "mAcc": up_macc, "aAcc": up_aacc},
              "ours": {"mIoU": ours["mIoU"], "mAcc": ours["mAcc"], "aAcc": ours["aAcc"]},
              "per_class_IoU_max_abs": per_class}
    record["max_abs"] = max(abs(up_miou - ours["mIoU"]), abs(up_macc - ours["mAcc"]), abs(up_aacc - ours["aAcc"]),
                            per_class)
    record["equal"] = bool(record["max_abs"] <= 1e-6)
    return record


def coco_metric_check(with_masks: bool = True) -> dict[str, Any]:
    """mmdet's CocoDataset.evaluate path and ours on the same detections of a synthetic annotated set."""
    import mmdet.datasets.coco as mmdet_coco
    import pycocotools.mask as mask_utils
    from mmdet.core import encode_mask_results
    from mmdet.datasets import CocoDataset
    from pycocotools.coco import COCO

    rng = np.random.default_rng(SEED)
    cats = [{"id": cid, "name": f"c{cid}"} for cid in (1, 3, 7, 12)]
    images, annotations, detections = [], [], []
    ann_id = 1
    for image_id in range(1, 7):
        h, w = int(rng.integers(240, 400)), int(rng.integers(240, 400))
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id}.jpg"})
        boxes, scores, labels, masks = [], [], [], []
        for _ in range(int(rng.integers(3, 9))):
            x, y = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
            bw, bh = rng.uniform(8, w - x), rng.uniform(8, h - y)
            label = int(rng.integers(0, len(cats)))
            gt_mask = np.zeros((h, w), dtype=np.uint8)
            gt_mask[int(y):int(y + bh), int(x):int(x + bw)] = 1
            rle = mask_utils.encode(np.asfortranarray(gt_mask))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": cats[label]["id"],
                                "bbox": [x, y, bw, bh], "area": float(gt_mask.sum()), "iscrowd": 0,
                                "segmentation": rle})
            ann_id += 1
            for _ in range(int(rng.integers(1, 4))):  # a few noisy detections per object
                jitter = rng.normal(0, 6, size=4)
                x1, y1 = max(0.0, x + jitter[0]), max(0.0, y + jitter[1])
                x2, y2 = min(float(w), x + bw + jitter[2]), min(float(h), y + bh + jitter[3])
                if x2 - x1 < 2 or y2 - y1 < 2:
                    continue
                boxes.append([x1, y1, x2, y2])
                scores.append(float(rng.uniform(0.05, 1.0)))
                labels.append(label if rng.random() < 0.85 else int(rng.integers(0, len(cats))))
                m = np.zeros((h, w), dtype=bool)
                m[int(y1):int(y2), int(x1):int(x2)] = True
                masks.append(m)
        order = np.argsort(labels, kind="stable")
        detections.append(Detections(torch.tensor(np.array(boxes)[order], dtype=torch.float32),
                                      torch.tensor(np.array(scores)[order], dtype=torch.float32),
                                      torch.tensor(np.array(labels)[order]),
                                      torch.tensor(np.stack(masks)[order])))
    gt = {"images": images, "annotations": annotations, "categories": cats}
    record: dict[str, Any] = {"name": "COCO bbox/segm AP (mmdet CocoDataset.evaluate)", "images": len(images),
                              "detections": int(sum(len(d.boxes) for d in detections))}
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "instances.json"
        ann_file.write_text(json.dumps(gt))
        CocoDataset.CLASSES = tuple(c["name"] for c in cats)
        dataset = CocoDataset(str(ann_file), pipeline=[], test_mode=True)
        mm_results = []
        for det in detections:
            per_class = [np.concatenate([det.boxes[det.labels == k].numpy(),
                                         det.scores[det.labels == k].numpy()[:, None]], axis=1)
                         for k in range(len(cats))]
            segs = [[m for m in det.masks[det.labels == k].numpy()] for k in range(len(cats))]
            # tools/test.py encodes the masks (mmdet.core.encode_mask_results) before evaluate().
            mm_results.append((per_class, encode_mask_results(segs)) if with_masks else per_class)
        captured: list[Any] = []
        original = mmdet_coco.COCOeval

        class Recording(original):  # type: ignore[misc, valid-type]
            def summarize(self) -> None:
                super().summarize()
                captured.append((self.params.iouType, list(map(float, self.stats))))

        mmdet_coco.COCOeval = Recording
        try:
            with quiet():
                dataset.evaluate(mm_results, metric=["bbox", "segm"] if with_masks else ["bbox"])
        finally:
            mmdet_coco.COCOeval = original
        with quiet():
            gt_coco = COCO(str(ann_file))
        cat_ids = [c["id"] for c in cats]
        ours_records: dict[str, list] = {"bbox": [], "segm": []}
        for image, det in zip(images, detections):
            bbox, segm = detections_to_coco(det, image["id"], cat_ids, with_masks)
            ours_records["bbox"] += bbox
            ours_records["segm"] += segm
        # mmdet's results2json on the same detections, for a record-by-record comparison.
        files, _ = dataset.format_results(mm_results, jsonfile_prefix=str(Path(tmp) / "mmdet"))
        up_bbox = json.loads(Path(files["bbox"]).read_text())
        record["bbox_records_equal"] = len(up_bbox) == len(ours_records["bbox"]) and all(
            a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
            and max(abs(u - v) for u, v in zip(a["bbox"], b["bbox"])) <= 1e-4 and abs(a["score"] - b["score"]) <= 1e-7
            for a, b in zip(up_bbox, ours_records["bbox"]))
        if with_masks:
            up_segm = json.loads(Path(files["segm"]).read_text())
            record["segm_records_equal"] = len(up_segm) == len(ours_records["segm"]) and all(
                a["segmentation"] == b["segmentation"] for a, b in zip(up_segm, ours_records["segm"]))
        for iou_type, stats in captured:
            ours = coco_evaluate(gt_coco, ours_records[iou_type], iou_type)
            # AP numbers only: mmdet sets maxDets to 100/300/1000, pycocotools' defaults are 1/10/100,
            # which changes the AR columns (and nothing else while images hold <= 100 detections).
            names = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
            up_ap = {n: stats[i] * 100 for i, n in enumerate(names)}
            our_ap = {n: ours["stats"][i] * 100 for i, n in enumerate(names)}
            record[iou_type] = {"upstream": up_ap, "ours": our_ap,
                                "max_abs": max(abs(up_ap[n] - our_ap[n]) for n in names)}
    record["max_abs"] = max(record[t]["max_abs"] for t in ("bbox", "segm") if t in record)
    record["equal"] = bool(record["max_abs"] <= 1e-6 and record["bbox_records_equal"]
                           and record.get("segm_records_equal", True))
    return record


def panoptic_metric_check(panopticapi: Path | None) -> dict[str, Any]:
    """mmdet 2.28's pq_compute_multi_core (panopticapi's PQStat) against ours on random panoptic PNGs."""
    record: dict[str, Any] = {"name": "COCO-panoptic PQ (mmdet pq_compute_multi_core)"}
    if panopticapi is None:
        record.update(skipped="needs panopticapi (github.com/cocodataset/panopticapi, not on PyPI): "
                              "pass --panopticapi PATH to a checkout", equal=None)
        return record
    tree, commit = source_tree(panopticapi)
    record["panopticapi"] = commit
    sys.path.insert(0, str(tree))
    import mmdet.datasets.api_wrappers.panoptic_evaluation as mm_pan
    from PIL import Image

    from lda_bench.metrics.panoptic import PQAccumulator

    importlib.reload(mm_pan)
    rng = np.random.default_rng(SEED)
    categories = [{"id": i, "name": f"t{i}", "isthing": 1} for i in (1, 2, 5)] + \
        [{"id": i, "name": f"s{i}", "isthing": 0} for i in (90, 95)]
    cat_ids = [c["id"] for c in categories]

    def id_to_rgb(ids: np.ndarray) -> np.ndarray:
        return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)

    def random_panoptic(h: int, w: int) -> tuple[np.ndarray, list[dict]]:
        ids = np.zeros((h, w), dtype=np.int64)  # 0 = void
        segments = []
        yy, xx = np.mgrid[0:h, 0:w]
        for seg_id in range(1, int(rng.integers(4, 10))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(8, h / 2), rng.uniform(8, w / 2)
            inside = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
            ids[inside] = seg_id * 7 + 3
        for value in np.unique(ids):
            if value == 0:
                continue
            segments.append({"id": int(value), "category_id": int(rng.choice(cat_ids)),
                             "iscrowd": int(rng.random() < 0.1), "area": int((ids == value).sum())})
        return ids, segments

    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp) / "gt", Path(tmp) / "pred"
        gt_dir.mkdir()
        pred_dir.mkdir()
        gt_json, pred_json = {"annotations": [], "categories": categories, "images": []}, {"annotations": []}
        acc = PQAccumulator(categories)
        for image_id in range(1, 9):
            h, w = int(rng.integers(60, 120)), int(rng.integers(60, 120))
            gt_ids, gt_segments = random_panoptic(h, w)
            if rng.random() < 0.5:  # a prediction close to the truth: some segments shifted
                pred_ids = np.roll(gt_ids, shift=int(rng.integers(-6, 7)), axis=int(rng.integers(0, 2)))
                pred_segments = [dict(s, iscrowd=0) for s in gt_segments if (pred_ids == s["id"]).any()]
                for s in pred_segments:
                    s["area"] = int((pred_ids == s["id"]).sum())
                    if rng.random() < 0.2:
                        s["category_id"] = int(rng.choice(cat_ids))
            else:
                pred_ids, pred_segments = random_panoptic(h, w)
                for s in pred_segments:
                    s["iscrowd"] = 0
            name = f"{image_id:06d}.png"
            Image.fromarray(id_to_rgb(gt_ids)).save(gt_dir / name)
            Image.fromarray(id_to_rgb(pred_ids)).save(pred_dir / name)
            gt_json["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
            gt_json["annotations"].append({"image_id": image_id, "file_name": name, "segments_info": gt_segments})
            pred_json["annotations"].append({"image_id": image_id, "file_name": name,
                                             "segments_info": pred_segments})
            acc.update(gt_ids, gt_segments, pred_ids, pred_segments, image_id)
        matched = [(g, p) for g, p in zip(gt_json["annotations"], pred_json["annotations"])]
        categories_by_id = {c["id"]: c for c in categories}
        with quiet():
            pq_stat = mm_pan.pq_compute_multi_core(matched, str(gt_dir), str(pred_dir), categories_by_id,
                                                   nproc=1)
        upstream = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            result, _ = pq_stat.pq_average(categories_by_id, isthing=isthing)
            upstream[name] = {k: result[k] * 100 for k in ("pq", "sq", "rq")}
        ours_summary = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            result, _ = acc.average(isthing=isthing)
            ours_summary[name] = {k: result[k] * 100 for k in ("pq", "sq", "rq")}
    record["upstream"], record["ours"] = upstream, ours_summary
    record["images"] = 8
    record["max_abs"] = max(abs(upstream[g][k] - ours_summary[g][k]) for g in upstream for k in ("pq", "sq", "rq"))
    record["equal"] = bool(record["max_abs"] <= 1e-6)
    return record

