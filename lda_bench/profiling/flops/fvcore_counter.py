"""The ``fvcore`` counter: fvcore's JIT-trace ``FlopCountAnalysis`` with op handles implementing
the policy (:mod:`.policy`) installed on top of fvcore's defaults."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

from torch import nn

from upsamplers import ops

from .policy import (
    DATA_MOVEMENT_OPS,
    ELEMENTWISE_OPS,
    ELEMENTWISE_POLICIES,
    GRID_SAMPLE_TAPS,
    INTERPOLATION_TAPS,
    REDUCTION_OPS,
    SOFTMAX_OPS,
    MacCount,
    as_tuple,
    einsum_macs,
    feature_numel,
    numel,
    sdpa_macs,
)


def _jit_shape(value: Any) -> list[int] | None:
    """Shape of a JIT value, or None when it is not a tensor with known sizes."""
    try:
        typ = value.type()
    except AttributeError:
        return None
    if typ.kind() != "TensorType":
        return None
    sizes = typ.sizes()
    return list(sizes) if sizes is not None else None


def _jit_const(value: Any) -> Any:
    try:
        return value.toIValue()
    except Exception:  # not a constant
        return None


def _fv_out_elementwise(inputs: list, outputs: list) -> int:
    return feature_numel(_jit_shape(outputs[0])) if outputs else 0


def _fv_in_elementwise(inputs: list, outputs: list) -> int:
    return feature_numel(_jit_shape(inputs[0])) if inputs else 0


def _fv_zero(inputs: list, outputs: list) -> int:
    return 0


def _fv_interpolation(taps: int) -> Callable[[list, list], int]:
    def handle(inputs: list, outputs: list) -> int:
        return taps * numel(_jit_shape(outputs[0]))

    return handle


def _fv_grid_sampler(inputs: list, outputs: list) -> int:
    mode = _jit_const(inputs[2]) if len(inputs) > 2 else 0
    return GRID_SAMPLE_TAPS.get(int(mode) if mode is not None else 0, 4) * numel(_jit_shape(outputs[0]))


def _fv_einsum(inputs: list, outputs: list) -> int:
    equation = _jit_const(inputs[0])
    operands = inputs[1].node().inputs() if inputs[1].node().kind() == "prim::ListConstruct" else []
    shapes = [_jit_shape(v) or [] for v in operands]
    if not isinstance(equation, str) or not shapes:
        return 0
    return einsum_macs(equation, shapes)


def fvcore_handles(elementwise: str = "count") -> dict[str, Callable[[list, list], Any]]:
    """Op handles (JIT node kind -> handle) that implement the policy on top of fvcore's defaults."""
    if elementwise not in ELEMENTWISE_POLICIES:
        raise ValueError(f"elementwise policy must be one of {ELEMENTWISE_POLICIES}, got {elementwise!r}")
    counted = elementwise == "count"
    handles: dict[str, Callable[[list, list], Any]] = {}
    for name in ELEMENTWISE_OPS + SOFTMAX_OPS:
        handles[f"aten::{name}"] = _fv_out_elementwise if counted else _fv_zero
    for name in REDUCTION_OPS:
        handles[f"aten::{name}"] = _fv_in_elementwise if counted else _fv_zero
    for name in DATA_MOVEMENT_OPS:
        handles.setdefault(f"aten::{name}", _fv_zero)
    for name, taps in INTERPOLATION_TAPS.items():
        handles[f"aten::{name}"] = _fv_interpolation(taps)
    handles["aten::grid_sampler"] = _fv_grid_sampler
    handles["aten::einsum"] = _fv_einsum
    handles["aten::avg_pool2d"] = _fv_avg_pool2d
    handles["aten::cosine_similarity"] = _fv_cosine_similarity if counted else _fv_zero
    handles["torchvision::roi_align"] = _fv_interpolation(4)
    handles["aten::scaled_dot_product_attention"] = _fv_sdpa_handle(counted)
    handles.update(ops.fvcore_handles(counted))  # the upsamplers' own custom ops carry their handles
    return handles


def _fv_sdpa_handle(counted: bool) -> Callable[[list, list], int]:
    def handle(inputs: list, outputs: list) -> int:
        shapes = [_jit_shape(v) for v in inputs[:3]]
        if any(s is None for s in shapes):
            return 0
        return sdpa_macs(*shapes, softmax=counted)  # type: ignore[arg-type]

    return handle


def _fv_cosine_similarity(inputs: list, outputs: list) -> int:
    """What its decomposition costs under the elementwise policy (and what the dispatch counter
    sees): two norms, two divisions, a product and a sum over the inputs (6 per input element),
    two clamps of the norms (2 per output element)."""
    return 6 * feature_numel(_jit_shape(inputs[0])) + 2 * feature_numel(_jit_shape(outputs[0]))


def _fv_avg_pool2d(inputs: list, outputs: list) -> int:
    kernel = _jit_const(inputs[1]) or [1, 1]
    return int(math.prod(kernel)) * numel(_jit_shape(outputs[0]))


def count_macs_fvcore(module: nn.Module, inputs: Iterable[Any], elementwise: str = "count") -> MacCount:
    """MACs from fvcore's JIT trace with our handles."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import and the tracer are noisy
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(module, as_tuple(inputs))
        analysis.set_op_handle(**fvcore_handles(elementwise))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
        by_op = {k: int(v) for k, v in analysis.by_operator().items() if v}
        unsupported = dict(analysis.unsupported_ops())
    return MacCount(total, by_op, unsupported, "fvcore", elementwise)
