"""LDA-AQU's sampling attention written with the structure of the official code (for benchmarks).

The official code (duzw9311/LDA-AQU, fpn_lau.py, ``LDA_AQU.forward``): the sampling positions of
all k x k points are laid out as one (k*Ho) x (k*Wo) grid image, K and V are sampled with
``grid_sample`` on that image, rearranged into B x (Ho*Wo) x k^2 x C, split into heads, and the
attention runs as batched matmuls of one query row against k^2 keys per output pixel:
(1 x d) @ (d x k^2), softmax, (1 x k^2) @ (k^2 x C/nh).
It materialises the k^2 x C x Ho x Wo samples, which is what the fused kernels avoid. Same
semantics as :func:`upsamplers.ops.sample_attention` (checked by the benchmark).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_attention_official(query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None,
                              groups: int, num_heads: int) -> Tensor:
    b, ch, ho, wo = query.shape
    _, c, h, w = value.shape
    points = offsets.shape[1] // (2 * groups)
    k = math.isqrt(points)
    d = ch // num_heads
    # Absolute positions in output pixels, normalised as the official code does.
    off = offsets.reshape(b * groups, k, k, 2, ho, wo)
    ys = torch.arange(ho, device=query.device, dtype=query.dtype).view(ho, 1)
    xs = torch.arange(wo, device=query.device, dtype=query.dtype)
    gy = 2 * (off[:, :, :, 0] + ys) / (ho - 1) - 1
    gx = 2 * (off[:, :, :, 1] + xs) / (wo - 1) - 1
    # One (k*Ho) x (k*Wo) grid image: 'bg kh kw h w xy -> bg (h kh) (w kw) xy'.
    grid = torch.stack((gx, gy), dim=-1).permute(0, 3, 1, 4, 2, 5).reshape(b * groups, ho * k, wo * k, 2)
    k_img = F.grid_sample(key.reshape(b * groups, ch // groups, h, w), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=True)
    v_img = F.grid_sample(value.reshape(b * groups, c // groups, h, w), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=True)

    def slots(img: Tensor, channels: int) -> Tensor:
        # 'b (g c) (h kh) (w kw) -> b (h w) (kh kw) (g c)'
        t = img.reshape(b, groups, channels // groups, ho, k, wo, k)
        return t.permute(0, 3, 5, 4, 6, 1, 2).reshape(b, ho * wo, points, channels)

    k_s = slots(k_img, ch)
    v_s = slots(v_img, c)
    q = query.reshape(b, num_heads, d, ho * wo).permute(0, 1, 3, 2).unsqueeze(3)  # b nh HW 1 d
    k_h = k_s.reshape(b, ho * wo, points, num_heads, d).permute(0, 3, 1, 2, 4)  # b nh HW P d
    if embedding is not None:
        k_h = k_h + embedding.view(1, num_heads, 1, points, d)
    v_h = v_s.reshape(b, ho * wo, points, num_heads, c // num_heads).permute(0, 3, 1, 2, 4)
    attn = ((q * d**-0.5) @ k_h.transpose(-1, -2)).softmax(dim=-1)  # b nh HW 1 P
    out = attn @ v_h  # b nh HW 1 C/nh
    return out.squeeze(3).permute(0, 1, 3, 2).reshape(b, c, ho, wo)


def layer_norm_proxy(x: Tensor, norm: torch.nn.LayerNorm) -> Tensor:
    """The official ``LayerNormProxy``: rearrange to channels-last, LayerNorm, back, contiguous."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def lda_aqu_module_official(module: torch.nn.Module, x: Tensor) -> Tensor:
    """The whole LDA-AQU module with the structure of the official ``LDA_AQU.forward`` (fpn_lau.py),
    computed from the parameters of an ``upsamplers`` LDA_AQU module (same names as the official
    ones): LayerNormProxy, the two 1x1 projections, bilinear upsampling of q, the offset network
    per group, ``tanh * range + base``, then the grid-image attention above."""
    b, c, h, w = x.shape
    ho, wo = h * module.scale, w * module.scale
    v = x
    xn = layer_norm_proxy(x, module.layer_norm.norm)
    q = F.conv2d(xn, module.proj_q.weight)
    k = F.conv2d(xn, module.proj_k.weight)
    q = F.interpolate(q, (ho, wo), mode="bilinear", align_corners=True)
    q_off = q.view(b * module.n_groups, -1, ho, wo)
    dw, norm, _, conv = module.conv_offset
    pred = F.conv2d(q_off, dw.weight, padding=1, groups=dw.groups)
    pred = F.gelu(layer_norm_proxy(pred, norm.norm))
    pred = F.conv2d(pred, conv.weight, conv.bias, padding=conv.padding).contiguous()
    offset = pred.tanh().mul(module.range_factor) + module.base_offset.to(x.dtype)
    table = module.relative_position_bias_table
    embedding = None if table is None else table.view(module.num_heads, module.k_u * module.k_u, -1)
    return sample_attention_official(q, k, v, offset.reshape(b, -1, ho, wo), embedding, module.n_groups,
                                     module.num_heads)
