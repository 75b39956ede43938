"""The ``dispatch`` counter: ``torch.utils.flop_counter.FlopCounterMode`` with the policy's
formulas (:mod:`.policy`) registered for the dispatcher's op names. It sees inside autograd
Functions and needs no tracing."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable, Iterable

import torch
from torch import nn

from upsamplers import ops

from .policy import (
    DATA_MOVEMENT_OPS,
    ELEMENTWISE_OPS,
    GRID_SAMPLE_TAPS,
    INTERPOLATION_TAPS,
    REDUCTION_OPS,
    SOFTMAX_OPS,
    MacCount,
    as_tuple,
    feature_numel,
    numel,
    sdpa_macs,
)


def _dispatch_mapping(elementwise: str) -> dict[Any, Callable[..., int]]:
    """Formulas (in FLOPs = 2 x MACs) for ``FlopCounterMode(custom_mapping=...)``."""
    aten = torch.ops.aten
    counted = elementwise == "count"

    def out_elementwise(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * feature_numel(list(out_shape)) if counted and out_shape is not None else 0

    def in_elementwise(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        shape = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else None
        return 2 * feature_numel(list(shape)) if counted and shape is not None else 0

    def interpolation(taps: int) -> Callable[..., int]:
        def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            return 2 * taps * numel(list(out_shape))

        return formula

    def grid_sampler(input_shape: Any, grid_shape: Any, mode: int = 0, *args: Any, out_shape: Any = None,
                     **kwargs: Any) -> int:
        return 2 * GRID_SAMPLE_TAPS.get(int(mode), 4) * numel(list(out_shape))

    def norm(per_element: int, weight_index: int) -> Callable[..., int]:
        def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            affine = len(args) > weight_index and args[weight_index] is not None
            return 2 * (per_element if affine else per_element - 1) * numel(list(args[0]))

        return formula

    def avg_pool(input_shape: Any, kernel: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * int(math.prod(kernel)) * numel(list(out_shape))

    def adaptive_avg_pool(input_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * numel(list(input_shape))  # fvcore: 1 per input element

    mapping: dict[Any, Callable[..., int]] = {}

    def add(name: str, formula: Callable[..., int]) -> None:
        packet = getattr(aten, name, None)
        if packet is not None:
            mapping[packet] = formula

    for name in ELEMENTWISE_OPS + SOFTMAX_OPS:
        add(name, out_elementwise)
    for name in REDUCTION_OPS:
        add(name, in_elementwise)
    for name, taps in INTERPOLATION_TAPS.items():
        add(name, interpolation(taps))
    add("grid_sampler_2d", grid_sampler)
    def sdpa(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * sdpa_macs(q_shape, k_shape, v_shape, softmax=counted)

    # The fused CPU kernel (and the composite op, for decompositions that keep it) with the same
    # formula as the fvcore side; torch's own registry covers the CUDA kernels.
    def native_mha(query: Any, key: Any, value: Any, embed_dim: int, *args: Any, out_shape: Any = None,
                   **kwargs: Any) -> int:
        # nn.MultiheadAttention's inference fast path (not taken under JIT tracing, where fvcore
        # sees linear + SDPA): packed q/k/v projections, attention, output projection.
        b, length, e = query
        source = key[-2]
        heads = args[0] if args else 1
        softmax = b * heads * length * source if counted else 0
        return 2 * (b * (2 * length * e * e + 2 * source * e * e + 2 * length * source * e) + softmax)

    add("_scaled_dot_product_flash_attention_for_cpu", sdpa)
    add("_native_multi_head_attention", native_mha)
    add("scaled_dot_product_attention", sdpa)
    roi_align = getattr(getattr(torch.ops, "torchvision", None), "roi_align", None)
    if roi_align is not None:
        mapping[roi_align] = interpolation(4)
    add("native_layer_norm", norm(5, 2))
    add("native_group_norm", norm(5, 1))
    # Eval-mode batch norm: fvcore counts 1 per element, 2 with affine.
    add("_native_batch_norm_legit_no_training", norm(2, 1))
    add("avg_pool2d", avg_pool)
    add("_adaptive_avg_pool2d", adaptive_avg_pool)
    add("adaptive_avg_pool2d", adaptive_avg_pool)
    mapping.update(ops.dispatch_formulas(counted))  # upsampler ops whose count follows the policy
    return mapping


def count_macs_dispatch(module: nn.Module, inputs: Iterable[Any], elementwise: str = "count") -> MacCount:
    """MACs from ``torch.utils.flop_counter.FlopCounterMode`` with the same policy.

    FlopCounterMode cannot list the ops it saw without a formula, so ``uncounted_ops`` lists the
    ops of the forward pass (seen through a dispatch mode) that are neither counted nor known to
    be zero-cost.
    """
    from torch.utils.flop_counter import FlopCounterMode

    recorder = _OpRecorder()
    counter = FlopCounterMode(display=False, custom_mapping=_dispatch_mapping(elementwise))
    with torch.no_grad(), counter, recorder:
        module(*as_tuple(inputs))
    counts = counter.get_flop_counts().get("Global", {})
    by_op = {_op_name(op): int(v) // 2 for op, v in counts.items() if v}
    registered = {_op_name(op) for op in counter.flop_registry}
    # native_batch_norm runs inside the counted eval-mode batch norm op.
    known = registered | set(DATA_MOVEMENT_OPS) | set(ELEMENTWISE_OPS) | set(SOFTMAX_OPS) | set(REDUCTION_OPS) | {
        "native_batch_norm"}
    uncounted = {name: n for name, n in recorder.seen.items() if name not in known}
    return MacCount(sum(by_op.values()), by_op, uncounted, "dispatch", elementwise)


# Dispatcher op names -> the JIT names fvcore reports, so both counters' breakdowns line up.
_CANONICAL = {
    "convolution": "conv",
    "native_layer_norm": "layer_norm",
    "native_group_norm": "group_norm",
    "_native_batch_norm_legit_no_training": "batch_norm",
    "_softmax": "softmax",
    "_log_softmax": "log_softmax",
    "grid_sampler_2d": "grid_sampler",
}


def _op_name(op: Any) -> str:
    """``aten.convolution`` -> ``conv``, ``upsamplers::carafe_reassemble`` -> ``carafe_reassemble``:
    the names fvcore reports (it drops namespaces)."""
    qualified = getattr(op, "_qualified_op_name", None) or str(op).replace(".", "::", 1)
    name = qualified.partition("::")[2] or qualified
    return _CANONICAL.get(name, name)


class _OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the aten ops a forward pass dispatches."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        self.seen[_op_name(getattr(func, "overloadpacket", func))] += 1
        return func(*args, **(kwargs or {}))
