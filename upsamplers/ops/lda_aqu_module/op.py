"""The PyTorch operators ``lda_aqu::module_forward`` and ``lda_aqu::module_backward``.

The whole LDA-AQU module as one operator (with a fake implementation, so ``torch.compile`` and
FLOP counters see one opaque op): the ``cpp`` and ``triton`` backends fuse the module's layers
around the sampling attention; ``reference`` runs the plain PyTorch composition. The backward is an
operator too; it recomputes the forward's intermediates and applies the closed-form gradients of
:mod:`.backward`, with the sampling attention's backward of the same backend.

Annotations here are real types, not strings: ``custom_op`` infers the schema from them.
"""

from typing import Optional

import torch
from torch import Tensor

from ..sample_attention import backends as attention_backends
from ..sample_attention.layouts import as_channels_last
from . import cpp
from .backward import ATEN_KERNELS, module_backward
from .reference import Config, Weights, module_reference

WEIGHT_NAMES = ("ln_weight", "ln_bias", "q_weight", "k_weight", "dw_weight", "offset_ln_weight", "offset_ln_bias",
                "offset_weight", "offset_bias")


def _triton_forward(x: Tensor, w: Weights, cfg: Config) -> Tensor:
    from . import triton_kernels  # imported on first use: it decides interpreted vs compiled then

    return triton_kernels.forward(x, w, cfg)


FORWARDS = {"reference": module_reference, "cpp": cpp.forward, "triton": _triton_forward}
# The layout changes and upsampling gradient of each backend's backward (ATen's where it has nothing faster).
BACKWARD_KERNELS = {"cpp": cpp.BACKWARD_KERNELS}


def _pack(tensors: tuple, embedding: Optional[Tensor], range_factor: float, groups: int, num_heads: int, scale: int,
          eps: float) -> tuple[Weights, Config]:
    return Weights(*tensors, embedding), Config(range_factor, groups, num_heads, scale, eps)


@torch.library.custom_op("lda_aqu::module_forward", mutates_args=())
def module_forward_op(
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    dw_weight: Tensor,
    offset_ln_weight: Tensor,
    offset_ln_bias: Tensor,
    offset_weight: Tensor,
    offset_bias: Tensor,
    embedding: Optional[Tensor],
    range_factor: float,
    groups: int,
    num_heads: int,
    scale: int,
    eps: float,
    backend: str,
) -> Tensor:
    name = attention_backends.resolve_backend(backend, x.device.type)
    w, cfg = _pack((ln_weight, ln_bias, q_weight, k_weight, dw_weight, offset_ln_weight, offset_ln_bias,
                    offset_weight, offset_bias), embedding, range_factor, groups, num_heads, scale, eps)
    with torch.no_grad():
        out = FORWARDS[name](x, w, cfg)
    return as_channels_last(out)


@module_forward_op.register_fake
def _module_forward_fake(x, ln_weight, ln_bias, q_weight, k_weight, dw_weight, offset_ln_weight, offset_ln_bias,
                         offset_weight, offset_bias, embedding, range_factor, groups, num_heads, scale, eps, backend):
    b, c, h, w = x.shape
    return torch.empty((b, c, h * scale, w * scale), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("lda_aqu::module_backward", mutates_args=())
def module_backward_op(
    grad: Tensor,
    x: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    dw_weight: Tensor,
    offset_ln_weight: Tensor,
    offset_ln_bias: Tensor,
    offset_weight: Tensor,
    offset_bias: Tensor,
    embedding: Optional[Tensor],
    range_factor: float,
    groups: int,
    num_heads: int,
    scale: int,
    eps: float,
    backend: str,
) -> list[Tensor]:
    """Gradients for x, the nine weights and the embedding (an empty tensor without one)."""
    name = attention_backends.resolve_backend(backend, x.device.type)
    w, cfg = _pack((ln_weight, ln_bias, q_weight, k_weight, dw_weight, offset_ln_weight, offset_ln_bias,
                    offset_weight, offset_bias), embedding, range_factor, groups, num_heads, scale, eps)
    with torch.no_grad():
        grads = module_backward(grad, x, w, cfg, attention_backends.BACKWARDS[name],
                                BACKWARD_KERNELS.get(name, ATEN_KERNELS))
    out = [g.contiguous() for g in grads[:-1]]
    out.append(grads[-1].contiguous() if grads[-1] is not None else x.new_empty((0,)))
    return out


@module_backward_op.register_fake
def _module_backward_fake(grad, x, ln_weight, ln_bias, q_weight, k_weight, dw_weight, offset_ln_weight,
                          offset_ln_bias, offset_weight, offset_bias, embedding, range_factor, groups, num_heads,
                          scale, eps, backend):
    tensors = (x, ln_weight, ln_bias, q_weight, k_weight, dw_weight, offset_ln_weight, offset_ln_bias, offset_weight,
               offset_bias)
    out = [t.new_empty(t.shape) for t in tensors]
    out.append(x.new_empty((0,)) if embedding is None else embedding.new_empty(embedding.shape))
    return out


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:11])
    ctx.config = inputs[11:]


def _backward(ctx, grad: Tensor):
    saved = ctx.saved_tensors
    grads = module_backward_op(grad, *saved, *ctx.config)
    embedding = saved[10]
    return (*grads[:10], grads[10] if embedding is not None else None, None, None, None, None, None, None)


module_forward_op.register_autograd(_backward, setup_context=_setup_context)
