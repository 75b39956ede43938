"""Independent, loop/gather-based re-implementations used as test oracles.

Nothing here imports from ``upsamplers``: these follow the official papers' code semantics written
out longhand in float64, so a shared bug cannot hide.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def bilinear_gather(img: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Sample img (C x H x W) at low-res pixel coordinates (y, x) with zero padding per corner."""
    c, h, w = img.shape
    y0 = torch.floor(y)
    x0 = torch.floor(x)
    ly = y - y0
    lx = x - x0
    out = torch.zeros((c,) + tuple(y.shape), dtype=img.dtype)
    for oy, wy in ((0, 1 - ly), (1, ly)):
        for ox, wx in ((0, 1 - lx), (1, lx)):
            yy = (y0 + oy).long()
            xx = (x0 + ox).long()
            valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            vals = img[:, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]
            out += vals * (wy * wx * valid).to(img.dtype)
    return out


def channel_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def upsample_align_corners(x: Tensor, ho: int, wo: int) -> Tensor:
    b, c, h, w = x.shape
    ys = torch.arange(ho, dtype=x.dtype) * ((h - 1) / (ho - 1) if ho > 1 else 0.0)
    xs = torch.arange(wo, dtype=x.dtype) * ((w - 1) / (wo - 1) if wo > 1 else 0.0)
    yy = ys.view(-1, 1).expand(ho, wo)
    xx = xs.view(1, -1).expand(ho, wo)
    return torch.stack([bilinear_gather(x[i], yy, xx) for i in range(b)])


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def lda_aqu_oracle(params: dict[str, Tensor], x: Tensor, *, reduction_factor=4, k_u=3, n_groups=2,
                   range_factor=11.0, num_heads=1, scale=2, deform=True) -> Tensor:
    """LDA-AQU forward from a state dict, in float64, pixel by pixel over the points."""
    p = {k: v.double() for k, v in params.items()}
    x = x.double()
    b, c, h, w = x.shape
    ho, wo = h * scale, w * scale
    hidden = c // reduction_factor
    gc = hidden // n_groups
    d = hidden // num_heads
    xn = channel_layer_norm(x, p["layer_norm.norm.weight"], p["layer_norm.norm.bias"])
    q0 = torch.einsum("oc,bchw->bohw", p["proj_q.weight"][:, :, 0, 0], xn)
    k0 = torch.einsum("oc,bchw->bohw", p["proj_k.weight"][:, :, 0, 0], xn)
    q = upsample_align_corners(q0, ho, wo)
    npts = k_u * k_u
    r = torch.arange(k_u, dtype=torch.float64) - (k_u - 1) / 2
    base_dy = r.repeat_interleave(k_u)  # point n = kh*k_u + kw
    base_dx = r.repeat(k_u)
    offs = torch.zeros(b, n_groups, npts, 2, ho, wo, dtype=torch.float64)
    offs[:, :, :, 0] = base_dy.view(1, 1, -1, 1, 1)
    offs[:, :, :, 1] = base_dx.view(1, 1, -1, 1, 1)
    if deform:
        for g in range(n_groups):
            qg = q[:, g * gc:(g + 1) * gc]
            t = F.conv2d(qg, p["conv_offset.0.weight"], padding=1, groups=gc)
            t = channel_layer_norm(t, p["conv_offset.1.norm.weight"], p["conv_offset.1.norm.bias"])
            t = gelu(t)
            ke = p["conv_offset.3.weight"].shape[-1]
            t = F.conv2d(t, p["conv_offset.3.weight"], p["conv_offset.3.bias"], padding=ke // 2)
            offs[:, g] += (torch.tanh(t) * range_factor).view(b, npts, 2, ho, wo)
    rows = torch.arange(ho, dtype=torch.float64).view(-1, 1).expand(ho, wo)
    cols = torch.arange(wo, dtype=torch.float64).view(1, -1).expand(ho, wo)
    sy = (h - 1) / (ho - 1)
    sx = (w - 1) / (wo - 1)
    table = p.get("relative_position_bias_table")
    out = torch.zeros(b, c, ho, wo, dtype=torch.float64)
    for bi in range(b):
        k_samples = torch.zeros(npts, hidden, ho, wo, dtype=torch.float64)
        v_samples = torch.zeros(npts, c, ho, wo, dtype=torch.float64)
        for g in range(n_groups):
            for n in range(npts):
                yy = (rows + offs[bi, g, n, 0]) * sy
                xx = (cols + offs[bi, g, n, 1]) * sx
                k_samples[n, g * gc:(g + 1) * gc] = bilinear_gather(k0[bi, g * gc:(g + 1) * gc], yy, xx)
                cv = c // n_groups
                v_samples[n, g * cv:(g + 1) * cv] = bilinear_gather(x[bi, g * cv:(g + 1) * cv], yy, xx)
        for hd in range(num_heads):
            ks = k_samples[:, hd * d:(hd + 1) * d]
            if table is not None:
                ks = ks + table[0, hd, 0].view(npts, d, 1, 1)
            qh = q[bi, hd * d:(hd + 1) * d]
            logits = (qh.unsqueeze(0) * ks).sum(1) / math.sqrt(d)  # npts x ho x wo
            logits = logits - logits.max(0, keepdim=True).values
            e = torch.exp(logits)
            attn = e / e.sum(0, keepdim=True)
            cv = c // num_heads
            out[bi, hd * cv:(hd + 1) * cv] = (attn.unsqueeze(1) * v_samples[:, hd * cv:(hd + 1) * cv]).sum(0)
    return out


def carafe_oracle(x: Tensor, kernels: Tensor, k: int, scale: int) -> Tensor:
    """mmcv carafe semantics by explicit loops (float64)."""
    x = x.double()
    kernels = kernels.double()
    b, c, h, w = x.shape
    groups = kernels.shape[1] // (k * k)
    r = k // 2
    out = torch.zeros(b, c, h * scale, w * scale, dtype=torch.float64)
    cg = c // groups
    for p in range(h * scale):
        for q in range(w * scale):
            sy, sx = p // scale, q // scale
            for t in range(k * k):
                dy, dx = divmod(t, k)
                yy, xx = sy + dy - r, sx + dx - r
                if 0 <= yy < h and 0 <= xx < w:
                    for g in range(groups):
                        out[:, g * cg:(g + 1) * cg, p, q] += (
                            kernels[:, g * k * k + t, p, q].view(b, 1) * x[:, g * cg:(g + 1) * cg, yy, xx]
                        )
    return out
