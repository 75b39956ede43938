"""The LDA-AQU module's forward for CUDA tensors: Triton kernels around cuBLAS and the attention.

* ``_ln_stats_kernel``: the per-pixel mean and 1/std of x over its channels (LayerNorm's
  statistics), so that LN's affine folds into the projections as on CPU (:mod:`.cpp`): the GEMM
  ``W diag(gamma) x`` runs in cuBLAS on the raw x and no normalised copy of x is written;
* ``_project_epilogue_kernel``: ``rstd * (y - mean * W' 1) + W beta`` in place, in fp32;
* ``_offset_net_kernel``: per tile of output pixels of one image and offset group, the bilinear
  upsampling of q (align_corners=True), the depthwise 3x3, LayerNorm over the group's channels,
  exact GELU (erf by Abramowitz & Stegun 7.1.26, error below 1.5e-7), the k_e x k_e convolution,
  ``range * tanh + base``; it writes the upsampled query and the offsets, the attention's inputs. A
  GELU row of the tile's k_e x k_e neighbourhood is recomputed per tap instead of being stored:
  on a GPU the recomputation is cheap and keeps the whole network in one kernel.

Then the attention's own Triton kernel (:mod:`upsamplers.ops.sample_attention.triton_kernels`).
fp32, fp16 and bf16 inputs; every accumulator is fp32. Under ``TRITON_INTERPRET=1`` the kernels
run on CPU tensors through the interpreter (tests use maps of a few pixels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..sample_attention import triton_kernels as attention_triton
from .reference import Config, Weights, base_grid

INTERPRET = attention_triton.INTERPRET
_GPU_BLOCK = 64


@triton.jit
def _ln_stats_kernel(x_ptr, mean_ptr, rstd_ptr, C, HW, eps, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(1)
    pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = pix < HW
    base = x_ptr + b * C * HW
    total = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        m = pmask[:, None] & (ch < C)[None, :]
        v = tl.load(base + ch[None, :] * HW + pix[:, None], mask=m, other=0.0).to(tl.float32)
        total += tl.sum(v, axis=1)
    mean = total / C
    sq = tl.zeros([BLOCK_P], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        ch = c0 + tl.arange(0, BLOCK_C)
        m = pmask[:, None] & (ch < C)[None, :]
        v = tl.load(base + ch[None, :] * HW + pix[:, None], mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, v - mean[:, None], 0.0)
        sq += tl.sum(d * d, axis=1)
    tl.store(mean_ptr + b * HW + pix, mean, mask=pmask)
    tl.store(rstd_ptr + b * HW + pix, 1.0 / tl.sqrt(sq / C + eps), mask=pmask)


@triton.jit
def _project_epilogue_kernel(y_ptr, mean_ptr, rstd_ptr, s_ptr, t_ptr, M, HW, BLOCK: tl.constexpr):
    row = tl.program_id(1)  # b * M + o
    b = row // M
    o = row % M
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pmask = pix < HW
    y = tl.load(y_ptr + row * HW + pix, mask=pmask, other=0.0)
    mean = tl.load(mean_ptr + b * HW + pix, mask=pmask, other=0.0)
    rstd = tl.load(rstd_ptr + b * HW + pix, mask=pmask, other=0.0)
    s = tl.load(s_ptr + o)
    t = tl.load(t_ptr + o)
    tl.store(y_ptr + row * HW + pix, rstd * (y - mean * s) + t, mask=pmask)


@triton.jit
def _upsampled_q(q0_ptr, qb, qc, py, px, valid, cmask, H, W, ry, rx):
    """q at high-resolution positions (py, px) [BLOCK] for channels qc [GC]: bilinear from q0
    (align_corners=True: source y = py * (H - 1) / (Ho - 1)); zero where not ``valid``."""
    sy = py.to(tl.float32) * ry
    sx = px.to(tl.float32) * rx
    y0 = tl.minimum(sy.to(tl.int32), H - 1)
    x0 = tl.minimum(sx.to(tl.int32), W - 1)
    y1 = tl.minimum(y0 + 1, H - 1)
    x1 = tl.minimum(x0 + 1, W - 1)
    wy = sy - y0.to(tl.float32)
    wx = sx - x0.to(tl.float32)
    m = valid[:, None] & cmask[None, :]
    chan = q0_ptr + qb + qc[None, :] * (H * W)
    v00 = tl.load(chan + (y0 * W + x0)[:, None], mask=m, other=0.0)
    v01 = tl.load(chan + (y0 * W + x1)[:, None], mask=m, other=0.0)
    v10 = tl.load(chan + (y1 * W + x0)[:, None], mask=m, other=0.0)
    v11 = tl.load(chan + (y1 * W + x1)[:, None], mask=m, other=0.0)
    top = (1.0 - wx)[:, None] * v00 + wx[:, None] * v01
    bottom = (1.0 - wx)[:, None] * v10 + wx[:, None] * v11
    return tl.where(m, (1.0 - wy)[:, None] * top + wy[:, None] * bottom, 0.0)


@triton.jit
def _gelu(x):
    # x/2 (1 + erf(x / sqrt 2)); erf by Abramowitz & Stegun 7.1.26, odd extension.
    z = tl.abs(x) * 0.7071067811865476
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t
    erf_abs = 1.0 - poly * tl.exp(-z * z)
    return 0.5 * x * (1.0 + tl.where(x < 0, -erf_abs, erf_abs))


@triton.jit
def _tanh(x):
    a = tl.minimum(tl.abs(x), 9.0)
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    a2 = a * a
    small = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0)))
    r = tl.where(a < 0.015625, small, big)
    return tl.where(x < 0, -r, r)


@triton.jit
def _offset_net_kernel(q0_ptr, q0_batch, q_ptr, off_ptr, dw_ptr, lnw_ptr, lnb_ptr, cw_ptr, cb_ptr, base_ptr,
                       H, W, Ho, Wo, ry, rx, rng, eps, G: tl.constexpr, GC: tl.constexpr, GC_PAD: tl.constexpr,
                       OUT: tl.constexpr, OUT_PAD: tl.constexpr, KE: tl.constexpr, BLOCK: tl.constexpr):
    bg = tl.program_id(1)
    b = bg // G
    g = bg % G
    HoWo = Ho * Wo
    pix = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pmask = pix < HoWo
    oy = pix // Wo
    ox = pix % Wo
    qc = g * GC + tl.arange(0, GC_PAD)
    cmask = tl.arange(0, GC_PAD) < GC
    cidx = tl.arange(0, GC_PAD)
    qb = b * q0_batch
    # The upsampled query at the tile's own pixels: an output of its own (the attention's query).
    q_here = _upsampled_q(q0_ptr, qb, qc, oy, ox, pmask, cmask, H, W, ry, rx)
    tl.store(q_ptr + (b * G * GC + qc[None, :]) * HoWo + pix[:, None], q_here.to(q_ptr.dtype.element_ty),
             mask=pmask[:, None] & cmask[None, :])
    lnw = tl.load(lnw_ptr + cidx, mask=cmask, other=0.0)
    lnb = tl.load(lnb_ptr + cidx, mask=cmask, other=0.0)
    oidx = tl.arange(0, OUT_PAD)
    omask = oidx < OUT
    pred = tl.zeros([BLOCK, OUT_PAD], dtype=tl.float32) + tl.load(cb_ptr + oidx, mask=omask, other=0.0)[None, :]
    PE: tl.constexpr = KE // 2
    for ni in tl.static_range(KE):
        for nj in tl.static_range(KE):
            # The GELU row at the conv tap (oy + ni - PE, ox + nj - PE), zero outside the map.
            ay = oy + (ni - PE)
            ax = ox + (nj - PE)
            a_valid = pmask & (ay >= 0) & (ay < Ho) & (ax >= 0) & (ax < Wo)
            d = tl.zeros([BLOCK, GC_PAD], dtype=tl.float32)
            for di in tl.static_range(3):
                for dj in tl.static_range(3):
                    py = ay + (di - 1)
                    px = ax + (dj - 1)
                    q_valid = a_valid & (py >= 0) & (py < Ho) & (px >= 0) & (px < Wo)
                    wdw = tl.load(dw_ptr + cidx * 9 + di * 3 + dj, mask=cmask, other=0.0)
                    d += wdw[None, :] * _upsampled_q(q0_ptr, qb, qc, py, px, q_valid, cmask, H, W, ry, rx)
            mean = tl.sum(d, axis=1) / GC
            dc = tl.where(cmask[None, :], d - mean[:, None], 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(dc * dc, axis=1) / GC + eps)
            a = _gelu(dc * rstd[:, None] * lnw[None, :] + lnb[None, :])
            a = tl.where(a_valid[:, None] & cmask[None, :], a, 0.0)
            # cw is (KE, KE, GC, O): this tap's GC x O matrix.
            wmat = tl.load(cw_ptr + ((ni * KE + nj) * GC + cidx[:, None]) * OUT + oidx[None, :],
                           mask=cmask[:, None] & omask[None, :], other=0.0)
            pred += tl.sum(a[:, :, None] * wmat[None, :, :], axis=1)
    base = tl.load(base_ptr + oidx, mask=omask, other=0.0)
    offsets = _tanh(pred) * rng + base[None, :]
    tl.store(off_ptr + ((b * G + g) * OUT + oidx[None, :]) * HoWo + pix[:, None], offsets.to(off_ptr.dtype.element_ty),
             mask=pmask[:, None] & omask[None, :])


def _block(pixels: int, gpu_block: int) -> int:
    return attention_triton.interpreter_block(pixels) if INTERPRET else gpu_block


def project(x: Tensor, w: Weights, cfg: Config) -> tuple[Tensor, Tensor]:
    """q0 and k0 (fp32, B x Ch x H x W) without a normalised copy of x."""
    b, c, h, wd = x.shape
    hw = h * wd
    ch = w.q_weight.shape[0]
    xc = x.contiguous()
    mean = torch.empty((b, hw), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_p = _block(hw, 128)
    attention_triton_grid = (triton.cdiv(hw, block_p), b)
    _ln_stats_kernel[attention_triton_grid](xc, mean, rstd, c, hw, cfg.eps, BLOCK_P=block_p,
                                            BLOCK_C=min(64, attention_triton.pad_pow2(c)))
    wcat = torch.cat((w.q_weight.reshape(ch, c), w.k_weight.reshape(ch, c))).float()
    folded = wcat * w.ln_weight.float()
    y = torch.matmul(folded, xc.reshape(b, c, hw).float()).contiguous()  # cuBLAS, fp32
    block = _block(hw, 256)
    _project_epilogue_kernel[(triton.cdiv(hw, block), b * 2 * ch)](
        y, mean, rstd, folded.sum(1).contiguous(), (wcat @ w.ln_bias.float()).contiguous(), 2 * ch, hw, BLOCK=block)
    y = y.view(b, 2 * ch, h, wd)
    return y[:, :ch], y[:, ch:]


def offset_net(q0: Tensor, w: Weights, cfg: Config, out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The upsampled query and the offsets (``out_dtype``, NCHW) from q0 (fp32, dense rows)."""
    b, ch, h, wd = q0.shape
    ho, wo = h * cfg.scale, wd * cfg.scale
    gc = ch // cfg.groups
    out_channels, ke = w.offset_weight.shape[0], w.offset_weight.shape[-1]
    q = torch.empty((b, ch, ho, wo), device=q0.device, dtype=out_dtype)
    offsets = torch.empty((b, cfg.groups * out_channels, ho, wo), device=q0.device, dtype=out_dtype)
    cw = w.offset_weight.float().permute(2, 3, 1, 0).contiguous()  # KE x KE x GC x O
    ry = (h - 1) / (ho - 1) if ho > 1 else 0.0
    rx = (wd - 1) / (wo - 1) if wo > 1 else 0.0
    pixels = ho * wo
    block = _block(pixels, _GPU_BLOCK)
    _offset_net_kernel[(triton.cdiv(pixels, block), b * cfg.groups)](
        q0, q0.stride(0), q, offsets, w.dw_weight.float().contiguous(), w.offset_ln_weight.float().contiguous(),
        w.offset_ln_bias.float().contiguous(), cw, w.offset_bias.float().contiguous(),
        base_grid(out_channels // 2, torch.float32, q0.device), h, wd, ho, wo, float(ry), float(rx),
        float(cfg.range_factor), float(cfg.eps), G=cfg.groups, GC=gc, GC_PAD=attention_triton.pad_pow2(gc),
        OUT=out_channels, OUT_PAD=attention_triton.pad_pow2(out_channels), KE=ke, BLOCK=block)
    return q, offsets


def forward(x: Tensor, w: Weights, cfg: Config) -> Tensor:
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 before the import)")
    with attention_triton.on_device(x.device):
        q0, k0 = project(x, w, cfg)
        q, offsets = offset_net(q0, w, cfg, x.dtype)
        emb = None if w.embedding is None else w.embedding.to(x.dtype)
        return attention_triton.forward(q, k0.to(x.dtype), x, offsets, emb, cfg.groups, cfg.num_heads)
