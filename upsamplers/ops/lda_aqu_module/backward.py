"""The LDA-AQU module's backward in closed form, for every backend.

The forward's intermediates are recomputed here (from the saved input and parameters) instead of
being kept from the forward, which stores nothing of full resolution: the offset network is cheap
to recompute and memory is what the forward saves. Every gradient is then an ATen backward kernel
(the attention's own backward comes from its backend):

* tanh, exact GELU: ``aten.tanh_backward``, ``aten.gelu_backward`` (one fused pass each);
* both LayerNorms over channels: ``aten.native_layer_norm`` / ``native_layer_norm_backward`` on
  channels-last views (one pass for the input gradient and both affine gradients; PyTorch's
  ``var_mean`` over dim 1 of an NCHW map ran at about 1 GB/s here, and the formula spelled with
  elementwise operators took a dozen passes over full-resolution maps);
* convolutions (offset conv, depthwise 3x3): ``aten.convolution_backward``;
* bilinear upsampling: ``aten.upsample_bilinear2d_backward`` (the ``cpp`` backend passes its own,
  4x faster: :class:`BackwardKernels`);
* bias-free 1x1 projections: matrix products over the pixels.

Maps move between NCHW and channels-last through :class:`BackwardKernels`: ATen's ``contiguous``
and ``add_`` by default; the ``cpp`` backend passes its tile-transposing ``relayout_`` operator (ATen's
copy and add between the two layouts stride through one side element by element: 13 ms for one
P2 offset-network map, 32 ms for the input gradient's sum, on the 2-core machine).

No atomics and no scatter: for a given thread count the result is the same in every run, as
``torch.use_deterministic_algorithms(True)`` requires (the cpp attention backward is deterministic
too; the triton one is not, and says so).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .reference import Config, Weights, base_grid, upsample_query

AttentionBackward = Callable[..., tuple]

_aten = torch.ops.aten


class BackwardKernels(NamedTuple):
    """The kernels the backward takes from its backend, besides the attention's own backward.

    ``convert(t, memory_format)``: t as a dense map in that format (t itself when it already is).
    ``accumulate(dst, src)``: dst += src in place, for any mix of the two dense layouts; returns dst.
    ``upsample_backward(grad, size)``: the gradient of ``upsample_query`` (bilinear, align_corners)
    for an NCHW output gradient, at the source size (H, W).
    """

    convert: Callable[[Tensor, torch.memory_format], Tensor]
    accumulate: Callable[[Tensor, Tensor], Tensor]
    upsample_backward: Callable[[Tensor, tuple[int, int]], Tensor]


def aten_upsample_backward(grad: Tensor, size: tuple[int, int]) -> Tensor:
    """ATen's gradient of the align_corners bilinear upsampling of a B x C x size map."""
    b, c, ho, wo = grad.shape
    return _aten.upsample_bilinear2d_backward(grad, [ho, wo], [b, c, *size], True, None, None)


ATEN_KERNELS = BackwardKernels(lambda t, memory_format: t.contiguous(memory_format=memory_format),
                               lambda dst, src: dst.add_(src), aten_upsample_backward)


def _rows(t: Tensor) -> Tensor:
    """A channels-last B x C x H x W map as its B x H x W x C rows (a view)."""
    return t.permute(0, 2, 3, 1)


