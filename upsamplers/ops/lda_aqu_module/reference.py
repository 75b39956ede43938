"""The LDA-AQU module's forward in plain PyTorch: the oracle of the fused backends.

Exactly the official forward (duzw9311/LDA-AQU, fpn_lau.py, ``LDA_AQU.forward``; the paper, ACM MM
2024, Sec. 3), written as a function of the module's parameters, differentiable by autograd:

1. ``xn = LayerNorm_C(x)``; ``q0 = W_q xn``, ``k0 = W_k xn`` (bias-free 1x1 convolutions);
2. ``q`` = bilinear upsampling of ``q0`` to ``scale x`` (align_corners=True);
3. per offset group: depthwise 3x3 (no bias), LayerNorm over the group's channels, exact GELU, a
   k_e x k_e convolution to 2 k_u^2 channels; ``offsets = range * tanh(.) + base grid``;
4. the sampling attention of ``q``, ``k0`` and the raw ``x`` (``upsamplers.ops.sample_attention``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Weights:
    """The module's parameters, by role (the official names in the comments)."""

    ln_weight: Tensor  # layer_norm.norm.weight (C)
    ln_bias: Tensor  # layer_norm.norm.bias (C)
    q_weight: Tensor  # proj_q.weight (Ch x C x 1 x 1)
    k_weight: Tensor  # proj_k.weight (Ch x C x 1 x 1)
    dw_weight: Tensor  # conv_offset.0.weight (gc x 1 x 3 x 3)
    offset_ln_weight: Tensor  # conv_offset.1.norm.weight (gc)
    offset_ln_bias: Tensor  # conv_offset.1.norm.bias (gc)
    offset_weight: Tensor  # conv_offset.3.weight (2 P x gc x k_e x k_e)
    offset_bias: Tensor  # conv_offset.3.bias (2 P)
    embedding: Tensor | None  # relative_position_bias_table as heads x P x Ch/heads


@dataclass(frozen=True)
class Config:
    range_factor: float
    groups: int
    num_heads: int
    scale: int
    eps: float = 1e-5

    def points(self, w: Weights) -> int:
        return w.offset_weight.shape[0] // 2


def base_grid(points: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The undeformed k_u x k_u window in output pixels, flattened as (kh, kw, [dy, dx])."""
    k = math.isqrt(points)
    r = torch.arange(k, dtype=torch.float32, device=device) - (k - 1) / 2
    grid = torch.stack((r.view(k, 1).expand(k, k), r.view(1, k).expand(k, k)), dim=-1)
    return grid.reshape(-1).to(dtype)


def channel_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """LayerNorm over the channels of a B x C x H x W map (the official ``LayerNormProxy``)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), weight, bias, eps).permute(0, 3, 1, 2).contiguous()


def projections(x: Tensor, w: Weights, cfg: Config) -> tuple[Tensor, Tensor]:
    xn = channel_layer_norm(x, w.ln_weight, w.ln_bias, cfg.eps)
    return F.conv2d(xn, w.q_weight), F.conv2d(xn, w.k_weight)


def offset_network(q: Tensor, w: Weights, cfg: Config) -> Tensor:
    """Offsets (B x G*2P x Ho x Wo, base grid included) from the upsampled query."""
    b, ch, ho, wo = q.shape
    gc = ch // cfg.groups
    d = F.conv2d(q.reshape(b * cfg.groups, gc, ho, wo), w.dw_weight, padding=1, groups=gc)
    a = F.gelu(channel_layer_norm(d, w.offset_ln_weight, w.offset_ln_bias, cfg.eps))
    pred = F.conv2d(a, w.offset_weight, w.offset_bias, padding=w.offset_weight.shape[-1] // 2)
    base = base_grid(cfg.points(w), q.dtype, q.device).view(1, -1, 1, 1)
    return (pred.tanh() * cfg.range_factor + base).reshape(b, -1, ho, wo)


def upsample_query(q0: Tensor, scale: int) -> Tensor:
    return F.interpolate(q0, (q0.shape[2] * scale, q0.shape[3] * scale), mode="bilinear", align_corners=True)


def module_reference(x: Tensor, w: Weights, cfg: Config) -> Tensor:
    """The module's output (B x C x sH x sW, channels-last as the attention returns it)."""
    from ..sample_attention import sample_attention

    q0, k0 = projections(x, w, cfg)
    q = upsample_query(q0, cfg.scale)
    offsets = offset_network(q, w, cfg)
    return sample_attention(q, k0, x, offsets, w.embedding, cfg.groups, cfg.num_heads, "reference")
