"""FLOP accounting of ``lda_aqu::sample_attention``, identical for every backend.

The count depends on shapes only, never on the backend, so a profile of LDA-AQU gives the same
FLOPs whether the reference (grid_sample + elementwise ops), the C++ or the Triton kernels ran.

This module imports torch only. ``lda_bench`` installs :data:`FVCORE_HANDLES` into fvcore's
``FlopCountAnalysis`` with ``set_op_handle``; ``torch.utils.flop_counter`` picks up the formulas
registered here when ``upsamplers.ops`` is imported.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from . import op  # noqa: F401 - the operators must exist before formulas are registered

OP_NAME = "lda_aqu::sample_attention"
BACKWARD_OP_NAME = "lda_aqu::sample_attention_backward"


def sample_attention_macs(query_shape: Sequence[int], value_shape: Sequence[int], offsets_shape: Sequence[int],
                          groups: int) -> int:
    """Multiply-accumulates of one ``sample_attention`` call: ``B*Ho*Wo*P*(Ch + C)*5``.

    Per output pixel and point: Ch MACs for q.k and C for the softmax-weighted sum of the values
    (the attention proper, P*(Ch+C)), plus 4 MACs per bilinearly sampled key or value channel
    (fvcore's grid_sampler convention, 4*P*(Ch+C)). Elementwise work is not counted: the
    embedding add, the softmax, and the sampling-position arithmetic. At C=256, r=4, P=9 the
    attention part is 9*(64+256) = 2,880 MACs per output pixel (docs/cost-of-lda-aqu-and-carafe.md).
    """
    b, ch, ho, wo = (int(s) for s in query_shape)
    c = int(value_shape[1])
    points = int(offsets_shape[1]) // (2 * int(groups))
    return b * ho * wo * points * (ch + c) * 5


def _arguments(args: tuple, kwargs: dict[str, Any], names: Sequence[str]) -> list[Any]:
    # The op may be called positionally or by keyword; read by position, then by name.
    return [args[i] if i < len(args) else kwargs[name] for i, name in enumerate(names)]


def _forward_flops(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    query, _, value, offsets, _, groups = _arguments(
        args, kwargs, ("query", "key", "value", "offsets", "embedding", "groups"))
    return 2 * sample_attention_macs(query, value, offsets, groups)


def _backward_flops(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    # Convention of torch.utils.flop_counter for linear maps: the backward costs twice the
    # forward (the gradients with respect to both operands of every product).
    _, query, _, value, offsets, _, groups = _arguments(
        args, kwargs, ("grad", "query", "key", "value", "offsets", "embedding", "groups"))
    return 4 * sample_attention_macs(query, value, offsets, groups)


# A re-import (importlib.reload in tests) must not register twice: flop_counter raises on that.
if torch.ops.lda_aqu.sample_attention not in flop_registry:
    register_flop_formula(torch.ops.lda_aqu.sample_attention)(_forward_flops)
if torch.ops.lda_aqu.sample_attention_backward not in flop_registry:
    register_flop_formula(torch.ops.lda_aqu.sample_attention_backward)(_backward_flops)


def sample_attention_fvcore_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore op handle: MACs of one traced ``lda_aqu::sample_attention`` node.

    ``inputs`` are ``torch._C.Value`` objects of the traced graph, in schema order (query, key,
    value, offsets, embedding, groups, num_heads, backend); fvcore counts one "flop" per MAC.
    """
    query = inputs[0].type().sizes()
    value = inputs[2].type().sizes()
    offsets = inputs[3].type().sizes()
    groups = inputs[5].toIValue()
    if query is None or value is None or offsets is None or groups is None:
        raise ValueError(f"{OP_NAME}: the traced graph lacks static shapes or the group count")
    return sample_attention_macs(query, value, offsets, int(groups))


FVCORE_HANDLES = {OP_NAME: sample_attention_fvcore_handle}
