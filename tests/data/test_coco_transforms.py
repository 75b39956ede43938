"""mmdet test-pipeline preprocessing: sizes with mmcv's rounding, cv2-style uint8 resize, normalise, pad."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lda_bench.data.transforms import (
    MEAN_RGB,
    STD_RGB,
    collate,
    pad_to_divisor,
    preprocess,
    rescale_size,
    resize_linear_uint8,
)


@pytest.mark.parametrize(
    "size,expected",
    [
        ((640, 480), (1067, 800)),  # s = 800/480; 1066.67 rounds up (torchvision floors to 1066)
        ((480, 640), (800, 1067)),  # portrait
        ((500, 375), (1067, 800)),  # s = 2.1333: 1066.67 -> 1067, 800.0 -> 800
        ((1333, 800), (1333, 800)),
        ((2000, 500), (1333, 333)),  # long side binds: s = 0.6665, 333.25 -> 333
        ((640, 427), (1199, 800)),  # s = 800/427: 1199.06 -> 1199
        ((612, 428), (1144, 800)),  # s = 800/428: 1143.93 rounds up (floor: 1143)
    ],
)
def test_rescale_size_rounds_like_mmcv(size, expected):
    w, h, _ = rescale_size(*size)
    assert (w, h) == expected


def test_pad_sizes_64_and_32():
    img = torch.ones(3, 800, 1067)
    assert pad_to_divisor(img, 64).shape[-2:] == (832, 1088)
    assert pad_to_divisor(img, 32).shape[-2:] == (800, 1088)
    padded = pad_to_divisor(img, 64)
    assert padded[:, 800:].abs().sum() == 0 and padded[:, :, 1067:].abs().sum() == 0  # zeros = the mean


def test_resize_horizontal_hand_values_and_edge_clamp():
    # 1 x 2 -> 1 x 4, scale 0.5: source x = (dx + 0.5) * 0.5 - 0.5 = -0.25, 0.25, 0.75, 1.25.
    # -0.25 and 1.25 fall outside and are clamped to the edge pixels; 0.25 / 0.75 get 11-bit weights
    # 1536/512 and 512/1536: 255 * 512 / 2048 = 63.75 -> 64 and 191.25 -> 191.
    img = np.array([[[0], [255]]], dtype=np.uint8)
    assert resize_linear_uint8(img, 4, 1)[0, :, 0].tolist() == [0, 64, 191, 255]


def test_resize_vertical_rounding_hand_value():
    # Rows [1; 5] (2 x 17, one channel) -> 5 rows. Output row 3: fy = 3.5 * 0.4 - 0.5 = 0.9, weights
    # b0 = round(0.1 * 2048) = 205, b1 = round(0.9 * 2048) = 1843; horizontal sums H = 2048 * value.
    # cv2's vertical pass: ((2048 >> 4) * 205 >> 16) + ((10240 >> 4) * 1843 >> 16) = 0 + 17; (17 + 2) >> 2
    # = 4 on every element, the tail after the last 16-lane vector included (opencv-python 4.5.5 and
    # 4.11.0 print 4 for all 17; the exact value 4.5996 would round to 5, as the scalar formula
    # (H0 * b0 + H1 * b1 + 2**21) >> 22 does).
    img = np.array([[1] * 17, [5] * 17], dtype=np.uint8)[..., None]
    out = resize_linear_uint8(img, 17, 5)[..., 0]
    assert out[3].tolist() == [4] * 17
    assert resize_linear_uint8(img[:, :1], 1, 5)[3, 0, 0] == 4  # a row shorter than one vector


def test_resize_exact_half_uses_area_mean():
    img = np.array([[[10], [11]], [[13], [11]]], dtype=np.uint8)  # mean 11.25 -> (45 + 2) >> 2 = 11
    assert resize_linear_uint8(img, 1, 1)[0, 0, 0] == 11


def test_resize_is_within_one_level_of_float_bilinear():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    ours = resize_linear_uint8(img, 91, 64).astype(np.int32)
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].double(), size=(64, 91), mode="bilinear",
                        align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - ref).max() <= 1.0


def test_preprocess_meta_and_normalisation():
    bgr = np.zeros((480, 640, 3), dtype=np.uint8)
    bgr[..., 0] = 255  # pure blue in BGR
    out = preprocess(bgr)
    assert out.ori_shape == (480, 640)
    assert out.img_shape == (800, 1067)
    assert out.pad_shape == (832, 1088)
    assert out.scale_factor == pytest.approx((1067 / 640, 800 / 480, 1067 / 640, 800 / 480))
    # channel 2 of the tensor is blue (RGB order): (255 - 103.53) / 57.375
    assert out.image[2, 0, 0].item() == pytest.approx((255 - MEAN_RGB[2]) / STD_RGB[2], rel=1e-6)
    assert out.image[0, 0, 0].item() == pytest.approx(-MEAN_RGB[0] / STD_RGB[0], rel=1e-6)
    assert out.image[:, 800:].abs().sum() == 0


def test_collate_pads_to_largest():
    batch = collate([torch.ones(3, 64, 128), torch.ones(3, 128, 64)])
    assert batch.shape == (2, 3, 128, 128)
    assert batch[0, :, 64:].sum() == 0 and batch[1, :, :, 64:].sum() == 0


def test_normalisation_is_mmcv_imnormalize_bit_for_bit():
    """mmcv.imnormalize with mmdet's float32 mean/std subtracts in float32 and multiplies by
    1/float64(std) in double (cv2 with a float64 scalar); every uint8 value of every channel must
    come out as that, not as float32 arithmetic."""
    from lda_bench.data.transforms import normalize_rgb

    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values] * 3, axis=-1)[None]  # 1 x 256 x 3
    ours = normalize_rgb(rgb).numpy()[:, 0, :]  # 3 x 256
    mean32 = np.array(MEAN_RGB, dtype=np.float32)[:, None]
    stdinv64 = 1.0 / np.array(STD_RGB, dtype=np.float32).astype(np.float64)[:, None]
    centred = values[None].astype(np.float32) - mean32
    assert np.array_equal(ours, (centred.astype(np.float64) * stdinv64).astype(np.float32))
    float32_only = centred * stdinv64.astype(np.float32)
    assert (ours != float32_only).any()  # the two recipes differ, so the test can tell them apart
