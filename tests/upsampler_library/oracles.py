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


# --- guided upsamplers -------------------------------------------------------------------------


def nearest_up(x: Tensor, scale: int) -> Tensor:
    return x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)


def sapa_qk_oracle(q: Tensor, k: Tensor, kernel: int, scale: int) -> Tensor:
    """SAPA ``qk`` CUDA op by loops: window dot products, out-of-image keys score 0 (float64)."""
    q = q.double()
    k = k.double()
    b, d, h, w = k.shape
    r = kernel // 2
    out = torch.zeros(b, kernel * kernel, h * scale, w * scale, dtype=torch.float64)
    for p in range(h * scale):
        for qq in range(w * scale):
            for t in range(kernel * kernel):
                dy, dx = divmod(t, kernel)
                yy, xx = p // scale + dy - r, qq // scale + dx - r
                if 0 <= yy < h and 0 <= xx < w:
                    out[:, t, p, qq] = (q[:, :, p, qq] * k[:, :, yy, xx]).sum(1)
    return out


def sapa_oracle(q: Tensor, k: Tensor, v: Tensor, kernel: int, scale: int) -> Tensor:
    attn = torch.softmax(sapa_qk_oracle(q, k, kernel, scale), dim=1)
    return carafe_oracle(v, attn, kernel, scale)


