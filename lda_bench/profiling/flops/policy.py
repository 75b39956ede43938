"""The counting policy both MAC counters implement (see the package docstring), the formulas
they share, and the result type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

MACS_POLICY = (
    "conv/linear/matmul/einsum: multiply-accumulates; interpolation: taps per output element "
    "(bilinear 4, bicubic 16, nearest 0; grid_sample by mode); norms: fvcore convention; "
    "elementwise/activations/softmax/reductions: 1 per element ({elementwise}); data movement: 0; "
    "custom ops: own handles; flops = 2 x macs"
)

ELEMENTWISE_POLICIES = ("count", "ignore")

# Elementwise ops counted 1 per output element: JIT names (fvcore) and dispatcher names.
ELEMENTWISE_OPS = (
    "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "addcmul", "addcmul_", "addcdiv",
    "addcdiv_", "neg", "abs", "pow", "sqrt", "rsqrt", "exp", "log", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "gelu", "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "silu", "silu_",
    "hardswish", "hardsigmoid", "erf", "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_",
    "minimum", "maximum",
    "where", "reciprocal", "softplus", "lerp", "square", "elu", "log2", "log10", "exp2",
)
SOFTMAX_OPS = ("softmax", "log_softmax", "_softmax", "_log_softmax")
REDUCTION_OPS = ("sum", "mean", "norm", "linalg_vector_norm", "amax", "amin", "prod", "var", "std")
# Zero-cost ops that fvcore does not already ignore (listed so they never show as uncounted).
DATA_MOVEMENT_OPS = (
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
INTERPOLATION_TAPS = {
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
GRID_SAMPLE_TAPS = {0: 4, 1: 0, 2: 16}


def numel(shape: Sequence[int] | None) -> int:
    """Elements of a tensor shape; 0-dim results (index arithmetic on scalars) count as 0."""
    return int(math.prod(shape)) if shape else 0


def feature_numel(shape: Sequence[int] | None) -> int:
    """Elements of a feature tensor for the elementwise policy.

    Tensors with fewer than 2 dimensions are index or bookkeeping arithmetic (the index vectors
    of a decomposed interpolation, scalar sizes in a trace), not feature math: they count 0.
    """
    return numel(shape) if shape is not None and len(shape) >= 2 else 0


def einsum_macs(equation: str, shapes: Sequence[Sequence[int]]) -> int:
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


def sdpa_macs(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int], softmax: bool = True) -> int:
    """Scaled dot-product attention: q.k^T (L x S x E) and weights.v (L x S x Ev) per batch and head,
    plus the softmax (1 per weight) under the elementwise policy."""
    *batch, length, e = q_shape
    source = k_shape[-2]
    return int(math.prod(batch)) * length * source * (e + v_shape[-1] + (1 if softmax else 0))


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


def as_tuple(inputs: Any) -> tuple[Any, ...]:
    """A module's positional inputs as a tuple (one tensor or a sequence of them)."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
