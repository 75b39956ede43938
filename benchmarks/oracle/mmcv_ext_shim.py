"""Stand-ins for the compiled ``mmcv._ext`` kernels that the oracle's upstream models call.

mmcv 1.7 built with ``MMCV_WITH_OPS=0`` has no ``mmcv._ext``, yet every module of ``mmcv.ops``
loads it on import (``mmcv/utils/ext_loader.py``, ``load_ext``, which only checks that each named
function exists), and mmdet 2.28 imports ``mmcv.ops`` everywhere. :func:`install` puts this
module in ``sys.modules`` as ``mmcv._ext``: the three kernels that test-time detection needs are
implemented below, each with the calling convention of the mmcv Python wrapper that calls it;
every other kernel exists (so imports succeed) but raises ``NotImplementedError`` when called,
so nothing can silently use a stand-in that was not written.

Each kernel follows the semantics that mmcv documents in its source:

* ``nms`` -- ``mmcv/ops/csrc/pytorch/cpu/nms.cpp`` (``nms_cpu``): boxes sorted by descending score,
  a box is suppressed when its IoU with a kept box is ``> iou_threshold``; with ``offset=0`` (what
  ``mmcv.ops.nms`` passes unless told otherwise) this is ``torchvision.ops.nms``, whose CPU kernel
  is the same algorithm.
* ``roi_align_forward`` -- ``mmcv/ops/roi_align.py`` (``RoIAlignFunction``) with ``pool_mode``
  "avg": ``torchvision.ops.roi_align`` computes the same average of bilinear samples with the same
  ``aligned`` and ``sampling_ratio`` conventions (mmcv's kernel was ported from it). "max" pooling is
  not provided.
* ``carafe_forward`` -- ``mmcv/ops/csrc/common/cuda/carafe_naive_cuda_kernel.cuh``: output pixel
  (y, x) of channel c is the sum over the k x k window around (y // s, x // s) of the input,
  zero outside, weighted by mask channel ``(g * k + i) * k + j`` of that pixel, g = the channel's
  group.

Only forward passes (the oracle runs models in eval mode under ``torch.no_grad``).
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

IMPLEMENTED = ("nms", "roi_align_forward", "carafe_forward")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """Indices of the kept boxes, by descending score (mmcv ``ext_module.nms``)."""
    if offset != 0:
        raise NotImplementedError("the oracle's nms stand-in supports offset=0 only (mmcv's default)")
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    return torchvision.ops.nms(boxes, scores, float(iou_threshold))


def roi_align_forward(
    input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor, argmax_x: Tensor, *,
    aligned_height: int, aligned_width: int, spatial_scale: float, sampling_ratio: int,
    pool_mode: int, aligned: bool,
) -> None:
    """Fill ``output`` (R x C x h x w) in place, as mmcv's kernel does; rois are (batch, x1, y1, x2, y2)."""
    if pool_mode != 1:
        raise NotImplementedError("the oracle's roi_align stand-in supports pool_mode='avg' only")
    pooled = torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                                       sampling_ratio, aligned)
    output.copy_(pooled)


def carafe_reassemble(features: Tensor, masks: Tensor, kernel_size: int, group_size: int,
                      scale_factor: int) -> Tensor:
    """CARAFE's content-aware reassembly (the semantics of mmcv's naive kernel), N x C x sH x sW."""
    n, c, h, w = features.shape
    k, g, s = kernel_size, group_size, scale_factor
    windows = F.unfold(features, k, padding=(k - 1) // 2).view(n, g, c // g, k * k, h, w)
    windows = windows.repeat_interleave(s, dim=4).repeat_interleave(s, dim=5)
    weights = masks.view(n, g, 1, k * k, h * s, w * s)
    return (windows * weights).sum(dim=3).reshape(n, c, h * s, w * s)


def carafe_forward(
    features: Tensor, masks: Tensor, rfeatures: Tensor, routput: Tensor, rmasks: Tensor, output: Tensor, *,
    kernel_size: int, group_size: int, scale_factor: int,
) -> None:
    """Fill ``output`` in place (mmcv ``ext_module.carafe_forward``; the r* buffers are scratch)."""
    output.copy_(carafe_reassemble(features, masks, kernel_size, group_size, scale_factor))


def _missing(name: str) -> Callable[..., Any]:
    def kernel(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"mmcv._ext.{name} is a compiled mmcv kernel the oracle has no stand-in for "
            f"(provided: {', '.join(IMPLEMENTED)})"
        )

    kernel.__name__ = name
    return kernel


class _ExtModule(types.ModuleType):
    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("__"):
            raise AttributeError(name)
        return _missing(name)


def install() -> types.ModuleType:
    """Register the stand-in as ``mmcv._ext`` (before anything imports ``mmcv.ops``)."""
    module = _ExtModule("mmcv._ext", __doc__)
    for name in IMPLEMENTED:
        setattr(module, name, globals()[name])
    sys.modules["mmcv._ext"] = module
    return module
