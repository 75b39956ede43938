"""Preprocessing checks: our cv2 INTER_LINEAR emulation against cv2, our test pipeline against mmdet's."""

from __future__ import annotations

from typing import Any

import numpy as np
from common import SEED, max_abs, synthetic_image
from model_checks import as_meta
from upstream import mmdet_config, mmdet_inputs

from lda_bench.data.transforms import preprocess
from lda_bench.structures import ImageMeta

RESIZE_CASES = [  # (source h, w) -> keep-ratio 1333x800 (mmdet) unless a target is given
    ((427, 640), None), ((480, 640), None), ((375, 500), None), ((640, 427), None), ((612, 612), None),
    ((300, 451), None), ((100, 37), None), ((7, 5), None), ((1, 1), None), ((1200, 1800), None),
    ((64, 96), (32, 48)),  # exact 2x downscale (cv2's INTER_AREA fast path)
    ((17, 2), (5, 17)), ((333, 500), (512, 769)),  # mmseg's 2048x512 keep-ratio target
]


def preprocessing_check() -> dict[str, Any]:
    """Our cv2 INTER_LINEAR emulation against cv2 itself, and both test pipelines against ours."""
    import cv2

    from lda_bench.data.transforms import rescale_size, resize_linear_uint8

    rng = np.random.default_rng(SEED)
    values = differing = 0
    worst: list[str] = []
    for (h, w), target in RESIZE_CASES:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        tw, th = (rescale_size(w, h)[:2]) if target is None else (target[1], target[0])
        ref = cv2.resize(img, (tw, th), interpolation=cv2.INTER_LINEAR)
        ours = resize_linear_uint8(img, tw, th)
        values += ref.size
        bad = int((ref != ours).sum())
        differing += bad
        if bad:
            worst.append(f"{h}x{w} -> {th}x{tw}: {bad}")
    record = {"name": "resize: cv2.resize(INTER_LINEAR) on uint8", "opencv": cv2.__version__,
              "cases": len(RESIZE_CASES), "values": values, "differing_values": differing, "differing_cases": worst}
    # mmdet's test pipeline (FPN_CARAFE config) and ours, on synthetic images of several sizes.
    cfg = mmdet_config("carafe/faster_rcnn_r50_fpn_carafe_1x_coco.py")
    pipelines = []
    for (h, w) in ((427, 640), (480, 640), (640, 480), (333, 500), (612, 612)):
        bgr = synthetic_image(h, w, seed=h + w)
        img, metas = mmdet_inputs(cfg, bgr)
        pre = preprocess(bgr, (1333, 800), 64)
        pipelines.append({"image": [h, w], "input": list(img.shape[-2:]), "max_abs": max_abs(img[0], pre.image),
                          "meta_equal": as_meta(metas[0]) == ImageMeta(pre.ori_shape, pre.img_shape, pre.pad_shape,
                                                                       pre.scale_factor)})
    record["mmdet_pipeline"] = pipelines
    record["equal"] = differing == 0 and all(p["max_abs"] == 0 and p["meta_equal"] for p in pipelines)
    return record

