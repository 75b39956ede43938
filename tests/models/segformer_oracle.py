"""SegFormer (mmseg MixVisionTransformer + SegformerHead) written longhand from an mmseg state dict.

Independent of lda_bench's modules: attention by explicit matrix products, norms by the
functional ops, float64. It follows mmseg's forward: overlapping patch embedding + LN (eps 1e-6),
pre-norm blocks with spatial-reduction attention and Mix-FFN, a LN per stage; the head's 1x1
conv + BN + ReLU per level, bilinear to stride 4, concat [4, 8, 16, 32], fusion conv + BN + ReLU,
conv_seg, and a bilinear resize to the input size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _conv_bn_relu(p: dict[str, Tensor], prefix: str, x: Tensor) -> Tensor:
    y = F.conv2d(x, p[f"{prefix}.conv.weight"])
    mean, var = p[f"{prefix}.bn.running_mean"], p[f"{prefix}.bn.running_var"]
    y = (y - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    y = y * p[f"{prefix}.bn.weight"].view(1, -1, 1, 1) + p[f"{prefix}.bn.bias"].view(1, -1, 1, 1)
    return torch.relu(y)


def _ln(p: dict[str, Tensor], prefix: str, t: Tensor) -> Tensor:
    return F.layer_norm(t, (t.shape[-1],), p[f"{prefix}.weight"], p[f"{prefix}.bias"], eps=1e-6)


def segformer_oracle(state: dict[str, Tensor], img: Tensor, heads=(1, 2, 5, 8), srs=(8, 4, 2, 1),
                     patches=(7, 3, 3, 3), strides=(4, 2, 2, 2), blocks=2) -> Tensor:
    p = {k: v.double() for k, v in state.items() if v.is_floating_point()}
    x = img.double()
    feats = []
    for s in range(4):
        pre = f"backbone.layers.{s}"
        x = F.conv2d(x, p[f"{pre}.0.projection.weight"], p[f"{pre}.0.projection.bias"],
                     stride=strides[s], padding=patches[s] // 2)
        b, c, h, w = x.shape
        t = _ln(p, f"{pre}.0.norm", x.flatten(2).transpose(1, 2))
        for j in range(blocks):
            blk = f"{pre}.1.{j}"
            y = _ln(p, f"{blk}.norm1", t)
            kv = y
            if srs[s] > 1:
                m = F.conv2d(y.transpose(1, 2).reshape(b, c, h, w), p[f"{blk}.attn.sr.weight"],
                             p[f"{blk}.attn.sr.bias"], stride=srs[s])
                kv = _ln(p, f"{blk}.attn.norm", m.flatten(2).transpose(1, 2))
            wq, wk, wv = p[f"{blk}.attn.attn.in_proj_weight"].chunk(3)
            bq, bk, bv = p[f"{blk}.attn.attn.in_proj_bias"].chunk(3)
            nh, d = heads[s], c // heads[s]
            q = (y @ wq.T + bq).view(b, -1, nh, d).transpose(1, 2)
            k = (kv @ wk.T + bk).view(b, -1, nh, d).transpose(1, 2)
            v = (kv @ wv.T + bv).view(b, -1, nh, d).transpose(1, 2)
            attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
            o = (attn @ v).transpose(1, 2).reshape(b, -1, c)
            t = t + o @ p[f"{blk}.attn.attn.out_proj.weight"].T + p[f"{blk}.attn.attn.out_proj.bias"]
            m = _ln(p, f"{blk}.norm2", t).transpose(1, 2).reshape(b, c, h, w)
            m = F.conv2d(m, p[f"{blk}.ffn.layers.0.weight"], p[f"{blk}.ffn.layers.0.bias"])
            m = F.conv2d(m, p[f"{blk}.ffn.layers.1.weight"], p[f"{blk}.ffn.layers.1.bias"], padding=1,
                         groups=m.shape[1])
            m = 0.5 * m * (1 + torch.erf(m / math.sqrt(2)))
            m = F.conv2d(m, p[f"{blk}.ffn.layers.4.weight"], p[f"{blk}.ffn.layers.4.bias"])
            t = t + m.flatten(2).transpose(1, 2)
        x = _ln(p, f"{pre}.2", t).transpose(1, 2).reshape(b, c, h, w)
        feats.append(x)
    emb = [_conv_bn_relu(p, f"decode_head.convs.{i}", f) for i, f in enumerate(feats)]
    size = emb[0].shape[2:]
    ups = [F.interpolate(e, size=size, mode="bilinear", align_corners=False) for e in emb]
    y = _conv_bn_relu(p, "decode_head.fusion_conv", torch.cat(ups, dim=1))
    y = F.conv2d(y, p["decode_head.conv_seg.weight"], p["decode_head.conv_seg.bias"])
    return F.interpolate(y, size=img.shape[2:], mode="bilinear", align_corners=False)
