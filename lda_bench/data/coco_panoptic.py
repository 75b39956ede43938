"""COCO panoptic: reading the ground truth (JSON + PNG folder) and writing predictions.

The format (cocodataset/panopticapi): one RGB PNG per image whose pixels encode a segment id as
``id = R + 256 G + 256^2 B`` (0 = VOID, unlabelled), and a JSON with ``images``, ``categories``
(``id``, ``name``, ``isthing``) and ``annotations``: one record per image with ``image_id``,
``file_name`` (the PNG) and ``segments_info`` (``id``, ``category_id``, ``area``, ``bbox``,
``iscrowd``).

Contiguous labels follow mmdet 2.x ``CocoPanopticDataset``: things in ascending id order
(0..79 on COCO), then stuff in ascending id order (80..132); label ``num_classes`` (133) is VOID.
Panoptic maps from mmdet's fusion hold ``label + k * INSTANCE_OFFSET`` per pixel (k >= 1 for
instances, 0 for stuff); :func:`pan_to_segments` turns one into a PNG id map and segment list the
way mmdet's ``_pan2json`` does, and :class:`PanopticPredictionWriter` writes them out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from lda_bench.structures import INSTANCE_OFFSET

from .errors import DataError
from .images import read_bgr

VOID = 0


def rgb2id(color: np.ndarray) -> np.ndarray:
    """H x W x 3 RGB array -> H x W int64 segment ids (``R + 256 G + 256^2 B``)."""
    color = np.asarray(color)
    if color.ndim != 3 or color.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB array, got shape {color.shape}")
    color = color.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 256 * 256 * color[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """H x W segment ids -> H x W x 3 uint8 RGB (inverse of :func:`rgb2id`)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError("panoptic ids must lie in [0, 256^3)")
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rest = ids.copy()
    for channel in range(3):
        rgb[..., channel] = rest % 256
        rest //= 256
    return rgb


def read_id_png(path: str | Path) -> np.ndarray:
    """Read a panoptic PNG as an H x W int64 id map."""
    with Image.open(path) as image:
        return rgb2id(np.array(image.convert("RGB")))


def write_id_png(path: str | Path, ids: np.ndarray) -> None:
    Image.fromarray(id2rgb(ids)).save(path)  # uint8 H x W x 3 is RGB


@dataclass(frozen=True)
class PanopticCategories:
    """The categories of a panoptic JSON in mmdet's contiguous label order (things, then stuff)."""

    categories: tuple[dict[str, Any], ...]

    @classmethod
    def from_json(cls, categories: Iterable[Mapping[str, Any]]) -> PanopticCategories:
        cats = [dict(c) for c in categories]
        if not cats:
            raise ValueError("the panoptic JSON has no categories")
        things = sorted((c for c in cats if c.get("isthing", 0) == 1), key=lambda c: c["id"])
        stuff = sorted((c for c in cats if c.get("isthing", 0) != 1), key=lambda c: c["id"])
        return cls(tuple(things + stuff))

    @property
    def num_things(self) -> int:
        return sum(1 for c in self.categories if c.get("isthing", 0) == 1)

    @property
    def num_stuff(self) -> int:
        return len(self.categories) - self.num_things

    @property
    def num_classes(self) -> int:
        """Things + stuff; also the contiguous label of VOID."""
        return len(self.categories)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.get("name", str(c["id"])) for c in self.categories)

    def cat_id(self, label: int) -> int:
        return int(self.categories[label]["id"])

    def label(self, cat_id: int) -> int:
        for index, cat in enumerate(self.categories):
            if cat["id"] == cat_id:
                return index
        raise KeyError(f"unknown panoptic category id {cat_id}")

    def isthing(self, label: int) -> bool:
        return self.categories[label].get("isthing", 0) == 1


@dataclass(frozen=True)
class PanopticRecord:
    """One image of a COCO-panoptic split."""

    image_id: int
    file_name: str  # the image (JPEG)
    segm_file: str  # the panoptic PNG
    height: int
    width: int
    segments_info: tuple[dict[str, Any], ...]


