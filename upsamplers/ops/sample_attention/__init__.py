"""LDA-AQU's sampling attention: the op ``lda_aqu::sample_attention`` and everything behind it.

Deformable bilinear sampling of keys and values at k_u^2 points per offset group, a softmax over
the points and the weighted sum of the values (LDA-AQU, ACM MM 2024, Sec. 3.2), as one PyTorch
operator with autograd, fake tensors, ``torch.compile`` support and FLOP formulas, computed by
interchangeable backends:

* :mod:`.op`: the operator's registration (forward, backward, fake tensors, autograd);
* :mod:`.backends`: which backends exist, which work here, what ``auto`` means;
* :mod:`.reference`: plain PyTorch (``grid_sample``), the oracle;
* :mod:`.cpp` (with ``csrc/``): C++ CPU kernels built on first use;
* :mod:`.triton_kernels`: Triton kernels for CUDA;
* :mod:`.flops`: the FLOP formula shared by every backend;
* :mod:`.layouts`: the memory layouts the op returns and reads.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import flops, op  # noqa: F401 - registers the operators and their FLOP formulas
from .backends import (
    BACKENDS,
    BACKWARDS,
    ENV_BACKEND,
    available_backends,
    backend_names,
    check_backend_name,
    resolve_backend,
)
from .reference import sample_attention_reference


def _check_arguments(query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None,
                     groups: int, num_heads: int) -> None:
    tensors = {"query": query, "key": key, "value": value, "offsets": offsets}
    if embedding is not None:
        tensors["embedding"] = embedding
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"sample_attention: {name} must be a tensor, got {type(t).__name__}")
        if t.dtype != query.dtype or t.device != query.device:
            raise ValueError(f"sample_attention: {name} is {t.dtype} on {t.device}, the query {query.dtype} on "
                             f"{query.device}; all inputs must share dtype and device")
    for name in ("query", "key", "value", "offsets"):
        if tensors[name].dim() != 4:
            raise ValueError(f"sample_attention: {name} must be 4-D, got shape {tuple(tensors[name].shape)}")
    for label, v in (("groups", groups), ("num_heads", num_heads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"sample_attention: {label} must be a positive integer, got {v!r}")
    b, ch, ho, wo = query.shape
    _, c, h, w = value.shape
    if tuple(key.shape) != (b, ch, h, w):
        raise ValueError(f"sample_attention: key must be {b} x {ch} x {h} x {w} (query batch and channels, "
                         f"value size), got {tuple(key.shape)}")
    if value.shape[0] != b:
        raise ValueError(f"sample_attention: value batch {value.shape[0]} differs from the query batch {b}")
    if ho < 2 or wo < 2:
        raise ValueError(f"sample_attention: the output map must be at least 2 x 2 (align_corners geometry), got "
                         f"{ho} x {wo}")
    if ch % groups or c % groups or ch % num_heads or c % num_heads:
        raise ValueError(f"sample_attention: groups ({groups}) and num_heads ({num_heads}) must divide the query "
                         f"channels ({ch}) and the value channels ({c})")
    if offsets.shape[0] != b or offsets.shape[2:] != (ho, wo) or offsets.shape[1] % (2 * groups) or not offsets.shape[1]:
        raise ValueError(f"sample_attention: offsets must be {b} x G*2*P x {ho} x {wo} with G = {groups}, got "
                         f"{tuple(offsets.shape)}")
    points = offsets.shape[1] // (2 * groups)
    if embedding is not None and tuple(embedding.shape) != (num_heads, points, ch // num_heads):
        raise ValueError(f"sample_attention: embedding must be {num_heads} x {points} x {ch // num_heads}, got "
                         f"{tuple(embedding.shape)}")


def sample_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    offsets: Tensor,
    embedding: Tensor | None,
    groups: int,
    num_heads: int,
    backend: str = "auto",
) -> Tensor:
    """Deformable local attention of LDA-AQU.

    Args:
        query: B x Ch x Ho x Wo, the upsampled query.
        key: B x Ch x H x W low-resolution keys; value: B x C x H x W low-resolution values.
        offsets: B x G*2*P x Ho x Wo sampling offsets in output pixels, base grid included, channel
            order (group, point, [dy, dx]).
        embedding: heads x P x Ch/heads per-point key embedding, or None.
        groups: offset groups G (channels of key and value are split into G contiguous blocks).
        num_heads: attention heads (one softmax over the P points per head, shared by the groups).
        backend: ``auto``, ``reference``, ``cpp`` or ``triton`` (see :mod:`.backends`).

    Returns:
        B x C x Ho x Wo in ``torch.channels_last`` memory format (as the official code's output).
    """
    check_backend_name(backend)
    _check_arguments(query, key, value, offsets, embedding, groups, num_heads)
    return torch.ops.lda_aqu.sample_attention(query, key, value, offsets, embedding, groups, num_heads, backend)


__all__ = [
    "BACKENDS",
    "BACKWARDS",
    "ENV_BACKEND",
    "available_backends",
    "backend_names",
    "check_backend_name",
    "resolve_backend",
    "sample_attention",
    "sample_attention_reference",
]
