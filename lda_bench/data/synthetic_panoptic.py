"""A tiny COCO-panoptic dataset written on the fly, for tests and smoke runs (nothing is downloaded).

Layout as mmdet expects it under ``root``: ``annotations/panoptic_<split>.json``,
``annotations/panoptic_<split>/<name>.png`` (RGB id PNGs) and ``<split>/<name>.png`` (the images,
lossless so that colours survive). Categories: 2 things (ids 1, 3) and 2 stuff (ids 92, 184),
listed out of id order so the label <-> id mapping is exercised.

Each image: stuff 92 on the top half and 184 on the bottom half, a VOID strip on the right, and
two or three rectangles of thing classes; the first image also has a crowd region. The image's
pixels **encode the ground truth**: red = 40 * (mmdet label + 1) (0 on VOID), green = 30 *
instance number (0 on stuff), blue = 128, so a test model can read the answer back from its input
(see :func:`decode_pixels`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .coco_panoptic import PanopticCategories, id2rgb

CATEGORIES = [
    {"id": 184, "name": "tree", "isthing": 0, "supercategory": "plant"},
    {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
    {"id": 92, "name": "banner", "isthing": 0, "supercategory": "textile"},
    {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
]
RED_STEP, GREEN_STEP, BLUE = 40, 30, 128


def decode_pixels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mmdet label map with -1 on VOID, instance-number map) from an image written here (H x W x 3 RGB)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] // RED_STEP - 1, rgb[..., 1] // GREEN_STEP


def _rectangles(rng: np.random.Generator, height: int, width: int, count: int) -> list[tuple[int, int, int, int]]:
    boxes = []
    for _ in range(count):
        h, w = int(rng.integers(height // 5, height // 2)), int(rng.integers(width // 6, width // 3))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w - width // 8))
        boxes.append((y, x, h, w))
    return boxes


def write_synthetic_coco_panoptic(
    root: str | Path,
    split: str = "val2017",
    num_images: int = 3,
    height: int = 96,
    width: int = 128,
    seed: int = 0,
) -> Path:
    """Write the dataset under ``root``; returns the panoptic JSON path."""
    root = Path(root)
    seg_dir = root / "annotations" / f"panoptic_{split}"
    img_dir = root / split
    seg_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    cats = PanopticCategories.from_json(CATEGORIES)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(num_images):
        image_id = 2000 + 11 * index
        name = f"{image_id:012d}"
        labels = np.empty((height, width), np.int64)
        labels[: height // 2] = cats.label(92)
        labels[height // 2 :] = cats.label(184)
        instances = np.zeros((height, width), np.int64)
        ids = np.where(np.arange(height)[:, None] < height // 2, 92, 184) * np.ones((1, width), np.int64)
        segments: dict[int, dict[str, Any]] = {92: {"category_id": 92, "iscrowd": 0},
                                               184: {"category_id": 184, "iscrowd": 0}}
        things = [1, 3, 1][: 2 + index % 2]
        for k, ((y, x, h, w), cat_id) in enumerate(zip(_rectangles(rng, height, width, len(things)), things), 1):
            seg_id = 1000 * k + cat_id
            labels[y : y + h, x : x + w] = cats.label(cat_id)
            instances[y : y + h, x : x + w] = k
            ids[y : y + h, x : x + w] = seg_id
            segments[seg_id] = {"category_id": cat_id, "iscrowd": 0}
        if index == 0:  # a crowd region of persons in the bottom-left corner
            crowd_id, k = 5001, len(things) + 1
            labels[-height // 5 :, : width // 4] = cats.label(1)
            instances[-height // 5 :, : width // 4] = k
            ids[-height // 5 :, : width // 4] = crowd_id
            segments[crowd_id] = {"category_id": 1, "iscrowd": 1}
        void = np.zeros((height, width), bool)
        void[:, width - width // 10 :] = True  # an unlabelled strip
        ids[void] = 0
        labels[void] = -1
        instances[void] = 0
        segments_info = []
        for seg_id, seg in segments.items():
            mask = ids == seg_id
            if not mask.any():
                continue  # covered up by later shapes
            rows, cols = np.nonzero(mask)
            bbox = [int(cols.min()), int(rows.min()), int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)]
            segments_info.append({"id": seg_id, **seg, "area": int(mask.sum()), "bbox": bbox})
        Image.fromarray(id2rgb(ids)).save(seg_dir / f"{name}.png")
        pixels = np.stack([RED_STEP * (labels + 1), GREEN_STEP * instances, np.full_like(labels, BLUE)], axis=2)
        Image.fromarray(pixels.astype(np.uint8)).save(img_dir / f"{name}.png")
        images.append({"id": image_id, "file_name": f"{name}.png", "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segments_info})
    ann_file = root / "annotations" / f"panoptic_{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann_file
