"""CARAFE-style reassembly in plain PyTorch, with the mmcv ``carafe`` op's semantics.

Output pixel (p, q) is the weighted sum of the k x k window of ``x`` centred on the source pixel
(p // s, q // s); the window index is row-major (the order of ``F.unfold``); neighbours outside
the image contribute zero and the weights are *not* renormalised at the border. Channel groups
split the channels into contiguous blocks, each with its own kernel.

Instead of materialising the k^2 x C x H x W unfolded tensor, the sum runs over the k^2 taps, each a
shifted view of the zero-padded input multiplied by that tap's weight plane. Peak extra memory is
one output-sized accumulator per row tile; ``max_bytes`` bounds it.

The operation is the custom op ``upsamplers::carafe_reassemble`` with its own backward op: autograd
through the tap loop would zero-fill a padded-input-sized gradient for every tap; the explicit
backward accumulates into one buffer. Being one op, it also gets one FLOP formula (both counters)
whatever the loop does inside, and stays opaque to ``torch.compile``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

DEFAULT_MAX_BYTES = 512 * 2**20


def rows_per_tile(total_rows: int, bytes_per_row: int, max_bytes: int) -> int:
    """How many rows fit into ``max_bytes`` (at least one)."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    return max(1, min(total_rows, max_bytes // max(1, bytes_per_row)))


def _geometry(x: Tensor, kernels: Tensor, kernel_size: int, scale: int) -> tuple[int, int, int, int, int]:
    """(groups, channels per group, H, W, radius) after checking the shapes."""
    b, c, h, w = x.shape
    taps = kernel_size * kernel_size
    if kernels.dim() != 4 or kernels.shape[0] != b or kernels.shape[2:] != (h * scale, w * scale):
        raise ValueError(
            f"kernels must be B x G*{taps} x {h * scale} x {w * scale} for input {tuple(x.shape)}, "
            f"got {tuple(kernels.shape)}"
        )
    if kernels.shape[1] % taps:
        raise ValueError(f"kernel channels ({kernels.shape[1]}) must be a multiple of k*k = {taps}")
    groups = kernels.shape[1] // taps
    if c % groups:
        raise ValueError(f"channels ({c}) must be divisible by the kernel groups ({groups})")
    return groups, c // groups, h, w, kernel_size // 2


def _tile_rows(x: Tensor, scale: int, max_bytes: int) -> int:
    b, c, h, w = x.shape
    return rows_per_tile(h, b * c * scale * scale * w * x.element_size() * 2, max_bytes)


def _forward(x: Tensor, kernels: Tensor, k: int, s: int, max_bytes: int) -> Tensor:
    groups, cg, h, w, r = _geometry(x, kernels, k, s)
    b = x.shape[0]
    padded = F.pad(x, (r, r, r, r)).view(b, groups, cg, h + 2 * r, w + 2 * r)
    ker = kernels.view(b, groups, k * k, h, s, w, s)
    tile = _tile_rows(x, s, max_bytes)
    pieces = []
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        acc = None
        for t in range(k * k):
            dy, dx = divmod(t, k)
            shifted = padded[:, :, :, r0 + dy : r1 + dy, dx : dx + w].unsqueeze(4).unsqueeze(6)
            weight = ker[:, :, t : t + 1, r0:r1]
            if acc is None:
                acc = shifted * weight
            else:
                acc.addcmul_(shifted, weight)
        assert acc is not None
        pieces.append(acc.reshape(b, groups * cg, (r1 - r0) * s, w * s))
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)


