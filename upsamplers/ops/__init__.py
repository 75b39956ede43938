"""Operators behind the upsamplers.

``sample_attention`` is LDA-AQU's heavy middle (deformable bilinear sampling of keys and values,
softmax over the sampled points, weighted sum). It dispatches to one of several backends that
compute the same function; ``reference`` is the plain-PyTorch oracle.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from .reassemble import carafe_reassemble
from .reference import sample_attention_reference

BACKENDS: dict[str, Callable[..., Tensor]] = {"reference": sample_attention_reference}


def backend_names() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


def available_backends(device_type: str = "cpu") -> tuple[str, ...]:
    """Backends that can run on ``device_type`` tensors in this process right now."""
    return tuple(BACKENDS)


def resolve_backend(backend: str, device_type: str = "cpu") -> str:
    """Map ``auto`` (or an explicit name) to a concrete backend for tensors on ``device_type``."""
    if backend == "auto":
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown LDA-AQU backend {backend!r}; valid: {', '.join(backend_names())}")
    return backend


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

    Returns:
        B x C x Ho x Wo.
    """
    name = resolve_backend(backend, query.device.type)
    return BACKENDS[name](query, key, value, offsets, embedding, groups, num_heads)


__all__ = ["BACKENDS", "available_backends", "backend_names", "carafe_reassemble", "resolve_backend", "sample_attention"]