def module_backward(grad: Tensor, x: Tensor, w: Weights, cfg: Config, attention_backward: AttentionBackward,
                    kernels: BackwardKernels = ATEN_KERNELS) -> tuple[Tensor | None, ...]:
    """Gradients with respect to x and every weight of :class:`Weights` (in its field order)."""
    to_layout, accumulate, upsample_backward = kernels
    cl, nchw = torch.channels_last, torch.contiguous_format
    b, c, h, wd = x.shape
    ch = w.q_weight.shape[0]
    gc = ch // cfg.groups
    out_channels = w.offset_weight.shape[0]
    ke = w.offset_weight.shape[-1]

    # Recomputed forward, low resolution: LayerNorm over channels as rows of B*H*W x C.
    x_rows = _rows(to_layout(x, cl))
    xn_rows, mean, rstd = _aten.native_layer_norm(x_rows, [c], w.ln_weight, w.ln_bias, cfg.eps)
    # Both projections as one product, and so their gradients below: larger GEMMs. W xn^T gives
    # the NCHW projections directly (B x 2Ch x H*W; the transposed operand costs the GEMM nothing).
    w_qk = torch.cat((w.q_weight.reshape(ch, c), w.k_weight.reshape(ch, c)))
    xn_flat = xn_rows.reshape(b, h * wd, c)
    qk0 = torch.matmul(w_qk, xn_flat.transpose(1, 2)).view(b, 2 * ch, h, wd)
    q0, k0 = qk0[:, :ch].contiguous(), qk0[:, ch:].contiguous()
    # High resolution: the offset network of each group.
    q = upsample_query(q0, cfg.scale)
    ho, wo = q.shape[2:]
    # The offset network channels-last throughout: oneDNN's depthwise backward took 57 ms at P2 with
    # an NCHW input and a channels-last gradient, 8 with both channels-last (and mixed layouts make
    # every elementwise kernel stride through one operand).
    qg = to_layout(q.reshape(b * cfg.groups, gc, ho, wo), cl)
    d = torch.nn.functional.conv2d(qg, w.dw_weight, padding=1, groups=gc)
    d_rows = _rows(to_layout(d, cl))
    n_rows, mean2, rstd2 = _aten.native_layer_norm(d_rows, [gc], w.offset_ln_weight, w.offset_ln_bias, cfg.eps)
    n = n_rows.permute(0, 3, 1, 2)  # channels-last memory
    a = torch.nn.functional.gelu(n)
    pred = torch.nn.functional.conv2d(a, w.offset_weight, w.offset_bias, padding=ke // 2)
    t = pred.tanh()
    base = base_grid(out_channels // 2, x.dtype, x.device).view(1, -1, 1, 1)
    offsets = to_layout(t * cfg.range_factor + base, nchw).view(b, -1, ho, wo)

    d_q, d_k0, d_x, d_off, d_emb = attention_backward(grad, q, k0, x, offsets, w.embedding, cfg.groups,
                                                      cfg.num_heads)

    # Offset network.
    d_off_groups = to_layout(d_off.reshape(b * cfg.groups, out_channels, ho, wo), cl)
    d_pred = _aten.tanh_backward(d_off_groups * cfg.range_factor, t)
    # Both convolution gradients in one call, from the channels-last maps. When this was written the
    # weight gradient took 56 ms channels-last and 25 from NCHW copies; re-measured at P2 (torch
    # 2.14, 2-core AVX-512 Xeon) it is 9.7 ms channels-last and 13.2 from the copies, which also cost
    # two relayouts (fwd+bwd 13-31 ms faster without them), and one call for both gradients takes
    # 15.1 ms against 19.1 for two, with the same results.
    conv_args = ([out_channels], [1, 1], [ke // 2, ke // 2], [1, 1], False, [0, 0], 1)
    d_a, d_offset_w, d_offset_b = _aten.convolution_backward(d_pred, a, w.offset_weight, *conv_args,
                                                             [True, True, True])
    d_n = _aten.gelu_backward(to_layout(d_a, cl), n)
    d_d_rows, d_offset_ln_w, d_offset_ln_b = _aten.native_layer_norm_backward(
        _rows(to_layout(d_n, cl)), d_rows, [gc], mean2, rstd2, w.offset_ln_weight, w.offset_ln_bias,
        [True, True, True])
    d_qg, d_dw, _ = _aten.convolution_backward(d_d_rows.permute(0, 3, 1, 2), qg, w.dw_weight, None, [1, 1], [1, 1],
                                               [1, 1], False, [0, 0], gc, [True, True, False])
    # d_q (NCHW, this call's own tensor) += the depthwise input gradient, group by group.
    d_q = to_layout(d_q, nchw)
    accumulate(d_q.view(b * cfg.groups, gc, ho, wo), to_layout(d_qg, cl))

    # Upsampling and projections: NCHW gradients of both projections, B x 2Ch x H*W.
    d_q0 = upsample_backward(d_q, (h, wd))
    d_qk0 = torch.cat((d_q0.reshape(b, ch, h * wd), to_layout(d_k0, nchw).reshape(b, ch, h * wd)), dim=1)
    d_xn_rows = torch.matmul(d_qk0.transpose(1, 2), w_qk).view(b, h, wd, c)
    d_w_qk = torch.matmul(d_qk0, xn_flat).sum(0)
    d_wq, d_wk = d_w_qk[:ch].reshape(w.q_weight.shape).clone(), d_w_qk[ch:].reshape(w.k_weight.shape).clone()
    d_x_rows, d_ln_w, d_ln_b = _aten.native_layer_norm_backward(d_xn_rows, x_rows, [c], mean, rstd, w.ln_weight,
                                                                w.ln_bias, [True, True, True])
    # The attention's value gradient is this call's own tensor: the input gradient accumulates in it.
    d_x = to_layout(d_x, nchw)
    accumulate(d_x, d_x_rows.permute(0, 3, 1, 2))
    return (d_x, d_ln_w, d_ln_b, d_wq, d_wk, d_dw, d_offset_ln_w, d_offset_ln_b, d_offset_w, d_offset_b,
            d_emb if w.embedding is not None else None)
