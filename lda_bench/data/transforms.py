"""mmdet 2.x test-time preprocessing without OpenCV.

Pipeline (mmdet ``LoadImageFromFile -> Resize(keep_ratio) -> Normalize -> Pad``):

1. the image as uint8 H x W x 3 in **BGR** order (cv2 decodes BGR; we decode with Pillow and flip);
2. keep-ratio resize to fit (1333, 800) with mmcv's *rounded* size ``int(x * s + 0.5)``
   (torchvision floors: 640x480 -> 1067x800 here, 1066x800 there);
3. cv2.INTER_LINEAR on uint8, re-implemented bit for bit (checked against opencv-python wheels, see
   :func:`resize_linear_uint8`);
4. BGR -> RGB, ``(x - mean) * (1 / std)`` in float32 with the ImageNet mean/std;
5. zero padding (= the mean) at the bottom/right to a multiple of the size divisor (64 for the
   FPN_CARAFE/FPN_LAU configs, 32 for the base configs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)
DEFAULT_SCALE = (1333, 800)  # mmdet img_scale: (long edge limit, short edge limit)

# cv2's fixed-point bilinear: 11-bit weights (INTER_RESIZE_COEF_BITS).
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def rescale_size(width: int, height: int, scale: tuple[int, int] = DEFAULT_SCALE) -> tuple[int, int, float]:
    """mmcv.rescale_size: the largest keep-ratio size within ``scale``; returns (new_w, new_h, factor)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5), factor


def _linear_coefficients(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index and the two 11-bit weights of every output position, as cv2 computes them.

    cv2: fx = float((d + 0.5) * scale - 0.5) with scale = 1 / (dst / src) in double; sx = floor(fx);
    fx -= sx; weights round((1 - fx) * 2048) and round(fx * 2048) (round half to even). Horizontally,
    positions left/right of the image are clamped (weights 2048/0); vertically only the row index is
    clamped and the weights stay as computed.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp:
        low = s < 0
        f[low] = 0
        s[low] = 0
        high = s >= src - 1
        f[high] = 0
        s[high] = src - 1
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    return s, w0, w1


def resize_linear_uint8(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(image, (width, height), interpolation=INTER_LINEAR) for uint8 H x W x C images.

    Emulates OpenCV's generic 8-bit path (resizeGeneric_ with HResizeLinear / VResizeLinear):
    integer horizontal pass ``S[x0] * a0 + S[x0 + 1] * a1``; vertical pass
    ``(((H0 >> 4) * b0 >> 16) + ((H1 >> 4) * b1 >> 16) + 2) >> 2`` on every element of a row (the
    rounding of its SIMD loop, which cv2 applies to the row's tail too); an exact 2x downscale goes
    through cv2's INTER_AREA fast path (2x2 mean, rounded). Checked against the opencv-python wheels
    4.5.5, 4.7.0, 4.9.0 and 4.11.0 (benchmarks/oracle, results/oracle.md): identical on every value
    of 23 million resized pixels, odd and tiny sizes included. A cv2 built with IPP or other options
    could still differ by a grey level on a few pixels.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 H x W x C image, got {image.dtype} with shape {image.shape}")
    src_h, src_w, channels = image.shape
    if (src_w, src_h) == (width, height):
        return image.copy()
    if src_w == 2 * width and src_h == 2 * height:
        blocks = image.astype(np.int32).reshape(height, 2, width, 2, channels).sum(axis=(1, 3))
        return ((blocks + 2) >> 2).astype(np.uint8)
    img = torch.from_numpy(np.ascontiguousarray(image)).to(torch.int64)
    sx, a0, a1 = (torch.from_numpy(v) for v in _linear_coefficients(src_w, width, clamp=True))
    sx1 = (sx + 1).clamp(max=src_w - 1)  # the weight of that pixel is 0 wherever the clamp acts
    horizontal = img[:, sx] * a0.view(1, -1, 1) + img[:, sx1] * a1.view(1, -1, 1)  # src_h x width x C
    sy, b0, b1 = (torch.from_numpy(v) for v in _linear_coefficients(src_h, height, clamp=False))
    rows0 = horizontal[sy.clamp(0, src_h - 1)].reshape(height, -1)
    rows1 = horizontal[(sy + 1).clamp(0, src_h - 1)].reshape(height, -1)
    b0, b1 = b0.view(-1, 1), b1.view(-1, 1)
    out = ((((rows0 >> 4) * b0 >> 16) + ((rows1 >> 4) * b1 >> 16) + 2) >> 2).clamp(0, 255)
    return out.reshape(height, width, channels).to(torch.uint8).numpy()


@dataclass(frozen=True)
class Preprocessed:
    image: Tensor  # 3 x H_pad x W_pad float32, normalised RGB
    ori_shape: tuple[int, int]
    img_shape: tuple[int, int]
    pad_shape: tuple[int, int]
    scale_factor: tuple[float, float, float, float]


def normalize_rgb(rgb: np.ndarray) -> Tensor:
    """RGB uint8 H x W x 3 -> float32 3 x H x W, bit for bit as mmcv.imnormalize computes it.

    mmdet's and mmseg's ``Normalize`` keep mean and std as float32 arrays; mmcv subtracts the mean
    in float32 (``cv2.subtract``), then multiplies by ``1 / float64(std)``, a float64 scalar that cv2
    applies in double before rounding to float32. The oracle harness (results/oracle.md) found
    float32 multiplication by a float32 1/std one ulp away on about half the values.
    """
    image = torch.from_numpy(np.ascontiguousarray(rgb)).to(torch.float32)
    centred = image - torch.tensor(MEAN_RGB, dtype=torch.float32)
    stdinv = 1.0 / torch.tensor(STD_RGB, dtype=torch.float32).to(torch.float64)
    return (centred.to(torch.float64) * stdinv).to(torch.float32).permute(2, 0, 1).contiguous()


def normalize(bgr: np.ndarray) -> Tensor:
    """BGR uint8 H x W x 3 -> normalised RGB float32 3 x H x W (mmdet's to_rgb=True Normalize)."""
    return normalize_rgb(bgr[..., ::-1])


def pad_to_divisor(image: Tensor, size_divisor: int) -> Tensor:
    h, w = image.shape[-2:]
    ph = -(-h // size_divisor) * size_divisor
    pw = -(-w // size_divisor) * size_divisor
    if (ph, pw) == (h, w):
        return image
    out = image.new_zeros(*image.shape[:-2], ph, pw)
    out[..., :h, :w] = image
    return out


def preprocess(bgr: np.ndarray, scale: tuple[int, int] = DEFAULT_SCALE, size_divisor: int = 64) -> Preprocessed:
    """Run the mmdet test pipeline on a BGR uint8 image."""
    h, w = bgr.shape[:2]
    new_w, new_h, _ = rescale_size(w, h, scale)
    resized = resize_linear_uint8(bgr, new_w, new_h)
    tensor = pad_to_divisor(normalize(resized), size_divisor)
    # mmdet: scale_factor = float32 [new_w / w, new_h / h] * 2
    sw, sh = float(np.float32(new_w / w)), float(np.float32(new_h / h))
    return Preprocessed(tensor, (h, w), (new_h, new_w), tuple(tensor.shape[-2:]), (sw, sh, sw, sh))


def collate(images: list[Tensor]) -> Tensor:
    """Stack padded images into one batch, padding to the largest (mmcv collate)."""
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    batch = images[0].new_zeros(len(images), 3, h, w)
    for k, img in enumerate(images):
        batch[k, :, : img.shape[-2], : img.shape[-1]] = img
    return batch
