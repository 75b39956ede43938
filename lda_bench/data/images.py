"""Reading dataset images the way mmcv's test pipelines see them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError


def read_bgr(path: Path, width: int, height: int, image_id: int) -> np.ndarray:
    """The image at ``path`` as uint8 H x W x 3 BGR (what mmcv's cv2 decoding returns).

    Pillow does not apply EXIF orientation; whether mmcv's cv2 decoding did is not established
    (mmcv/image/io.py, ``imfrombytes``; docs/mmdet-fidelity.md). A decoded size that disagrees with the annotation's
    ``width`` x ``height`` is an error, which catches rotated decodes of non-square images.
    """
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image {path} (id {image_id}) does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if rgb.shape[:2] != (height, width):
        raise DataError(f"image {path} is {rgb.shape[1]}x{rgb.shape[0]} but the annotation says {width}x{height}")
    return np.ascontiguousarray(rgb[..., ::-1])
