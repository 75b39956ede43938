"""ADE20K reader and mmseg's test pipeline (sizes, rounding, resampling, normalisation)."""

import numpy as np
import pytest
import torch
from synthetic_seg import make_ade20k

from lda_bench.data.ade20k import ADE20K_CLASSES, ADE20KDataset, reduce_zero_label
from lda_bench.data.segmentation_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SegTestTransform,
    align_size,
    normalize,
    rescale_size,
    resize_uint8,
)


def test_reduce_zero_label():
    label = np.array([[0, 1, 2, 150, 255]], dtype=np.uint8)
    assert reduce_zero_label(label).tolist() == [[255, 0, 1, 149, 255]]
    with pytest.raises(ValueError):
        reduce_zero_label(label.astype(np.int32))


def test_class_list():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert ADE20K_CLASSES[:3] == ("wall", "building", "sky") and ADE20K_CLASSES[-1] == "flag"


def test_reader(tmp_path):
    make_ade20k(tmp_path)
    data = ADE20KDataset(tmp_path)  # the folder above ADEChallengeData2016 is accepted
    assert len(data) == 3 and data.names[0] == "ADE_val_00000001"
    sample = data[1]
    assert sample.image.shape == (48, 48, 3) and sample.image.dtype == np.uint8
    raw = ADE20KDataset(tmp_path / "ADEChallengeData2016", reduce_zero_label=False).load_label(1)
    assert np.array_equal(sample.label, reduce_zero_label(raw))
    assert set(np.unique(raw)) <= {0, 1, 2, 3}


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016 layout"):
        ADE20KDataset(tmp_path)
    root = make_ade20k(tmp_path)
    next((root / "annotations" / "validation").iterdir()).unlink()
    with pytest.raises(FileNotFoundError, match="no label PNG"):
        ADE20KDataset(root)


@pytest.mark.parametrize(
    "size, expected",
    [
        ((683, 512), (683, 512)),  # factor min(2048/683, 512/512) = 1
        ((640, 480), (683, 512)),  # factor 512/480: 640 * 1.0667 = 682.67 -> rounded to 683 (floor: 682)
        ((3000, 500), (2048, 341)),  # long side limits: factor 2048/3000, 500 * 0.6827 = 341.33
        ((100, 75), (683, 512)),  # upscaled: factor 512/75 = 6.827, 100 * 6.827 = 682.67 -> 683
        ((512, 683), (512, 683)),  # portrait: short side is the width
    ],
)
def test_rescale_size_rounds_like_mmcv(size, expected):
    assert rescale_size(*size) == expected


def test_align_size():
    assert align_size(683, 512, 32) == (704, 512)
    assert align_size(2048, 341, 32) == (2048, 352)
    assert align_size(64, 64, 32) == (64, 64)


def test_resize_uint8_half_pixel_bilinear():
    row = np.array([[[0], [100]]], dtype=np.uint8)  # 1 x 2 x 1
    # Output x samples source x = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]:
    # 0, 0.25 * 100, 0.75 * 100, 100 (OpenCV INTER_LINEAR gives the same values).
    assert resize_uint8(row, 4, 1)[0, :, 0].tolist() == [0, 25, 75, 100]
    # Shrinking takes 2 taps, no anti-aliasing: 4 -> 2 samples x = 0.5 and 2.5 -> means of pairs.
    wide = np.array([[[0], [10], [200], [250]]], dtype=np.uint8)
    assert resize_uint8(wide, 2, 1)[0, :, 0].tolist() == [5, 225]
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    assert np.array_equal(resize_uint8(img, 7, 5), img)


def test_normalize():
    img = np.zeros((2, 3, 3), np.uint8)
    img[..., 0] = 255
    out = normalize(img)
    assert out.shape == (1, 3, 2, 3) and out.dtype == torch.float32
    assert out[0, 0, 0, 0].item() == pytest.approx((255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    assert out[0, 2, 1, 2].item() == pytest.approx(-IMAGENET_MEAN[2] / IMAGENET_STD[2])


def test_transform_sizes_and_meta():
    img = np.full((480, 640, 3), 77, np.uint8)
    tensor, meta = SegTestTransform()(img)
    assert tensor.shape == (1, 3, 512, 683) and meta == {"ori_shape": (480, 640), "img_shape": (512, 683)}
    aligned, meta = SegTestTransform(size_divisor=32)(img)
    assert aligned.shape == (1, 3, 512, 704) and meta["img_shape"] == (512, 704)
    assert SegTestTransform(size_divisor=32).output_size(640, 480) == (704, 512)
    assert torch.allclose(aligned, torch.full_like(aligned, 1.0) * aligned[:, :, :1, :1])  # constant stays constant
    assert "AlignedResize" in SegTestTransform(size_divisor=32).describe()
