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
* bilinear upsampling: ``aten.upsample_bilinear2d_backward``;
* bias-free 1x1 projections: matrix products over the pixels.

No atomics and no scatter: for a given thread count the result is the same in every run, as
``torch.use_deterministic_algorithms(True)`` requires (the cpp attention backward is deterministic
too; the triton one is not, and says so).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .reference import Config, Weights, base_grid, upsample_query

AttentionBackward = Callable[..., tuple]

_aten = torch.ops.aten


def _channels_last_rows(t: Tensor) -> Tensor:
    """A B x C x H x W map as B x H x W x C, contiguous (a view when it already is channels-last)."""
    return t.permute(0, 2, 3, 1).contiguous()


def module_backward(grad: Tensor, x: Tensor, w: Weights, cfg: Config,
                    attention_backward: AttentionBackward) -> tuple[Tensor | None, ...]:
    """Gradients with respect to x and every weight of :class:`Weights` (in its field order)."""
    b, c, h, wd = x.shape
    ch = w.q_weight.shape[0]
    gc = ch // cfg.groups
    out_channels = w.offset_weight.shape[0]
    ke = w.offset_weight.shape[-1]

    # Recomputed forward, low resolution: LayerNorm over channels as rows of B*H*W x C.
    x_rows = _channels_last_rows(x)
    xn_rows, mean, rstd = _aten.native_layer_norm(x_rows, [c], w.ln_weight, w.ln_bias, cfg.eps)
    # Both projections as one product (pixels x 2 Ch), and so their gradients below: larger GEMMs.
    w_qk = torch.cat((w.q_weight.reshape(ch, c), w.k_weight.reshape(ch, c)))
    xn_flat = xn_rows.reshape(b, h * wd, c)
    qk0 = torch.matmul(xn_flat, w_qk.t()).view(b, h, wd, 2 * ch).permute(0, 3, 1, 2)
    q0, k0 = qk0[:, :ch], qk0[:, ch:].contiguous()
    # High resolution: the offset network of each group.
    q = upsample_query(q0.contiguous(), cfg.scale)
    ho, wo = q.shape[2:]
    # The offset network channels-last throughout: oneDNN's depthwise backward took 57 ms at P2 with
    # an NCHW input and a channels-last gradient, 8 with both channels-last (and mixed layouts make
    # every elementwise kernel stride through one operand).
    qg = q.reshape(b * cfg.groups, gc, ho, wo).contiguous(memory_format=torch.channels_last)
    d = torch.nn.functional.conv2d(qg, w.dw_weight, padding=1, groups=gc)
    d_rows = _channels_last_rows(d)
    n_rows, mean2, rstd2 = _aten.native_layer_norm(d_rows, [gc], w.offset_ln_weight, w.offset_ln_bias, cfg.eps)
    n = n_rows.permute(0, 3, 1, 2)  # channels-last memory
    a = torch.nn.functional.gelu(n)
    pred = torch.nn.functional.conv2d(a, w.offset_weight, w.offset_bias, padding=ke // 2)
    t = pred.tanh()
    base = base_grid(out_channels // 2, x.dtype, x.device).view(1, -1, 1, 1)
    offsets = (t * cfg.range_factor + base).reshape(b, -1, ho, wo)

    d_q, d_k0, d_x, d_off, d_emb = attention_backward(grad, q, k0, x, offsets, w.embedding, cfg.groups,
                                                      cfg.num_heads)

    # Offset network.
    d_off_groups = d_off.reshape(b * cfg.groups, out_channels, ho, wo).contiguous(memory_format=torch.channels_last)
    d_pred = _aten.tanh_backward(d_off_groups * cfg.range_factor, t)
    # oneDNN at P2: the input gradient 11 ms channels-last (NCHW slower), the weight gradient 56 ms
    # channels-last but 25 from NCHW copies (4 ms): each from the layout it is fastest in.
    conv_args = ([out_channels], [1, 1], [ke // 2, ke // 2], [1, 1], False, [0, 0], 1)
    d_a = _aten.convolution_backward(d_pred, a, w.offset_weight, *conv_args, [True, False, False])[0]
    _, d_offset_w, d_offset_b = _aten.convolution_backward(d_pred.contiguous(), a.contiguous(), w.offset_weight,
                                                           *conv_args, [False, True, True])
    d_n = _aten.gelu_backward(d_a, n)
    d_d_rows, d_offset_ln_w, d_offset_ln_b = _aten.native_layer_norm_backward(
        _channels_last_rows(d_n), d_rows, [gc], mean2, rstd2, w.offset_ln_weight, w.offset_ln_bias,
        [True, True, True])
    d_qg, d_dw, _ = _aten.convolution_backward(d_d_rows.permute(0, 3, 1, 2), qg, w.dw_weight, None, [1, 1], [1, 1],
                                               [1, 1], False, [0, 0], gc, [True, True, False])
    d_q = d_q + d_qg.contiguous().reshape(b, ch, ho, wo)

    # Upsampling and projections (pixels as rows).
    d_q0 = _aten.upsample_bilinear2d_backward(d_q.contiguous(), [ho, wo], [b, ch, h, wd], True, None, None)
    d_qk0_rows = x.new_empty((b, h, wd, 2 * ch))
    d_qk0_rows[..., :ch] = d_q0.permute(0, 2, 3, 1)
    d_qk0_rows[..., ch:] = d_k0.permute(0, 2, 3, 1)
    d_qk0_rows = d_qk0_rows.view(b, h * wd, 2 * ch)
    d_xn_rows = torch.matmul(d_qk0_rows, w_qk).view(b, h, wd, c)
    d_w_qk = torch.matmul(d_qk0_rows.transpose(1, 2), xn_flat).sum(0)
    d_wq, d_wk = d_w_qk[:ch].reshape(w.q_weight.shape).clone(), d_w_qk[ch:].reshape(w.k_weight.shape).clone()
    d_x_rows, d_ln_w, d_ln_b = _aten.native_layer_norm_backward(d_xn_rows, x_rows, [c], mean, rstd, w.ln_weight,
                                                                w.ln_bias, [True, True, True])
    d_x = d_x + d_x_rows.permute(0, 3, 1, 2)
    return (d_x, d_ln_w, d_ln_b, d_wq, d_wk, d_dw, d_offset_ln_w, d_offset_ln_b, d_offset_w, d_offset_b,
            d_emb if w.embedding is not None else None)
