"""The LDA-AQU module's forward with the C++ CPU kernels (built by
:mod:`upsamplers.ops.sample_attention.cpp`): ``lda_aqu_cpp::project`` (LayerNorm and both
projections, LN folded into the weights, one GEMM; the keys and values leave it in the attention's
grouped channels-last layout) and ``lda_aqu_cpp::offset_attention`` (the
query's upsampling, the offset network and the sampling attention, one output row at a time, so
that neither the upsampled query nor the offsets exist at full resolution)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..sample_attention import cpp as attention_cpp
from .backward import BackwardKernels, aten_upsample_backward
from .reference import Config, Weights, base_grid


def upsample_backward(grad: Tensor, size: tuple[int, int]) -> Tensor:
    """The gradient of the query's upsampling through ``lda_aqu_cpp::upsample_backward`` (rows,
    then columns, plane by plane) for dense float32/float64 CPU maps; ATen's for anything else."""
    if grad.device.type != "cpu" or grad.dtype not in (torch.float32, torch.float64) or not grad.is_contiguous():
        return aten_upsample_backward(grad, size)
    return attention_cpp.library_ops().upsample_backward(grad, size[0], size[1])


# The backward's layout changes through the kernels' tile transposes, and their upsampling gradient.
BACKWARD_KERNELS = BackwardKernels(attention_cpp.to_memory_format, attention_cpp.add_across_layouts_,
                                   upsample_backward)


def forward(x: Tensor, w: Weights, cfg: Config) -> Tensor:
    ops = attention_cpp.library_ops()
    dtype = attention_cpp.compute_dtype(x.dtype)
    xc = x.to(dtype).contiguous()
    b, c, h, wd = xc.shape
    ch = w.q_weight.shape[0]
    gamma, beta = w.ln_weight.to(dtype), w.ln_bias.to(dtype)
    wcat = torch.cat((w.q_weight.reshape(ch, c), w.k_weight.reshape(ch, c))).to(dtype)
    folded = wcat * gamma  # W diag(gamma): LayerNorm's scale moved into the projections
    q0, k, v, _, _ = ops.project(xc, folded, folded.sum(1), wcat @ beta.to(dtype), cfg.eps, cfg.groups)
    out = ops.offset_attention(
        q0, k, v, h * cfg.scale, wd * cfg.scale, cfg.groups, cfg.num_heads, w.dw_weight.to(dtype),
        w.offset_ln_weight.to(dtype), w.offset_ln_bias.to(dtype), w.offset_weight.to(dtype), w.offset_bias.to(dtype),
        cfg.range_factor, base_grid(cfg.points(w), dtype, x.device), cfg.eps,
        attention_cpp.embedding_rows(w.embedding, dtype))
    return out.to(x.dtype)