class CocoPanoptic:
    """COCO-panoptic ground truth: ``panoptic_<split>.json`` + its PNG folder (+ the image folder).

    Images keep the JSON's ``images`` order; images without an annotation record are skipped.
    """

    def __init__(
        self,
        ann_file: str | Path,
        seg_folder: str | Path | None = None,
        img_folder: str | Path | None = None,
    ) -> None:
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"panoptic annotation file {self.ann_file} does not exist")
        self.seg_folder = Path(seg_folder) if seg_folder is not None else self.ann_file.with_suffix("")
        self.img_folder = Path(img_folder) if img_folder is not None else None
        data = json.loads(self.ann_file.read_text())
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.ann_file} is not a COCO panoptic file: no {key!r} key")
        self.categories_json: list[dict[str, Any]] = data["categories"]
        self.categories = PanopticCategories.from_json(data["categories"])
        annotations = {ann["image_id"]: ann for ann in data["annotations"]}
        self.records: list[PanopticRecord] = []
        for image in data["images"]:
            ann = annotations.get(image["id"])
            if ann is None:
                continue
            self.records.append(
                PanopticRecord(
                    image_id=image["id"],
                    file_name=image["file_name"],
                    segm_file=ann["file_name"],
                    height=int(image["height"]),
                    width=int(image["width"]),
                    segments_info=tuple(ann["segments_info"]),
                )
            )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PanopticRecord:
        return self.records[index]

    def load_panoptic(self, index: int) -> np.ndarray:
        """The ground-truth id map of image ``index`` (H x W int64)."""
        return read_id_png(self.seg_folder / self.records[index].segm_file)

    def load_image(self, index: int) -> np.ndarray:
        """The image as H x W x 3 uint8 RGB (needs ``img_folder``)."""
        if self.img_folder is None:
            raise ValueError("CocoPanoptic was built without img_folder; pass the image folder to load images")
        with Image.open(self.img_folder / self.records[index].file_name) as image:
            return np.array(image.convert("RGB"))

    def read_bgr(self, index: int) -> np.ndarray:
        """The image as uint8 H x W x 3 BGR for the detector's preprocessing, its size checked
        against the JSON's (:func:`lda_bench.data.images.read_bgr`; needs ``img_folder``)."""
        if self.img_folder is None:
            raise ValueError("CocoPanoptic was built without img_folder; pass the image folder to load images")
        record = self.records[index]
        return read_bgr(self.img_folder / record.file_name, record.width, record.height, record.image_id)


def open_coco_panoptic(root: str | Path, split: str = "val2017", ann_file: str | Path | None = None) -> CocoPanoptic:
    """The COCO-panoptic split under ``root`` (mmdet's layout), raising one-line :class:`DataError` errors::

        annotations/panoptic_<split>.json   annotations/panoptic_<split>/*.png   <split>/*.jpg

    ``ann_file`` replaces the JSON; its PNG folder is then the JSON path without ``.json``.
    """
    root = Path(root)
    layout = (f"expected the COCO-panoptic layout <root>/annotations/panoptic_{split}.json, "
              f"<root>/annotations/panoptic_{split}/*.png and <root>/{split}/")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist ({layout})")
    ann = Path(ann_file) if ann_file is not None else root / "annotations" / f"panoptic_{split}.json"
    if not ann.is_file():
        raise DataError(f"no panoptic annotation file {ann}; {layout} (or pass --ann)")
    seg_folder, img_folder = ann.with_suffix(""), root / split
    for folder, what in ((seg_folder, "panoptic PNG folder"), (img_folder, "image folder")):
        if not folder.is_dir():
            hint = " (the official zip holds panoptic_val2017.zip, which must be unzipped too)" \
                if folder is seg_folder else ""
            raise DataError(f"no {what} {folder}; {layout}{hint}")
    try:
        dataset = CocoPanoptic(ann, seg_folder, img_folder)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{ann} is not valid JSON: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{ann} is not a COCO panoptic annotation file: {exc}") from None
    if len(dataset) == 0:
        raise DataError(f"{ann} has no image with a panoptic annotation")
    return dataset


def pan_to_segments(pan: np.ndarray, categories: PanopticCategories) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """An mmdet panoptic map (``label + k * INSTANCE_OFFSET``, VOID label = ``num_classes``) ->
    (PNG id map, ``segments_info``), as mmdet 2.x ``_pan2json``.

    Each distinct value that is not VOID becomes a segment whose id is that value and whose
    category is the label's COCO id; VOID pixels become id 0.
    """
    pan = np.asarray(pan, dtype=np.int64)
    if pan.ndim != 2:
        raise ValueError(f"expected an H x W panoptic map, got shape {pan.shape}")
    void_label = categories.num_classes
    labels = pan % INSTANCE_OFFSET
    if labels.size and labels.max() > void_label:
        raise ValueError(f"panoptic map holds label {int(labels.max())} > VOID label {void_label}")
    segments = []
    values, counts = np.unique(pan, return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist()):
        label = value % INSTANCE_OFFSET
        if label == void_label:
            continue
        segments.append(
            {
                "id": int(value),
                "category_id": categories.cat_id(label),
                "isthing": int(categories.isthing(label)),
                "area": int(count),
            }
        )
    ids = np.where(labels == void_label, VOID, pan)
    return ids, segments


class PanopticPredictionWriter:
    """Writes predictions as panopticapi expects them: one PNG per image plus one JSON."""

    def __init__(self, png_folder: str | Path) -> None:
        self.png_folder = Path(png_folder)
        self.png_folder.mkdir(parents=True, exist_ok=True)
        self.annotations: list[dict[str, Any]] = []

    def add(self, image_id: int, segm_file: str, ids: np.ndarray, segments_info: Sequence[Mapping[str, Any]]) -> None:
        """Write ``ids`` (H x W) to ``png_folder/segm_file`` and remember the image's record."""
        write_id_png(self.png_folder / segm_file, ids)
        self.annotations.append(
            {"image_id": image_id, "file_name": segm_file, "segments_info": [dict(s) for s in segments_info]}
        )

    def write_json(self, json_file: str | Path, categories: Sequence[Mapping[str, Any]]) -> Path:
        """The prediction JSON (``annotations`` + the ground truth's ``categories``)."""
        json_file = Path(json_file)
        payload = {"annotations": self.annotations, "categories": [dict(c) for c in categories]}
        json_file.write_text(json.dumps(payload))
        return json_file
