"""A tiny ADEChallengeData2016 folder made on the fly (grey JPEGs whose intensity encodes the label)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GREY_STEP = 50  # raw label k (0..3) is painted with grey 20 + 50 k


def grey_of(raw_label: int) -> int:
    return 20 + GREY_STEP * raw_label


def make_ade20k(root: Path, sizes=((40, 56), (48, 48), (36, 60)), seed: int = 0, split: str = "validation") -> Path:
    """Write images/<split>/*.jpg and annotations/<split>/*.png; ``sizes`` are (height, width).

    Labels are raw ADE values 0..3 (0 = unlabelled) in 4 x 4 blocks; the image is grey 20 + 50 k.
    """
    rng = np.random.default_rng(seed)
    img_dir = root / "ADEChallengeData2016" / "images" / split
    ann_dir = root / "ADEChallengeData2016" / "annotations" / split
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes, start=1):
        blocks = rng.integers(0, 4, size=(-(-h // 4), -(-w // 4)))
        label = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[:h, :w].astype(np.uint8)
        grey = (20 + GREY_STEP * label.astype(np.int64)).astype(np.uint8)
        name = f"ADE_val_{i:08d}"
        Image.fromarray(np.stack([grey] * 3, axis=2)).save(img_dir / f"{name}.jpg", quality=100, subsampling=0)
        Image.fromarray(label).save(ann_dir / f"{name}.png")
    return root / "ADEChallengeData2016"
