"""FLOP accounting of ``lda_aqu::module_forward``: the sum of the parts of the composition it fuses.

A fused backend must not change a FLOP count, so the fused op is counted as the layers it
replaces (:mod:`.reference`): LayerNorm, the two projections, the bilinear upsampling, the offset
network and the sampling attention.

* :func:`module_macs` under lda-bench's policy (LayerNorm 5 per element with affine, bilinear
  interpolation 4 per output element, and with ``elementwise`` the GELU, tanh, scaling and base
  addition 1 per element): what fvcore and lda-bench's dispatch counter count for the composition.
* :func:`module_conv_macs`: only the convolutions and the attention, what ``torch.utils.flop_counter``
  counts by itself (its registry has no LayerNorm, interpolation or elementwise formulas); this is
  the formula registered for the op, so a plain ``FlopCounterMode`` gives the same total for the
  fused op as for the composition.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

from ..sample_attention.flops import sample_attention_macs
from . import op  # noqa: F401 - the operator must exist before its formula is registered

OP_NAME = "lda_aqu::module_forward"


def module_conv_macs(x_shape: Sequence[int], q_weight_shape: Sequence[int], offset_weight_shape: Sequence[int],
                     groups: int, scale: int) -> int:
    """Projections, depthwise 3x3, offset convolution and the sampling attention."""
    b, c, h, w = (int(s) for s in x_shape)
    ch = int(q_weight_shape[0])
    out_channels, gc, ke = int(offset_weight_shape[0]), int(offset_weight_shape[1]), int(offset_weight_shape[-1])
    ho, wo = h * scale, w * scale
    projections = 2 * b * ch * c * h * w
    depthwise = b * ch * 9 * ho * wo
    offset_conv = b * groups * out_channels * gc * ke * ke * ho * wo
    attention = sample_attention_macs((b, ch, ho, wo), (b, c, h, w), (b, groups * out_channels, ho, wo), groups)
    return projections + depthwise + offset_conv + attention


def module_macs(x_shape: Sequence[int], q_weight_shape: Sequence[int], offset_weight_shape: Sequence[int],
                groups: int, scale: int, elementwise: bool = True) -> int:
    """The composition's MACs under lda-bench's counting policy (see the module docstring)."""
    b, c, h, w = (int(s) for s in x_shape)
    ch = int(q_weight_shape[0])
    out_channels = int(offset_weight_shape[0])
    ho, wo = h * scale, w * scale
    norms = 5 * b * c * h * w + 5 * b * ch * ho * wo  # both LayerNorms, with affine
    upsampling = 4 * b * ch * ho * wo
    pointwise = (b * ch * ho * wo + 3 * b * groups * out_channels * ho * wo) if elementwise else 0  # gelu; tanh, *, +
    return module_conv_macs(x_shape, q_weight_shape, offset_weight_shape, groups, scale) + norms + upsampling + pointwise


_ARGS = ("x", "ln_weight", "ln_bias", "q_weight", "k_weight", "dw_weight", "offset_ln_weight", "offset_ln_bias",
         "offset_weight", "offset_bias", "embedding", "range_factor", "groups", "num_heads", "scale")


def _arguments(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: (args[i] if i < len(args) else kwargs[name]) for i, name in enumerate(_ARGS)}


def _flops(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    a = _arguments(args, kwargs)
    return 2 * module_conv_macs(a["x"], a["q_weight"], a["offset_weight"], a["groups"], a["scale"])


if torch.ops.lda_aqu.module_forward not in flop_registry:  # a re-import must not register twice
    register_flop_formula(torch.ops.lda_aqu.module_forward)(_flops)


def dispatch_formula(elementwise: bool) -> Any:
    """The op's formula (in FLOPs) under lda-bench's policy, for ``FlopCounterMode(custom_mapping=...)``."""
    def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        a = _arguments(args, kwargs)
        return 2 * module_macs(a["x"], a["q_weight"], a["offset_weight"], a["groups"], a["scale"], elementwise)

    return formula


def fvcore_handle(elementwise: bool) -> Any:
    """fvcore op handle (MACs) of a traced ``lda_aqu::module_forward`` node under the policy."""
    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        shapes = [inputs[i].type().sizes() for i in (0, 3, 8)]
        groups, scale = inputs[12].toIValue(), inputs[14].toIValue()
        if any(s is None for s in shapes) or groups is None or scale is None:
            raise ValueError(f"{OP_NAME}: the traced graph lacks static shapes or its constants")
        return module_macs(*shapes, int(groups), int(scale), elementwise)

    return handle
