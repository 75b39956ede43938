"""Counting multiply-accumulates (MACs) of a module, with every upsampler op accounted for.

Two counters that share one policy:

* ``fvcore`` (default): fvcore's JIT-trace ``FlopCountAnalysis`` with our op handles installed;
* ``dispatch``: ``torch.utils.flop_counter.FlopCounterMode`` with the same formulas registered
  for the dispatcher's op names (it sees inside autograd Functions and needs no tracing).

The policy (recorded in every report as ``MACS_POLICY``):

* convolutions (transposed ones on the *input* spatial size), linear layers, matmul/bmm/einsum:
  true multiply-accumulates;
* interpolation: the taps with non-trivial weights per output element: bilinear 4, bicubic 16,
  nearest 0 (a copy); ``grid_sample`` reads its mode argument;
* normalisation: fvcore's convention (LayerNorm/GroupNorm 5 per element with affine, 4 without;
  eval BatchNorm 1 per element, 2 with affine);
* elementwise arithmetic, activations, softmax and reductions: 1 per output element (1 per input
  element for reductions) when ``elementwise="count"`` (default), 0 with ``elementwise="ignore"``
  (the convention of most papers, which count only convolutions and matmuls); tensors with fewer
  than 2 dimensions are index arithmetic and count 0;
* data movement (reshape, permute, pad, unfold/im2col, pixel_shuffle, cat, slicing, ...): 0;
* attention (``scaled_dot_product_attention``): q.k^T and weights.v multiply-accumulates;
* custom ops register their own handle (LDA-AQU's fused op: see ``upsamplers.ops.flops``);
  ``torchvision::roi_align`` counts one bilinear sample (4 MACs) per output element, the minimum
  of its data-dependent adaptive sampling.

FLOPs are reported as 2 x MACs. Ops no handle covers are listed as ``uncounted_ops``.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

MACS_POLICY = (
    "conv/linear/matmul/einsum: multiply-accumulates; interpolation: taps per output element "
    "(bilinear 4, bicubic 16, nearest 0; grid_sample by mode); norms: fvcore convention; "
    "elementwise/activations/softmax/reductions: 1 per element ({elementwise}); data movement: 0; "
    "custom ops: own handles; flops = 2 x macs"
)

ELEMENTWISE_POLICIES = ("count", "ignore")

# Elementwise ops counted 1 per output element: JIT names (fvcore) and dispatcher names.
_ELEMENTWISE = (
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "addcmul", "addcmul_", "addcdiv",
    "addcdiv_", "neg", "abs", "pow", "sqrt", "rsqrt", "exp", "log", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "gelu", "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "silu", "silu_",
    "hardswish", "hardsigmoid", "erf", "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_",
    "minimum", "maximum",
    "where", "reciprocal", "softplus", "lerp", "square", "elu", "log2", "log10", "exp2",
)
_SOFTMAX = ("softmax", "log_softmax", "_softmax", "_log_softmax")
_REDUCTIONS = ("sum", "mean", "norm", "linalg_vector_norm", "amax", "amin", "prod", "var", "std")
# Zero-cost ops that fvcore does not already ignore (listed so they never show as uncounted).
_DATA_MOVEMENT = (
    "pixel_shuffle", "pixel_unshuffle", "im2col", "col2im", "pad", "constant_pad_nd", "reflection_pad2d",
    "replicate_pad2d", "repeat", "repeat_interleave", "expand_as", "flip", "clone", "contiguous", "view_as",
    "reshape_as", "unflatten", "movedim", "split", "chunk", "unfold", "max_pool2d", "adaptive_max_pool2d",
    "meshgrid", "linspace", "arange", "tensor", "scalar_tensor", "to", "type_as", "floor", "ceil", "round",
    "lt", "le", "ne", "logical_and", "logical_or", "masked_fill", "masked_fill_", "fill_", "zero_", "ones_like",
    "rand_like", "randn_like", "empty_like", "index_select", "gather", "scatter", "topk", "sort", "argmax",
    "stack", "cat", "select", "slice", "narrow", "expand", "permute", "transpose", "squeeze", "unsqueeze",
    "flatten", "view", "reshape", "detach", "copy_", "zeros", "zeros_like", "full", "full_like", "empty",
    "Int", "ScalarImplicit", "size", "numel", "dim", "eq", "gt", "ge", "_unsafe_view", "alias", "lift_fresh",
    "new_zeros", "new_empty", "new_full", "t", "as_strided", "_to_copy", "empty_strided", "split_with_sizes",
    "unbind", "dropout", "feature_dropout", "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d",
    "_upsample_nearest_exact2d", "nonzero", "remainder", "floor_divide", "bitwise_not", "__and__", "roll",
    "max_pool2d_with_indices", "index", "index_put", "index_put_",
)
_INTERPOLATION_TAPS = {
    "upsample_bilinear2d": 4,
    "_upsample_bilinear2d_aa": 4,
    "upsample_bicubic2d": 16,
    "_upsample_bicubic2d_aa": 16,
    "upsample_linear1d": 2,
    "upsample_trilinear3d": 8,
    "upsample_nearest2d": 0,
    "_upsample_nearest_exact2d": 0,
}
# grid_sampler's integer interpolation_mode argument: 0 bilinear, 1 nearest, 2 bicubic.
_GRID_SAMPLE_TAPS = {0: 4, 1: 0, 2: 16}


def _numel(shape: Sequence[int] | None) -> int:
    """Elements of a tensor shape; 0-dim results (index arithmetic on scalars) count as 0."""
    return int(math.prod(shape)) if shape else 0


def _feature_numel(shape: Sequence[int] | None) -> int:
    """Elements of a feature tensor for the elementwise policy.

    Tensors with fewer than 2 dimensions are index or bookkeeping arithmetic (the index vectors
    of a decomposed interpolation, scalar sizes in a trace), not feature math: they count 0.
    """
    return _numel(shape) if shape is not None and len(shape) >= 2 else 0


# ----------------------------------------------------------------------------------- fvcore side


def _jit_shape(value: Any) -> list[int] | None:
    """Shape of a JIT value, or None when it is not a tensor with known sizes."""
    try:
        typ = value.type()
    except AttributeError:
        return None
    if not isinstance(typ, torch._C.TensorType):
        return None
    sizes = typ.sizes()
    return list(sizes) if sizes is not None else None


def _jit_const(value: Any) -> Any:
    try:
        return value.toIValue()
    except Exception:  # not a constant
        return None


def _fv_out_elementwise(inputs: list, outputs: list) -> int:
    return _feature_numel(_jit_shape(outputs[0])) if outputs else 0


def _fv_in_elementwise(inputs: list, outputs: list) -> int:
    return _feature_numel(_jit_shape(inputs[0])) if inputs else 0


def _fv_zero(inputs: list, outputs: list) -> int:
    return 0


def _fv_interpolation(taps: int) -> Callable[[list, list], int]:
    def handle(inputs: list, outputs: list) -> int:
        return taps * _numel(_jit_shape(outputs[0]))

    return handle


def _fv_grid_sampler(inputs: list, outputs: list) -> int:
    mode = _jit_const(inputs[2]) if len(inputs) > 2 else 0
    return _GRID_SAMPLE_TAPS.get(int(mode) if mode is not None else 0, 4) * _numel(_jit_shape(outputs[0]))


def _einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
    """MACs of an einsum with any number of operands: product of every index's size.

    For a pure product with a reduction this is exactly the multiply-accumulate count; for
    more than two operands it counts one MAC per element of the full index space (the cost
    of the naive evaluation, what the operation needs at least once per term).
    """
    equation = equation.replace(" ", "")
    lhs = equation.split("->")[0]
    sizes: dict[str, int] = {}
    for term, shape in zip(lhs.split(","), shapes):
        letters = [c for c in term if c != "."]
        if "..." in term:
            n_ell = len(shape) - len(letters)
            pre = term.split("...")[0]
            dims = list(shape)
            for i, c in enumerate(pre):
                sizes[c] = dims[i]
            for j in range(n_ell):
                sizes[f"...{j}"] = max(sizes.get(f"...{j}", 1), dims[len(pre) + j])
            post = term.split("...")[1]
            for i, c in enumerate(post):
                sizes[c] = dims[len(pre) + n_ell + i]
        else:
            for c, n in zip(letters, shape):
                sizes[c] = max(sizes.get(c, 1), n)
    return int(math.prod(sizes.values())) if sizes else 0


def _fv_einsum(inputs: list, outputs: list) -> int:
    equation = _jit_const(inputs[0])
    operands = inputs[1].node().inputs() if inputs[1].node().kind() == "prim::ListConstruct" else []
    shapes = [_jit_shape(v) or [] for v in operands]
    if not isinstance(equation, str) or not shapes:
        return 0
    return _einsum_macs(equation, shapes)


def _fv_norm(has_affine_index: int, per_element: int = 5) -> Callable[[list, list], int]:
    def handle(inputs: list, outputs: list) -> int:
        affine = inputs[has_affine_index].type().kind() != "NoneType" if len(inputs) > has_affine_index else False
        return (per_element if affine else per_element - 1) * _numel(_jit_shape(inputs[0]))

    return handle


def fvcore_handles(elementwise: str = "count") -> dict[str, Callable[[list, list], Any]]:
    """Op handles (JIT node kind -> handle) that implement the policy on top of fvcore's defaults."""
    if elementwise not in ELEMENTWISE_POLICIES:
        raise ValueError(f"elementwise policy must be one of {ELEMENTWISE_POLICIES}, got {elementwise!r}")
    counted = elementwise == "count"
    handles: dict[str, Callable[[list, list], Any]] = {}
    for name in _ELEMENTWISE + _SOFTMAX:
        handles[f"aten::{name}"] = _fv_out_elementwise if counted else _fv_zero
    for name in _REDUCTIONS:
        handles[f"aten::{name}"] = _fv_in_elementwise if counted else _fv_zero
    for name in _DATA_MOVEMENT:
        handles.setdefault(f"aten::{name}", _fv_zero)
    for name, taps in _INTERPOLATION_TAPS.items():
        handles[f"aten::{name}"] = _fv_interpolation(taps)
    handles["aten::grid_sampler"] = _fv_grid_sampler
    handles["aten::einsum"] = _fv_einsum
    handles["aten::avg_pool2d"] = _fv_avg_pool2d
    handles["aten::cosine_similarity"] = _fv_cosine_similarity if counted else _fv_zero
    handles["torchvision::roi_align"] = _fv_interpolation(4)
    handles["aten::scaled_dot_product_attention"] = _fv_sdpa_handle(counted)
    from upsamplers.ops import reassemble

    handles.update(reassemble.FVCORE_HANDLES)
    try:  # the fused LDA-AQU op, when the kernels package provides it
        from upsamplers.ops import flops as op_flops

        handles.update(getattr(op_flops, "FVCORE_HANDLES", {}))
    except ImportError:
        pass
    return handles


def sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], softmax: bool = True) -> int:
    """Scaled dot-product attention: q.k^T (L x S x E) and weights.v (L x S x Ev) per batch and head,
    plus the softmax (1 per weight) under the elementwise policy."""
    *batch, length, e = q_shape
    source = k_shape[-2]
    return int(math.prod(batch)) * length * source * (e + v_shape[-1] + (1 if softmax else 0))


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
    return 6 * _feature_numel(_jit_shape(inputs[0])) + 2 * _feature_numel(_jit_shape(outputs[0]))


def _fv_avg_pool2d(inputs: list, outputs: list) -> int:
    kernel = _jit_const(inputs[1]) or [1, 1]
    return int(math.prod(kernel)) * _numel(_jit_shape(outputs[0]))


# --------------------------------------------------------------------------------- dispatch side


def _dispatch_mapping(elementwise: str) -> dict[Any, Callable[..., int]]:
    """Formulas (in FLOPs = 2 x MACs) for ``FlopCounterMode(custom_mapping=...)``."""
    aten = torch.ops.aten
    counted = elementwise == "count"

    def out_elementwise(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * _feature_numel(list(out_shape)) if counted and out_shape is not None else 0

    def in_elementwise(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        shape = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else None
        return 2 * _feature_numel(list(shape)) if counted and shape is not None else 0

    def interpolation(taps: int) -> Callable[..., int]:
        def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            return 2 * taps * _numel(list(out_shape))

        return formula

    def grid_sampler(input_shape: Any, grid_shape: Any, mode: int = 0, *args: Any, out_shape: Any = None,
                     **kwargs: Any) -> int:
        return 2 * _GRID_SAMPLE_TAPS.get(int(mode), 4) * _numel(list(out_shape))

    def norm(per_element: int, weight_index: int) -> Callable[..., int]:
        def formula(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            affine = len(args) > weight_index and args[weight_index] is not None
            return 2 * (per_element if affine else per_element - 1) * _numel(list(args[0]))

        return formula

    def avg_pool(input_shape: Any, kernel: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * int(math.prod(kernel)) * _numel(list(out_shape))

    def adaptive_avg_pool(input_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return 2 * _numel(list(input_shape))  # fvcore: 1 per input element

    mapping: dict[Any, Callable[..., int]] = {}

    def add(name: str, formula: Callable[..., int]) -> None:
        packet = getattr(aten, name, None)
        if packet is not None:
            mapping[packet] = formula

    for name in _ELEMENTWISE + _SOFTMAX:
        add(name, out_elementwise)
    for name in _REDUCTIONS:
        add(name, in_elementwise)
    for name, taps in _INTERPOLATION_TAPS.items():
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
    return mapping


# ---------------------------------------------------------------------------------------- result


@dataclass
class MacCount:
    """MACs of one forward pass, by operator, with what could not be counted."""

    macs: int
    by_operator: dict[str, int] = field(default_factory=dict)
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    counter: str = "fvcore"
    elementwise: str = "count"

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "flops": self.flops,
            "macs_by_operator": dict(sorted(self.by_operator.items(), key=lambda kv: -kv[1])),
            "uncounted_ops": dict(sorted(self.uncounted_ops.items())),
            "counter": self.counter,
            "macs_policy": MACS_POLICY.format(elementwise=f"elementwise {self.elementwise}"),
        }


def _as_tuple(inputs: Any) -> tuple[Any, ...]:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def count_macs_fvcore(module: nn.Module, inputs: Iterable[Any], elementwise: str = "count") -> MacCount:
    """MACs from fvcore's JIT trace with our handles."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import and the tracer are noisy
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(module, _as_tuple(inputs))
        analysis.set_op_handle(**fvcore_handles(elementwise))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
        by_op = {k: int(v) for k, v in analysis.by_operator().items() if v}
        unsupported = dict(analysis.unsupported_ops())
    return MacCount(total, by_op, unsupported, "fvcore", elementwise)


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
        module(*_as_tuple(inputs))
    counts = counter.get_flop_counts().get("Global", {})
    by_op = {_op_name(op): int(v) // 2 for op, v in counts.items() if v}
    registered = {_op_name(op) for op in counter.flop_registry}
    # native_batch_norm runs inside the counted eval-mode batch norm op.
    known = registered | set(_DATA_MOVEMENT) | set(_ELEMENTWISE) | set(_SOFTMAX) | set(_REDUCTIONS) | {
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


COUNTERS: dict[str, Callable[..., MacCount]] = {"fvcore": count_macs_fvcore, "dispatch": count_macs_dispatch}


def count_macs(module: nn.Module, inputs: Iterable[Any], counter: str = "fvcore",
               elementwise: str = "count") -> MacCount:
    if counter not in COUNTERS:
        raise ValueError(f"unknown FLOP counter {counter!r}; valid: {', '.join(COUNTERS)}")
    return COUNTERS[counter](module, inputs, elementwise)
