"""ADE20K (ADEChallengeData2016) as mmseg reads it.

Layout under the dataset root::

    images/<split>/ADE_val_00000001.jpg ...       RGB JPEGs
    annotations/<split>/ADE_val_00000001.png ...  uint8 labels: 0 = unlabelled, 1..150 = classes

Images are listed in sorted file-name order (as mmseg does). Labels go through
``reduce_zero_label``: 0 -> 255 (ignored), every other value minus 1, so classes are 0..149.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255

# mmseg ADE20KDataset class order (label k - 1 for annotation value k). mmseg spells class 8 'bed '.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label on a uint8 map: 0 -> 255, k -> k - 1, and 255 stays 255."""
    label = np.asarray(label)
    if label.dtype != np.uint8:
        raise ValueError(f"ADE20K labels are uint8, got {label.dtype}")
    out = label.copy()
    out[out == 0] = 255
    out = out - 1  # uint8 arithmetic: 255 -> 254
    out[out == 254] = 255
    return out


@dataclass(frozen=True)
class SegSample:
    name: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    label: np.ndarray  # H x W uint8, IGNORE_INDEX where unlabelled


class ADE20KDataset:
    """Images and labels of one ADE20K split (``validation`` by default)."""

    classes = ADE20K_CLASSES

    def __init__(self, root: str | Path, split: str = "validation", reduce_zero_label: bool = True) -> None:
        root = Path(root)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016" / "images").is_dir():
            root = root / "ADEChallengeData2016"  # accept the folder above the dataset too
        self.root = root
        self.img_dir = root / "images" / split
        self.ann_dir = root / "annotations" / split
        for folder in (self.img_dir, self.ann_dir):
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"{folder} does not exist; expected the ADEChallengeData2016 layout "
                    f"images/{split}/*.jpg and annotations/{split}/*.png under {root}"
                )
        self.reduce_zero_label = reduce_zero_label
        self.names = sorted(p.stem for p in self.img_dir.iterdir() if p.suffix == ".jpg")
        if not self.names:
            raise FileNotFoundError(f"no .jpg images in {self.img_dir}")
        missing = [n for n in self.names if not (self.ann_dir / f"{n}.png").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image(s) have no label PNG in {self.ann_dir}, e.g. {missing[0]}.png"
            )

    def __len__(self) -> int:
        return len(self.names)

    def load_image(self, index: int) -> np.ndarray:
        """H x W x 3 uint8 RGB (EXIF orientation is not applied)."""
        with Image.open(self.img_dir / f"{self.names[index]}.jpg") as image:
            return np.array(image.convert("RGB"))

    def load_label(self, index: int) -> np.ndarray:
        """H x W uint8 labels, reduced (0..149, 255 ignored) unless ``reduce_zero_label`` is off."""
        path = self.ann_dir / f"{self.names[index]}.png"
        with Image.open(path) as image:
            label = np.array(image)  # "unchanged": palette indices or grey values as stored
        if label.ndim != 2 or label.dtype != np.uint8:
            raise ValueError(f"{path}: expected a single-channel uint8 label map, got {label.dtype} {label.shape}")
        return reduce_zero_label(label) if self.reduce_zero_label else label

    def __getitem__(self, index: int) -> SegSample:
        return SegSample(self.names[index], self.load_image(index), self.load_label(index))
