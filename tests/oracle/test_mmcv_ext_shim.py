"""The oracle's stand-ins for compiled mmcv kernels, against the semantics mmcv's sources document.

These run in CI (torch and torchvision only); the comparisons that need mmcv/mmdet/mmseg are in
test_oracle_env.py and run only where LDA_BENCH_ORACLE_VENV names the oracle's environment.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

_SHIM_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "oracle" / "mmcv_ext_shim.py"
_spec = importlib.util.spec_from_file_location("oracle_mmcv_ext_shim", _SHIM_PATH)
shim = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shim)


def nms_by_definition(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    """mmcv nms_cpu with offset 0, written out."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    area = [(float(b[2]) - float(b[0])) * (float(b[3]) - float(b[1])) for b in boxes]
    suppressed, keep = set(), []
    for pos, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if j in suppressed:
                continue
            w = max(0.0, min(float(boxes[i][2]), float(boxes[j][2])) - max(float(boxes[i][0]), float(boxes[j][0])))
            h = max(0.0, min(float(boxes[i][3]), float(boxes[j][3])) - max(float(boxes[i][1]), float(boxes[j][1])))
            inter = w * h
            if inter / (area[i] + area[j] - inter) > threshold:
                suppressed.add(j)
    return keep


def random_boxes(count: int, size: float = 50.0) -> torch.Tensor:
    xy = torch.rand(count, 2, dtype=torch.float64) * size
    wh = torch.rand(count, 2, dtype=torch.float64) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_keeps_what_the_definition_keeps(threshold):
    boxes = random_boxes(60)
    scores = torch.randperm(60).double() / 60  # distinct scores: the order is defined
    assert shim.nms(boxes, scores, threshold).tolist() == nms_by_definition(boxes, scores, threshold)


def test_nms_handles_no_boxes_and_refuses_an_offset():
    assert shim.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    with pytest.raises(NotImplementedError, match="offset"):
        shim.nms(random_boxes(3), torch.rand(3, dtype=torch.float64), 0.5, offset=1)


def bilinear_by_definition(img: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """mmcv roi_align_cpu's bilinear_interpolate for one (C x H x W) map."""
    _, height, width = img.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(img.shape[0], dtype=img.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * img[:, y_low, x_low] + hy * lx * img[:, y_low, x_high]
            + ly * hx * img[:, y_high, x_low] + ly * lx * img[:, y_high, x_high])


def roi_align_by_definition(feats, rois, out_h, out_w, scale, sampling_ratio, aligned):
    out = torch.zeros(rois.shape[0], feats.shape[1], out_h, out_w, dtype=feats.dtype)
    shift = 0.5 if aligned else 0.0
    for n, roi in enumerate(rois.tolist()):
        img = feats[int(roi[0])]
        x1, y1, x2, y2 = (v * scale - shift for v in roi[1:])
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        count = max(grid_h * grid_w, 1)
        for py in range(out_h):
            for px in range(out_w):
                acc = torch.zeros(feats.shape[1], dtype=feats.dtype)
                for iy in range(grid_h):
                    y = y1 + py * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = x1 + px * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += bilinear_by_definition(img, y, x)
                out[n, :, py, px] = acc / count
    return out


@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 0), (True, 2), (False, 0)])
def test_roi_align_avg_matches_the_definition_inside_and_outside_the_map(aligned, sampling_ratio):
    feats = torch.randn(2, 3, 9, 13, dtype=torch.float64)
    rois = torch.tensor([
        [0, 1.0, 2.0, 20.0, 15.0],    # inside
        [1, -6.0, -4.0, 8.0, 5.0],    # over the top-left edge
        [0, 40.0, 25.0, 60.0, 40.0],  # over the bottom-right edge
        [1, 10.0, 10.0, 10.5, 10.2],  # thinner than a bin
    ], dtype=torch.float64)
    output = torch.zeros(4, 3, 7, 7, dtype=torch.float64)
    shim.roi_align_forward(feats, rois, output, feats.new_zeros(0), feats.new_zeros(0), aligned_height=7,
                           aligned_width=7, spatial_scale=0.5, sampling_ratio=sampling_ratio, pool_mode=1,
                           aligned=aligned)
    expected = roi_align_by_definition(feats, rois, 7, 7, 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-12)


def test_roi_align_refuses_max_pooling():
    feats = torch.randn(1, 1, 4, 4)
    with pytest.raises(NotImplementedError, match="avg"):
        shim.roi_align_forward(feats, torch.tensor([[0, 0.0, 0.0, 3.0, 3.0]]), torch.zeros(1, 1, 2, 2),
                               feats, feats, aligned_height=2, aligned_width=2, spatial_scale=1.0,
                               sampling_ratio=0, pool_mode=0, aligned=True)


def carafe_by_definition(features, masks, k, groups, s):
    """mmcv's carafe_naive kernel, one output element at a time."""
    n, c, h, w = features.shape
    out = torch.zeros(n, c, h * s, w * s, dtype=features.dtype)
    r = (k - 1) // 2
    for b in range(n):
        for ch in range(c):
            g = ch // (c // groups)
            for oy in range(h * s):
                for ox in range(w * s):
                    cy, cx = oy // s, ox // s
                    acc = 0.0
                    for iy in range(cy - r, cy + r + 1):
                        for ix in range(cx - r, cx + r + 1):
                            if 0 <= iy < h and 0 <= ix < w:
                                mask_c = (g * k + iy - cy + r) * k + ix - cx + r
                                acc += float(masks[b, mask_c, oy, ox]) * float(features[b, ch, iy, ix])
                    out[b, ch, oy, ox] = acc
    return out


@pytest.mark.parametrize("k,groups,size", [(3, 1, (3, 4)), (5, 2, (2, 5)), (1, 1, (1, 1))])
def test_carafe_forward_matches_the_naive_kernel(k, groups, size):
    h, w = size
    features = torch.randn(2, 4, h, w, dtype=torch.float64)
    masks = torch.rand(2, k * k * groups, 2 * h, 2 * w, dtype=torch.float64)
    output = torch.zeros(2, 4, 2 * h, 2 * w, dtype=torch.float64)
    shim.carafe_forward(features, masks, None, None, None, output, kernel_size=k, group_size=groups, scale_factor=2)
    torch.testing.assert_close(output, carafe_by_definition(features, masks, k, groups, 2), rtol=0, atol=1e-12)


def test_install_registers_mmcv_ext_and_unwritten_kernels_refuse_to_run(monkeypatch):
    monkeypatch.delitem(sys.modules, "mmcv._ext", raising=False)
    module = shim.install()
    try:
        assert sys.modules["mmcv._ext"] is module
        assert module.nms is shim.nms and hasattr(module, "deform_conv_forward")
        with pytest.raises(NotImplementedError, match="deform_conv_forward"):
            module.deform_conv_forward(torch.zeros(1))
        assert not hasattr(module, "__wrapped__")
    finally:
        sys.modules.pop("mmcv._ext", None)