def _cuda_bilinear(img: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """deformable_im2col_bilinear of the SAPA-D kernels: zero unless -1 < y < H and -1 < x < W."""
    _, h, w = img.shape
    inside = ((y > -1) & (y < h) & (x > -1) & (x < w)).to(img.dtype)
    return bilinear_gather(img, y, x) * inside


def deform_sapa_oracle(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor, num_point: int, groups: int,
                       scale: int) -> Tensor:
    """SAPA-D ``deform_qk`` + softmax over points + ``deform_av`` (float64)."""
    q, k, v, offsets = q.double(), k.double(), v.double(), offsets.double()
    b, d, h, w = k.shape
    c = v.shape[1]
    ho, wo = h * scale, w * scale
    dg, cg = d // groups, c // groups
    base_y = (torch.arange(ho) // scale).double().view(-1, 1).expand(ho, wo)
    base_x = (torch.arange(wo) // scale).double().view(1, -1).expand(ho, wo)
    out = torch.zeros(b, c, ho, wo, dtype=torch.float64)
    for bi in range(b):
        for g in range(groups):
            scores, values = [], []
            for n in range(num_point):
                ch = (g * num_point + n) * 2
                y = base_y + offsets[bi, ch + 1]
                x = base_x + offsets[bi, ch]
                ks = _cuda_bilinear(k[bi, g * dg:(g + 1) * dg], y, x)
                scores.append((q[bi, g * dg:(g + 1) * dg] * ks).sum(0))
                values.append(_cuda_bilinear(v[bi, g * cg:(g + 1) * cg], y, x))
            attn = torch.softmax(torch.stack(scores), dim=0)
            out[bi, g * cg:(g + 1) * cg] = sum(attn[n] * values[n] for n in range(num_point))
    return out


def _conv(x: Tensor, p: dict, name: str, **kw) -> Tensor:
    return F.conv2d(x, p[name + ".weight"], p.get(name + ".bias"), **kw)


def fade_oracle(p: dict, en: Tensor, de: Tensor, kernel: int, gate: bool, lite: bool, scale: int = 2) -> Tensor:
    """FADE_L2H / FADELite forward written from the official code (float64)."""
    p = {key: val.double() for key, val in p.items()}
    en, de = en.double(), de.double()
    groups = kernel * kernel if lite else 1
    enc = _conv(en, p, "ker_generator.compressor_en")
    dec = _conv(de, p, "ker_generator.compressor_de")
    w = p["ker_generator.content_encoder.weight"]
    pad = w.shape[-1] // 2
    logits = _conv(enc, p, "ker_generator.content_encoder", padding=pad, groups=groups) + nearest_up(
        _conv(dec, p, "ker_generator.content_encoder", padding=pad, groups=groups), scale)
    up = carafe_oracle(de, torch.softmax(logits, dim=1), kernel, scale)
    if not gate:
        return up
    g = torch.sigmoid(nearest_up(_conv(de, p, "gate_generator.conv"), scale))
    return g * en + (1 - g) * up


def a2u_oracle(p: dict, guide: Tensor, x: Tensor, k_up: int = 3) -> Tensor:
    """A2U kernel generation per sample, as the official InterChannelUpRaw loop, then carafe (float64)."""
    p = {key: val.double() for key, val in p.items()}
    guide, x = guide.double(), x.double()
    n, c, h, w = guide.shape
    kernels = []
    for i in range(n):
        g = guide[i:i + 1]
        u = _conv(F.adaptive_avg_pool2d(g, 6), p, "kernel_gen.bconv_U.1").view(1, 1, 6, 6)
        v = _conv(F.adaptive_avg_pool2d(g, 6), p, "kernel_gen.bconv_V.1").view(1, 1, 6, 6)
        lift = _conv(F.adaptive_avg_pool2d(g, 1), p, "kernel_gen.bconv_UP.1").view(-1, 1, 1, 1)
        out1 = F.conv2d(g[0].unsqueeze(1), u, stride=2, padding=2).view(1, c, h // 2, w // 2)
        out2 = F.conv2d(g[0].unsqueeze(1), v, stride=2, padding=2).view(1, c, h // 2, w // 2)
        out1 = F.leaky_relu(F.group_norm(out1, 32, p["kernel_gen.bnu.0.weight"], p["kernel_gen.bnu.0.bias"]))
        out2 = F.leaky_relu(F.group_norm(out2, 32, p["kernel_gen.bnv.0.weight"], p["kernel_gen.bnv.0.bias"]))
        aff = (out1 * out2).sum(1, keepdim=True) / math.sqrt(c)
        kernels.append(F.conv2d(aff, lift))
    ker = F.pixel_shuffle(torch.cat(kernels), 2)
    ker = torch.softmax(torch.sigmoid(ker), dim=1)
    return carafe_oracle(x, ker, k_up, 2)


def _hamming_normalise(logits: Tensor, window: Tensor, k: int) -> Tensor:
    n, _, h, w = logits.shape
    mask = torch.softmax(logits.view(n, 1, -1, h, w), dim=2).view(n, 1, k, k, h, w)
    mask = mask.permute(0, 1, 4, 5, 2, 3) * window.double().view(k, k)
    mask = mask / mask.sum(dim=(-1, -2), keepdim=True)
    return mask.reshape(n, 1, h, w, k * k).permute(0, 1, 4, 2, 3).reshape(n, -1, h, w)


def _cos_sim_unfold(x: Tensor) -> Tensor:
    """The official compute_similarity (k 3, dilation 2) through F.unfold."""
    b, c, h, w = x.shape
    unf = F.unfold(x, 3, padding=2, dilation=2).reshape(b, c, 9, h, w)
    sim = F.cosine_similarity(unf[:, :, 4:5], unf, dim=1)
    return torch.cat((sim[:, :4], sim[:, 5:]), dim=1)


def _border_bilinear(img: Tensor, gx: Tensor, gy: Tensor) -> Tensor:
    """grid_sample(bilinear, border, align_corners=False) of img (C x H x W) at normalised (gx, gy)."""
    _, h, w = img.shape
    x = (((gx + 1) * w - 1) / 2).clamp(0, w - 1)
    y = (((gy + 1) * h - 1) / 2).clamp(0, h - 1)
    return bilinear_gather(img, y, x)


def freqfusion_oracle(p: dict, hr: Tensor, lr: Tensor, groups: int = 4, lk: int = 5, hk: int = 3) -> Tensor:
    """FreqFusion (detection configuration) from the official code with zero-padded carafe (float64)."""
    p = {key: val.double() for key, val in p.items()}
    hr, lr = hr.double(), lr.double()
    win_lo, win_hi = p["hamming_lowpass"], p["hamming_highpass"]
    chr_ = _conv(hr, p, "hr_channel_compressor")
    clr = _conv(lr, p, "lr_channel_compressor")
    m_hr_hr = _conv(chr_, p, "content_encoder2", padding=1)
    chr_ = chr_ + chr_ - carafe_oracle(chr_, _hamming_normalise(m_hr_hr, win_hi, hk), hk, 1)
    m_lr_hr = _conv(chr_, p, "content_encoder", padding=1)
    init = _hamming_normalise(m_lr_hr, win_lo, lk)
    m_lr = m_lr_hr + carafe_oracle(_conv(clr, p, "content_encoder", padding=1), init, lk, 2)
    ker_lo = _hamming_normalise(m_lr, win_lo, lk)
    m_hr = m_hr_hr + carafe_oracle(_conv(clr, p, "content_encoder2", padding=1), ker_lo, lk, 2)
    lr_up = carafe_oracle(lr, ker_lo, lk, 2)
    hr_out = (hr - carafe_oracle(hr, _hamming_normalise(m_hr, win_hi, hk), hk, 1)) + hr
    # LocalSimGuidedSampler
    hn = F.group_norm(chr_, chr_.shape[1] // 8, p["dysampler.norm_hr.weight"], p["dysampler.norm_hr.bias"])
    ln = F.group_norm(clr, clr.shape[1] // 8, p["dysampler.norm_lr.weight"], p["dysampler.norm_lr.bias"])
    hs = torch.cat([hn, _cos_sim_unfold(hn)], 1)
    ls = torch.cat([ln, _cos_sim_unfold(ln)], 1)
    offset = (_conv(ls, p, "dysampler.offset", padding=1)
              + F.pixel_unshuffle(_conv(hs, p, "dysampler.hr_offset", padding=1), 2)) * torch.sigmoid(
        _conv(ls, p, "dysampler.direct_scale", padding=1)
        + F.pixel_unshuffle(_conv(hs, p, "dysampler.hr_direct_scale", padding=1), 2)) + p["dysampler.init_pos"]
    b, _, h, w = offset.shape
    c = lr_up.shape[1]
    cg = c // groups
    sampled = torch.zeros_like(lr_up)
    for bi in range(b):
        for g in range(groups):
            for i in range(2):
                for j in range(2):
                    ch = g * 4 + i * 2 + j
                    px = torch.arange(w, dtype=torch.float64).view(1, -1) + 0.5 + offset[bi, ch]
                    py = torch.arange(h, dtype=torch.float64).view(-1, 1) + 0.5 + offset[bi, groups * 4 + ch]
                    vals = _border_bilinear(lr_up[bi, g * cg:(g + 1) * cg], 2 * px / w - 1, 2 * py / h - 1)
                    sampled[bi, g * cg:(g + 1) * cg, i::2, j::2] = vals
    return hr_out + sampled
