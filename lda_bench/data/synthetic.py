"""A tiny COCO-format dataset written on the fly, for tests and smoke runs (nothing is downloaded).

Each image gets a noisy background and a few filled shapes: rectangles and triangles as polygon
annotations, plus, in the first image, a crowd region stored as uncompressed RLE (``iscrowd=1``), as
COCO stores crowds. The last image has no annotations. Category ids are deliberately not contiguous
(1, 3, 7) so the label <-> id mapping is exercised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
from PIL import Image, ImageDraw

CATEGORIES = [
    {"id": 1, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 7, "name": "bar", "supercategory": "shape"},
]


def _polygon_annotation(points: list[tuple[float, float]], height: int, width: int) -> dict[str, Any]:
    flat = [float(v) for p in points for v in p]
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    xs, ys = flat[0::2], flat[1::2]
    return {
        "segmentation": [flat],
        "area": float(mask_utils.area(rle)),
        "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
        "iscrowd": 0,
    }


def _crowd_annotation(mask: np.ndarray) -> dict[str, Any]:
    # Uncompressed RLE (column-major run lengths starting with a zero run), as COCO crowds are stored.
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    h, w = mask.shape
    rle = mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
    x, y, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
    return {"segmentation": {"counts": counts, "size": [h, w]}, "area": float(mask_utils.area(rle)),
            "bbox": [x, y, bw, bh], "iscrowd": 1}


def _shapes(rng: np.random.Generator, height: int, width: int, count: int) -> list[tuple[int, list[tuple[float, float]]]]:
    shapes = []
    for _ in range(count):
        kind = int(rng.integers(0, 3))
        bw = float(rng.integers(width // 6, width // 2))
        bh = float(rng.integers(height // 6, height // 2))
        x0 = float(rng.integers(0, width - int(bw)))
        y0 = float(rng.integers(0, height - int(bh)))
        if kind == 0:  # square-ish rectangle
            pts = [(x0, y0), (x0 + bw, y0), (x0 + bw, y0 + bh), (x0, y0 + bh)]
        elif kind == 1:  # triangle
            pts = [(x0 + bw / 2, y0), (x0 + bw, y0 + bh), (x0, y0 + bh)]
        else:  # thin bar
            bh = max(4.0, bh / 3)
            pts = [(x0, y0), (x0 + bw, y0), (x0 + bw, y0 + bh), (x0, y0 + bh)]
        shapes.append((CATEGORIES[kind]["id"], pts))
    return shapes


def write_synthetic_coco(
    root: str | Path,
    split: str = "val2017",
    num_images: int = 4,
    height: int = 96,
    width: int = 128,
    objects_per_image: int = 3,
    seed: int = 0,
) -> Path:
    """Write ``<root>/annotations/instances_<split>.json`` and ``<root>/<split>/*.png``; returns the JSON path."""
    if num_images < 2:
        raise ValueError("num_images must be >= 2 (one image is left without annotations)")
    root = Path(root)
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colors = {1: (220, 40, 40), 3: (40, 200, 60), 7: (50, 80, 230)}
    images, annotations = [], []
    for index in range(num_images):
        image_id = 1000 + 7 * index  # not 0-based or contiguous, like real COCO ids
        file_name = f"{image_id:012d}.png"
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        canvas = Image.fromarray(pixels)
        draw = ImageDraw.Draw(canvas)
        anns: list[dict[str, Any]] = []
        if index < num_images - 1:
            for cat_id, pts in _shapes(rng, height, width, objects_per_image):
                draw.polygon(pts, fill=colors[cat_id])
                anns.append({**_polygon_annotation(pts, height, width), "category_id": cat_id})
        if index == 0:
            crowd = np.zeros((height, width), dtype=bool)
            crowd[height - height // 4 :, : width // 3] = True
            anns.append({**_crowd_annotation(crowd), "category_id": CATEGORIES[0]["id"]})
        canvas.save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return ann_file