def _backward(grad: Tensor, x: Tensor, kernels: Tensor, k: int, s: int, max_bytes: int, need_x: bool,
              need_kernels: bool) -> tuple[Tensor, Tensor]:
    groups, cg, h, w, r = _geometry(x, kernels, k, s)
    b = x.shape[0]
    g = grad.reshape(b, groups, cg, h, s, w, s)
    ker = kernels.view(b, groups, k * k, h, s, w, s)
    padded = F.pad(x, (r, r, r, r)).view(b, groups, cg, h + 2 * r, w + 2 * r)
    grad_padded = x.new_zeros(padded.shape) if need_x else None
    grad_kernels = torch.empty_like(ker) if need_kernels else None
    tile = _tile_rows(x, s, max_bytes)
    for r0 in range(0, h, tile):
        r1 = min(h, r0 + tile)
        g_tile = g[:, :, :, r0:r1]
        for t in range(k * k):
            dy, dx = divmod(t, k)
            if grad_padded is not None:
                # d out / d x_shifted: the tap's weights summed over the s x s sub-pixels it feeds
                # (einsum: a strided sum over the two sub-pixel axes is several times slower).
                grad_padded[:, :, :, r0 + dy : r1 + dy, dx : dx + w] += torch.einsum(
                    "bgchiwj,bghiwj->bgchw", g_tile, ker[:, :, t, r0:r1])
            if grad_kernels is not None:
                shifted = padded[:, :, :, r0 + dy : r1 + dy, dx : dx + w].unsqueeze(4).unsqueeze(6)
                grad_kernels[:, :, t, r0:r1] = (g_tile * shifted).sum(dim=2)
    grad_x = (grad_padded[..., r : r + h, r : r + w].reshape(x.shape) if grad_padded is not None
              else x.new_empty(0))
    grad_k = grad_kernels.view(kernels.shape) if grad_kernels is not None else kernels.new_empty(0)
    return grad_x, grad_k


@torch.library.custom_op("upsamplers::carafe_reassemble", mutates_args=())
def _reassemble_op(x: Tensor, kernels: Tensor, kernel_size: int, scale: int, max_bytes: int) -> Tensor:
    return _forward(x, kernels, kernel_size, scale, max_bytes)


@_reassemble_op.register_fake
def _(x: Tensor, kernels: Tensor, kernel_size: int, scale: int, max_bytes: int) -> Tensor:
    b, c, h, w = x.shape
    return x.new_empty(b, c, h * scale, w * scale)


@torch.library.custom_op("upsamplers::carafe_reassemble_backward", mutates_args=())
def _reassemble_backward_op(grad: Tensor, x: Tensor, kernels: Tensor, kernel_size: int, scale: int, max_bytes: int,
                            need_x: bool, need_kernels: bool) -> tuple[Tensor, Tensor]:
    return _backward(grad, x, kernels, kernel_size, scale, max_bytes, need_x, need_kernels)


@_reassemble_backward_op.register_fake
def _(grad: Tensor, x: Tensor, kernels: Tensor, kernel_size: int, scale: int, max_bytes: int, need_x: bool,
      need_kernels: bool) -> tuple[Tensor, Tensor]:
    return (torch.empty_like(x) if need_x else x.new_empty(0),
            torch.empty_like(kernels) if need_kernels else kernels.new_empty(0))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    x, kernels, kernel_size, scale, max_bytes = inputs
    ctx.save_for_backward(x, kernels)
    ctx.args = (kernel_size, scale, max_bytes)


def _autograd_backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, kernels = ctx.saved_tensors
    need_x, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_x, grad_k = _reassemble_backward_op(grad, x, kernels, *ctx.args, need_x, need_k)
    return (grad_x if need_x else None, grad_k if need_k else None, None, None, None)


_reassemble_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def reassemble_macs(x_shape: Any, kernel_size: int, scale: int) -> int:
    """One multiply-accumulate per tap, channel and output pixel: B * C * sH * sW * k^2."""
    b, c, h, w = (int(v) for v in x_shape)
    return b * c * h * scale * w * scale * kernel_size * kernel_size


@register_flop_formula(torch.ops.upsamplers.carafe_reassemble)
def _flop_formula(x_shape: Any, kernels_shape: Any, kernel_size: int, scale: int, max_bytes: int, *args: Any,
                  **kwargs: Any) -> int:
    return 2 * reassemble_macs(x_shape, kernel_size, scale)  # FlopCounterMode counts FLOPs = 2 x MACs


def _fvcore_handle(inputs: list, outputs: list) -> int:
    """fvcore op handle (MACs) for the traced node ``upsamplers::carafe_reassemble``."""
    return reassemble_macs(inputs[0].type().sizes(), int(inputs[2].toIValue()), int(inputs[3].toIValue()))


FVCORE_HANDLES = {"upsamplers::carafe_reassemble": _fvcore_handle}


def carafe_reassemble(
    x: Tensor, kernels: Tensor, kernel_size: int, scale: int, max_bytes: int = DEFAULT_MAX_BYTES
) -> Tensor:
    """Reassemble ``x`` (B x C x H x W) with per-output-pixel ``kernels`` (B x G*k*k x sH x sW)."""
    _geometry(x, kernels, kernel_size, scale)  # clear errors before entering the op
    return _reassemble_op(x, kernels, kernel_size, scale, max_bytes)
