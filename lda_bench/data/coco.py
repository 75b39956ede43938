"""COCO detection data: the annotation/image-folder reader and the results writer.

Layout under the dataset root (as mmdet's COCO configs expect it)::

    annotations/instances_<split>.json
    <split>/<file_name>            e.g. val2017/000000000139.jpg

Contiguous label ``i`` of a model is the ``i``-th category of the annotation file in its own order
(mmdet's ``cat_ids``; for COCO that is ascending id order, 1..90 without the gaps).
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO

from lda_bench.structures import Detections

from .errors import DataError
from .images import read_bgr

__all__ = ["CocoDetection", "DataError", "ImageRecord", "detections_to_coco", "load_coco_api"]


@dataclass(frozen=True)
class ImageRecord:
    index: int  # position in the annotation file's image list
    image_id: int
    file_name: str
    height: int
    width: int


def load_coco_api(ann_file: str | Path) -> COCO:
    """pycocotools COCO for ``ann_file``, with its chatter silenced and errors made one line."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(f"annotation file {ann_file} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(ann_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{ann_file} is not valid JSON: {exc}") from None
    except (KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"{ann_file} is not a COCO annotation file ({type(exc).__name__}: {exc})") from None


class CocoDetection:
    """Images and categories of one COCO split; images are read on demand."""

    def __init__(self, root: str | Path, split: str = "val2017", ann_file: str | Path | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist (expected a COCO root with annotations/ and {split}/)")
        self.split = split
        self.ann_file = Path(ann_file) if ann_file is not None else self.root / "annotations" / f"instances_{split}.json"
        if not self.ann_file.is_file():
            raise DataError(
                f"no annotation file {self.ann_file}; expected the COCO layout "
                f"<root>/annotations/instances_{split}.json and <root>/{split}/ (or pass --ann)"
            )
        self.image_dir = self.root / split
        if not self.image_dir.is_dir():
            raise DataError(f"no image folder {self.image_dir}; expected the COCO layout <root>/{split}/<file_name>")
        self.coco = load_coco_api(self.ann_file)
        cats = self.coco.dataset.get("categories")
        if not cats:
            raise DataError(f"{self.ann_file} has no categories")
        self.cat_ids: list[int] = [int(c["id"]) for c in cats]
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.images: list[ImageRecord] = [
            ImageRecord(i, int(img["id"]), str(img["file_name"]), int(img["height"]), int(img["width"]))
            for i, img in enumerate(self.coco.dataset.get("images", []))
        ]
        if not self.images:
            raise DataError(f"{self.ann_file} lists no images")

    def __len__(self) -> int:
        return len(self.images)

    def read_bgr(self, record: ImageRecord) -> np.ndarray:
        """The image as uint8 H x W x 3 BGR, its size checked against the annotation (:func:`read_bgr`)."""
        return read_bgr(self.image_dir / record.file_name, record.width, record.height, record.image_id)


def detections_to_coco(
    det: Detections, image_id: int, cat_ids: Sequence[int], with_masks: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """COCO results records (bbox, segm) of one image, as mmdet's results2json writes them.

    bbox: ``[x, y, w, h]`` with w = x2 - x1 (no +1), the score as a float. segm: the mask as
    compressed RLE with a str ``counts``, the box score, and **no bbox field** (with one, pycocotools
    would take the box area for the small/medium/large split).
    """
    boxes = det.boxes.detach().cpu().to(torch.float32).numpy()
    scores = det.scores.detach().cpu().numpy()
    labels = det.labels.detach().cpu().numpy()
    bbox_results, segm_results = [], []
    for k in range(boxes.shape[0]):
        x1, y1, x2, y2 = boxes[k].tolist()
        bbox_results.append(
            {"image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[k]),
             "category_id": cat_ids[int(labels[k])]}
        )
    if with_masks and det.masks is not None and boxes.shape[0] > 0:
        masks = np.asfortranarray(det.masks.detach().cpu().numpy().transpose(1, 2, 0).astype(np.uint8))
        for k, rle in enumerate(mask_utils.encode(masks)):
            rle["counts"] = rle["counts"].decode("ascii")
            segm_results.append(
                {"image_id": image_id, "segmentation": rle, "score": float(scores[k]),
                 "category_id": cat_ids[int(labels[k])]}
            )
    return bbox_results, segm_results
