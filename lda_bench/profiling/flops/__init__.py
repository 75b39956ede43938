"""Counting multiply-accumulates (MACs) of a module, with every upsampler op accounted for.

Two counters that share one policy:

* ``fvcore`` (default, :mod:`.fvcore_counter`): fvcore's JIT-trace ``FlopCountAnalysis`` with our op
  handles installed;
* ``dispatch`` (:mod:`.dispatch_counter`): ``torch.utils.flop_counter.FlopCounterMode`` with the same
  formulas registered for the dispatcher's op names (it sees inside autograd Functions and needs
  no tracing).

The policy (:mod:`.policy`, recorded in every report as ``MACS_POLICY``):

* convolutions (transposed ones on the *input* spatial size), linear layers, matmul/bmm/einsum:
  true multiply-accumulates;
* interpolation: the taps with non-trivial weights per output element: bilinear 4, bicubic 16,
  nearest 0 (a copy); ``grid_sample`` reads its mode argument;
* normalisation: fvcore's convention (LayerNorm/GroupNorm 5 per element with affine, 4 without;
  eval BatchNorm 1 per element, 2 with affine);
* elementwise arithmetic, activations, softmax and reductions: 1 per output element (1 per input
  element for reductions) when ``elementwise="count"`` (default), 0 with ``elementwise="ignore"``
  (the convention of most papers, which count only convolutions and matmuls); tensors with fewer
  than 2 dimensions are index arithmetic and count 0;
* data movement (reshape, permute, pad, unfold/im2col, pixel_shuffle, cat, slicing, ...): 0;
* attention (``scaled_dot_product_attention``): q.k^T and weights.v multiply-accumulates;
* custom ops carry their own handle (``upsamplers.ops.fvcore_handles``; LDA-AQU's fused op: see
  ``upsamplers.ops.sample_attention.flops``); ``torchvision::roi_align`` counts one bilinear sample
  (4 MACs) per output element, the minimum of its data-dependent adaptive sampling.

FLOPs are reported as 2 x MACs. Ops no handle covers are listed as ``uncounted_ops``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from torch import nn

from .dispatch_counter import count_macs_dispatch
from .fvcore_counter import count_macs_fvcore, fvcore_handles
from .policy import ELEMENTWISE_POLICIES, MACS_POLICY, MacCount, einsum_macs, sdpa_macs

COUNTERS: dict[str, Callable[..., MacCount]] = {"fvcore": count_macs_fvcore, "dispatch": count_macs_dispatch}


def count_macs(module: nn.Module, inputs: Iterable[Any], counter: str = "fvcore",
               elementwise: str = "count") -> MacCount:
    if counter not in COUNTERS:
        raise ValueError(f"unknown FLOP counter {counter!r}; valid: {', '.join(COUNTERS)}")
    return COUNTERS[counter](module, inputs, elementwise)


__all__ = ["COUNTERS", "ELEMENTWISE_POLICIES", "MACS_POLICY", "MacCount", "count_macs", "count_macs_dispatch",
           "count_macs_fvcore", "einsum_macs", "fvcore_handles", "sdpa_macs"]
