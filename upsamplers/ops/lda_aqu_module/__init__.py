"""The whole LDA-AQU module as one operator, ``lda_aqu::module_forward``, fused on CPU and CUDA.

A user calls the module, not its sampling attention: the layers around the attention (LayerNorm,
the two projections, the query's bilinear upsampling, the offset network) cost as much as the
attention itself when run as separate PyTorch layers. The ``cpp`` backend computes them with two
kernels (:mod:`.cpp`), the ``triton`` backend for CUDA tensors with Triton kernels around cuBLAS
(:mod:`.triton_kernels`), and ``reference`` is the plain PyTorch composition (:mod:`.reference`),
the oracle. The backward (:mod:`.backward`) recomputes the forward's intermediates and applies
closed-form gradients.

* :mod:`.op`: the operators' registration (fake tensors, autograd);
* :mod:`.flops`: the FLOP formula, the sum of the composition's parts.
"""

from __future__ import annotations

from torch import Tensor

from . import flops, op  # noqa: F401 - registers the operators and their FLOP formulas
from .reference import Config, Weights, module_reference


def module_forward(x: Tensor, weights: Weights, config: Config, backend: str = "auto") -> Tensor:
    """The LDA-AQU module's output for ``x`` (B x C x H x W), B x C x sH x sW channels-last."""
    import torch

    from ..sample_attention import check_backend_name

    check_backend_name(backend)
    w = weights
    return torch.ops.lda_aqu.module_forward(
        x, w.ln_weight, w.ln_bias, w.q_weight, w.k_weight, w.dw_weight, w.offset_ln_weight, w.offset_ln_bias,
        w.offset_weight, w.offset_bias, w.embedding, float(config.range_factor), config.groups, config.num_heads,
        config.scale, float(config.eps), backend)


__all__ = ["Config", "Weights", "module_forward", "module_reference"]
