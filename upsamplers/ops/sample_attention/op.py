"""The PyTorch operators ``lda_aqu::sample_attention`` and ``lda_aqu::sample_attention_backward``.

Every backend runs inside the same custom op, so FLOP counters, ``torch.compile`` (the op is
opaque to inductor, on CPU as on CUDA) and autograd see one operator whatever computes it. The
backend name travels as an argument and is resolved when the op runs, so ``auto`` costs nothing
at trace time. ``torch.library.triton_op`` is deliberately not used: inductor would trace into the
Triton body, which fails for CPU tensors (docs/triton-kernels.md).

The output is B x C x Ho x Wo in ``torch.channels_last`` memory format, whatever the backend:
the layout of the official code's output (its final rearrange is a channels-last view), and the
one a kernel writes without a transpose, since all channels of a pixel are produced together.

Annotations here are real types, not strings: ``custom_op`` infers the schema from them.
"""

from typing import Optional

import torch
from torch import Tensor

from . import backends
from .layouts import as_channels_last


@torch.library.custom_op("lda_aqu::sample_attention", mutates_args=())
def sample_attention_op(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    offsets: Tensor,
    embedding: Optional[Tensor],
    groups: int,
    num_heads: int,
    backend: str,
) -> Tensor:
    name = backends.resolve_backend(backend, query.device.type)
    # Nothing is recorded below the op anyway; no_grad also lets the reference tile its rows.
    with torch.no_grad():
        out = backends.BACKENDS[name](query, key, value, offsets, embedding, groups, num_heads)
    return as_channels_last(out)


@sample_attention_op.register_fake
def _sample_attention_fake(query, key, value, offsets, embedding, groups, num_heads, backend):
    b, _, ho, wo = query.shape
    return torch.empty((b, value.shape[1], ho, wo), dtype=query.dtype, device=query.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("lda_aqu::sample_attention_backward", mutates_args=())
def sample_attention_backward_op(
    grad: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    offsets: Tensor,
    embedding: Optional[Tensor],
    groups: int,
    num_heads: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients for query, key, value, offsets and embedding (an empty tensor without one)."""
    name = backends.resolve_backend(backend, query.device.type)
    dq, dk, dv, doff, demb = backends.BACKWARDS[name](grad, query, key, value, offsets, embedding, groups, num_heads)
    if demb is None:
        demb = query.new_empty((0,))
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), doff.contiguous(), demb.contiguous()


@sample_attention_backward_op.register_fake
def _sample_attention_backward_fake(grad, query, key, value, offsets, embedding, groups, num_heads, backend):
    demb = query.new_empty((0,)) if embedding is None else embedding.new_empty(embedding.shape)
    return (query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape),
            offsets.new_empty(offsets.shape), demb)


def _setup_context(ctx, inputs, output) -> None:
    query, key, value, offsets, embedding, groups, num_heads, backend = inputs
    ctx.save_for_backward(query, key, value, offsets, embedding)
    ctx.config = (groups, num_heads, backend)


def _backward(ctx, grad: Tensor):
    query, key, value, offsets, embedding = ctx.saved_tensors
    groups, num_heads, backend = ctx.config
    dq, dk, dv, doff, demb = sample_attention_backward_op(
        grad, query, key, value, offsets, embedding, groups, num_heads, backend
    )
    return dq, dk, dv, doff, (demb if embedding is not None else None), None, None, None


sample_attention_op.register_autograd(_backward, setup_context=_setup_context)
