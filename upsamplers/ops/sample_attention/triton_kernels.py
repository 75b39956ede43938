"""The ``triton`` backend: Triton kernels of LDA-AQU's sampling attention, forward and backward.

One program handles a tile of BLOCK output pixels of one image, all channels:

* forward: for every group and point, gather the four key corners (channels-last rows, so each
  corner is a contiguous run of channels), add the embedding, reduce q.k per head into a
  [BLOCK, heads*P] logit tile; softmax in registers; then gather the value corners and accumulate
  the softmax-weighted samples per group into a [BLOCK, C/G] tile written straight to the
  channels-last output (the op's layout). The group and point loops run at run time: unrolled,
  the compiled kernels were megabytes of PTX.
* backward: recompute the logits and softmax (nothing P x C-sized was saved); a value pass gives
  dL/dattn, the value part of the position gradient (reduced over channels in registers) and the
  value gradient, scattered with fp32 atomics; a key pass gives the query gradient, the key part of
  the position gradient, the key gradient (fp32 atomics) and per-program partial sums of the
  embedding gradient, which torch reduces (deterministic and cheap).

fp32, fp16 and bf16 inputs are supported; arithmetic and all accumulators are fp32. The
position arithmetic follows the reference's float32 operations (with IEEE division) so that
samples land on the same corners.

Under ``TRITON_INTERPRET=1`` (read when this module is imported) the kernels run on CPU tensors
through the interpreter, with one fixed configuration and a pixel tile that covers the whole map
(about 0.6 s per program instance: tests use tiny maps). On CUDA the tile size and warp count are
autotuned per shape; the atomic accumulators are reset between tuning runs.

The atomics make the backward non-deterministic in the last bits; under
``torch.use_deterministic_algorithms(True)`` it raises the usual PyTorch error.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
import triton
import triton.language as tl
from torch import Tensor

from .layouts import nchw_or_channels_last

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _corners(off_ptr, pix, oy, ox, pmask, gp, HoWo, H, W, denom_y, denom_x, unnorm_y, unnorm_x):
    """Bilinear corners of point gp (= group * P + point) for the pixels of the tile.

    Returns the flattened low-res index (within the image) of the top-left corner, the four
    corner weights and masks (zero padding per corner), and the fractional distances n, s, w, e
    that the position derivatives need.
    """
    base = off_ptr + (2 * gp) * HoWo + pix
    dy = tl.load(base, mask=pmask, other=0.0).to(tl.float32)
    dx = tl.load(base + HoWo, mask=pmask, other=0.0).to(tl.float32)
    # The reference's float ops in its order: 2 * y / (Ho - 1) - 1, then (g + 1) * (H - 1) / 2.
    gy = tl.math.div_rn(2.0 * (dy + oy.to(tl.float32)), denom_y) - 1.0
    gx = tl.math.div_rn(2.0 * (dx + ox.to(tl.float32)), denom_x) - 1.0
    iy = (gy + 1.0) * unnorm_y
    ix = (gx + 1.0) * unnorm_x
    # Points wholly outside the map (NaN included) get no corners; this keeps the casts in range.
    inside = pmask & (iy >= -1.0) & (iy < H) & (ix >= -1.0) & (ix < W)
    iy = tl.where(inside, iy, 0.0)
    ix = tl.where(inside, ix, 0.0)
    fy = tl.floor(iy)
    fx = tl.floor(ix)
    y0 = fy.to(tl.int32)
    x0 = fx.to(tl.int32)
    n = iy - fy
    s = 1.0 - n
    w = ix - fx
    e = 1.0 - w
    my0 = inside & (y0 >= 0)
    my1 = inside & (y0 + 1 < H)
    mx0 = x0 >= 0
    mx1 = x0 + 1 < W
    idx = y0 * W + x0
    return idx, s * e, s * w, n * e, n * w, my0 & mx0, my0 & mx1, my1 & mx0, my1 & mx1, n, s, w, e


@triton.jit
def _load_corners(base_ptr, b, idx, ch, cmask, m00, m01, m10, m11, H, W, CS: tl.constexpr):
    """The four corner rows [BLOCK, channels] of a channels-last map with CS channels (fp32, zero
    outside the map) and their masks."""
    ptr = base_ptr + ((b * H * W + idx).to(tl.int64) * CS)[:, None] + ch[None, :]
    c00 = m00[:, None] & cmask[None, :]
    c01 = m01[:, None] & cmask[None, :]
    c10 = m10[:, None] & cmask[None, :]
    c11 = m11[:, None] & cmask[None, :]
    v00 = tl.load(ptr, mask=c00, other=0.0).to(tl.float32)
    v01 = tl.load(ptr + CS, mask=c01, other=0.0).to(tl.float32)
    v10 = tl.load(ptr + W * CS, mask=c10, other=0.0).to(tl.float32)
    v11 = tl.load(ptr + W * CS + CS, mask=c11, other=0.0).to(tl.float32)
    return v00, v01, v10, v11, c00, c01, c10, c11


@triton.jit
def _scatter_corners(base_ptr, b, idx, ch, val, w00, w01, w10, w11, c00, c01, c10, c11, H, W, CS: tl.constexpr):
    """Add val times each corner's bilinear weight into an fp32 channels-last accumulator."""
    ptr = base_ptr + ((b * H * W + idx).to(tl.int64) * CS)[:, None] + ch[None, :]
    tl.atomic_add(ptr, w00[:, None] * val, mask=c00, sem="relaxed")
    tl.atomic_add(ptr + CS, w01[:, None] * val, mask=c01, sem="relaxed")
    tl.atomic_add(ptr + W * CS, w10[:, None] * val, mask=c10, sem="relaxed")
    tl.atomic_add(ptr + W * CS + CS, w11[:, None] * val, mask=c11, sem="relaxed")


@triton.jit
def _logits(q_ptr, k_ptr, off_ptr, emb_ptr, b, pix, oy, ox, pmask, HoWo, H, W,
            denom_y, denom_x, unnorm_y, unnorm_x, scale,
            CH: tl.constexpr, G: tl.constexpr, P: tl.constexpr, NH: tl.constexpr,
            KG: tl.constexpr, KG_PAD: tl.constexpr, HP_PAD: tl.constexpr,
            HAS_EMB: tl.constexpr, BLOCK: tl.constexpr):
    """Softmax weights [BLOCK, HP_PAD] (column h * P + p; padding columns are 0)."""
    cols = tl.arange(0, HP_PAD)
    kc = tl.arange(0, KG_PAD)
    kmask = kc < KG
    logits = tl.zeros([BLOCK, HP_PAD], dtype=tl.float32)
    for g in range(G):
        ch = g * KG + kc
        qm = pmask[:, None] & kmask[None, :]
        q = tl.load(q_ptr + (b * CH + ch).to(tl.int64)[None, :] * HoWo + pix[:, None], mask=qm,
                    other=0.0).to(tl.float32)
        head = ch // (CH // NH)
        for p in range(P):
            idx, w00, w01, w10, w11, m00, m01, m10, m11, n, s, w, e = _corners(
                off_ptr, pix, oy, ox, pmask, g * P + p, HoWo, H, W, denom_y, denom_x, unnorm_y, unnorm_x)
            k00, k01, k10, k11, c00, c01, c10, c11 = _load_corners(k_ptr, b, idx, ch, kmask, m00, m01, m10, m11,
                                                                   H, W, CH)
            ks = w00[:, None] * k00 + w01[:, None] * k01 + w10[:, None] * k10 + w11[:, None] * k11
            if HAS_EMB:
                ks += tl.load(emb_ptr + p * CH + ch, mask=kmask, other=0.0).to(tl.float32)[None, :]
            prod = q * ks
            for h in tl.static_range(NH):
                part = tl.sum(tl.where((head == h)[None, :], prod, 0.0), axis=1)
                logits += tl.where((cols == h * P + p)[None, :], part[:, None], 0.0)
    # One softmax per head over its P columns.
    head_of_col = cols // P
    valid = cols < NH * P
    x = tl.where(valid[None, :], logits * scale, float("-inf"))
    m = tl.zeros([BLOCK, HP_PAD], dtype=tl.float32)
    for h in tl.static_range(NH):
        sel = (head_of_col == h)[None, :] & valid[None, :]
        mh = tl.max(tl.where(sel, x, float("-inf")), axis=1)
        m = tl.where(sel, mh[:, None], m)
    ex = tl.where(valid[None, :], tl.exp(x - m), 0.0)
    den = tl.full([BLOCK, HP_PAD], 1.0, dtype=tl.float32)
    for h in tl.static_range(NH):
        sel = (head_of_col == h)[None, :] & valid[None, :]
        sh = tl.sum(tl.where(sel, ex, 0.0), axis=1)
        den = tl.where(sel, sh[:, None], den)
    return ex / den


@triton.jit
def _tile_attention(q_ptr, k_ptr, off_ptr, emb_ptr, HoWo, Wo, H, W, denom_y, denom_x, unnorm_y, unnorm_x, scale,
                    CH: tl.constexpr, G: tl.constexpr, P: tl.constexpr, NH: tl.constexpr,
                    KG: tl.constexpr, KG_PAD: tl.constexpr, HP_PAD: tl.constexpr,
                    HAS_EMB: tl.constexpr, BLOCK: tl.constexpr):
    """This program's image, pixel tile, pixel coordinates, offsets of the image and softmax."""
    b = tl.program_id(1)
    tile = tl.program_id(0)
    pix = tile * BLOCK + tl.arange(0, BLOCK)
    pmask = pix < HoWo
    oy = pix // Wo
    ox = pix % Wo
    off_b = off_ptr + b.to(tl.int64) * (G * P * 2) * HoWo
    attn = _logits(q_ptr, k_ptr, off_b, emb_ptr, b, pix, oy, ox, pmask, HoWo, H, W,
                   denom_y, denom_x, unnorm_y, unnorm_x, scale,
                   CH, G, P, NH, KG, KG_PAD, HP_PAD, HAS_EMB, BLOCK)
    return b, tile, pix, pmask, oy, ox, off_b, attn


@triton.jit
def _column(tile, cols, j):
    """Column j of a [BLOCK, N] tile as a [BLOCK] vector."""
    return tl.sum(tl.where((cols == j)[None, :], tile, 0.0), axis=1)


@triton.jit
def _per_channel(tile, cols, head, p, P: tl.constexpr, NH: tl.constexpr):
    """[BLOCK, channels] tile holding column head(c) * P + p of `tile` for every channel c."""
    out = tl.zeros([tile.shape[0], head.shape[0]], dtype=tl.float32)
    for h in tl.static_range(NH):
        out += tl.where((head == h)[None, :], _column(tile, cols, h * P + p)[:, None], 0.0)
    return out


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, off_ptr, emb_ptr, out_ptr, out_sb, out_sc, out_sp,
                HoWo, Wo, H, W, denom_y, denom_x, unnorm_y, unnorm_x, scale,
                C: tl.constexpr, CH: tl.constexpr, G: tl.constexpr, P: tl.constexpr, NH: tl.constexpr,
                KG: tl.constexpr, KG_PAD: tl.constexpr, CG: tl.constexpr, CG_PAD: tl.constexpr,
                HP_PAD: tl.constexpr, HAS_EMB: tl.constexpr, BLOCK: tl.constexpr):
    b, tile, pix, pmask, oy, ox, off_b, attn = _tile_attention(
        q_ptr, k_ptr, off_ptr, emb_ptr, HoWo, Wo, H, W, denom_y, denom_x, unnorm_y, unnorm_x, scale,
        CH, G, P, NH, KG, KG_PAD, HP_PAD, HAS_EMB, BLOCK)
    cols = tl.arange(0, HP_PAD)
    vc = tl.arange(0, CG_PAD)
    vmask = vc < CG
    for g in range(G):
        ch = g * CG + vc
        head = ch // (C // NH)
        acc = tl.zeros([BLOCK, CG_PAD], dtype=tl.float32)
        for p in range(P):
            idx, w00, w01, w10, w11, m00, m01, m10, m11, n, s, w, e = _corners(
                off_b, pix, oy, ox, pmask, g * P + p, HoWo, H, W, denom_y, denom_x, unnorm_y, unnorm_x)
            v00, v01, v10, v11, c00, c01, c10, c11 = _load_corners(v_ptr, b, idx, ch, vmask, m00, m01, m10, m11,
                                                                   H, W, C)
            vs = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            acc += _per_channel(attn, cols, head, p, P, NH) * vs
        optr = (out_ptr + b.to(tl.int64) * out_sb + ch.to(tl.int64)[None, :] * out_sc
                + pix.to(tl.int64)[:, None] * out_sp)
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=pmask[:, None] & vmask[None, :])


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, v_ptr, off_ptr, emb_ptr, gout_ptr, gout_sb, gout_sc, gout_sp,
                dq_ptr, dk_ptr, dv_ptr, doff_ptr, demb_ptr,
                HoWo, Wo, H, W, denom_y, denom_x, unnorm_y, unnorm_x, scale, mult_y, mult_x,
                C: tl.constexpr, CH: tl.constexpr, G: tl.constexpr, P: tl.constexpr, NH: tl.constexpr,
                KG: tl.constexpr, KG_PAD: tl.constexpr, CG: tl.constexpr, CG_PAD: tl.constexpr,
                HP_PAD: tl.constexpr, GP_PAD: tl.constexpr, HAS_EMB: tl.constexpr, BLOCK: tl.constexpr):
    b, tile, pix, pmask, oy, ox, off_b, attn = _tile_attention(
        q_ptr, k_ptr, off_ptr, emb_ptr, HoWo, Wo, H, W, denom_y, denom_x, unnorm_y, unnorm_x, scale,
        CH, G, P, NH, KG, KG_PAD, HP_PAD, HAS_EMB, BLOCK)
    cols = tl.arange(0, HP_PAD)
    gcols = tl.arange(0, GP_PAD)

    # Value pass: dL/dattn (dw), the value term of the position gradient, value-gradient scatter.
    vc = tl.arange(0, CG_PAD)
    vmask = vc < CG
    dw = tl.zeros([BLOCK, HP_PAD], dtype=tl.float32)
    gy_v = tl.zeros([BLOCK, GP_PAD], dtype=tl.float32)
    gx_v = tl.zeros([BLOCK, GP_PAD], dtype=tl.float32)
    for g in range(G):
        ch = g * CG + vc
        head = ch // (C // NH)
        cm = pmask[:, None] & vmask[None, :]
        gptr = (gout_ptr + b.to(tl.int64) * gout_sb + ch.to(tl.int64)[None, :] * gout_sc
                + pix.to(tl.int64)[:, None] * gout_sp)
        dout = tl.load(gptr, mask=cm, other=0.0).to(tl.float32)
        for p in range(P):
            idx, w00, w01, w10, w11, m00, m01, m10, m11, n, s, w, e = _corners(
                off_b, pix, oy, ox, pmask, g * P + p, HoWo, H, W, denom_y, denom_x, unnorm_y, unnorm_x)
            ad = _per_channel(attn, cols, head, p, P, NH) * dout
            v00, v01, v10, v11, c00, c01, c10, c11 = _load_corners(v_ptr, b, idx, ch, vmask, m00, m01, m10, m11,
                                                                   H, W, C)
            vs = w00[:, None] * v00 + w01[:, None] * v01 + w10[:, None] * v10 + w11[:, None] * v11
            u = dout * vs
            for h in tl.static_range(NH):
                part = tl.sum(tl.where((head == h)[None, :], u, 0.0), axis=1)
                dw += tl.where((cols == h * P + p)[None, :], part[:, None], 0.0)
            # d(sample)/dy = (1-lx)(v10 - v00) + lx(v11 - v01); /dx likewise (out-of-map corners are 0).
            ty = tl.sum(ad * (e[:, None] * (v10 - v00) + w[:, None] * (v11 - v01)), axis=1)
            tx = tl.sum(ad * (s[:, None] * (v01 - v00) + n[:, None] * (v11 - v10)), axis=1)
            gy_v += tl.where((gcols == g * P + p)[None, :], ty[:, None], 0.0)
            gx_v += tl.where((gcols == g * P + p)[None, :], tx[:, None], 0.0)
            _scatter_corners(dv_ptr, b, idx, ch, ad, w00, w01, w10, w11, c00, c01, c10, c11, H, W, C)

    # Softmax backward, per head: dlogit = attn * (dw - sum_p attn * dw), times the logit scale.
    head_of_col = cols // P
    valid = cols < NH * P
    delta = tl.zeros([BLOCK, HP_PAD], dtype=tl.float32)
    for h in tl.static_range(NH):
        sel = (head_of_col == h)[None, :] & valid[None, :]
        dh = tl.sum(tl.where(sel, attn * dw, 0.0), axis=1)
        delta = tl.where(sel, dh[:, None], delta)
    dl = tl.where(valid[None, :], scale * attn * (dw - delta), 0.0)

    # Key pass: query and embedding gradients, key term of the position gradient, key scatter.
    kc = tl.arange(0, KG_PAD)
    kmask = kc < KG
    for g in range(G):
        ch = g * KG + kc
        head = ch // (CH // NH)
        qm = pmask[:, None] & kmask[None, :]
        qoff = (b * CH + ch).to(tl.int64)[None, :] * HoWo + pix[:, None]
        q = tl.load(q_ptr + qoff, mask=qm, other=0.0).to(tl.float32)
        dq = tl.zeros([BLOCK, KG_PAD], dtype=tl.float32)
        for p in range(P):
            idx, w00, w01, w10, w11, m00, m01, m10, m11, n, s, w, e = _corners(
                off_b, pix, oy, ox, pmask, g * P + p, HoWo, H, W, denom_y, denom_x, unnorm_y, unnorm_x)
            sd = _per_channel(dl, cols, head, p, P, NH)
            sq = sd * q
            k00, k01, k10, k11, c00, c01, c10, c11 = _load_corners(k_ptr, b, idx, ch, kmask, m00, m01, m10, m11,
                                                                   H, W, CH)
            ks = w00[:, None] * k00 + w01[:, None] * k01 + w10[:, None] * k10 + w11[:, None] * k11
            if HAS_EMB:
                ks += tl.load(emb_ptr + p * CH + ch, mask=kmask, other=0.0).to(tl.float32)[None, :]
                part = tl.sum(sq, axis=0)  # this program's share of d(embedding)[p, ch]
                tl.store(demb_ptr + (tile * tl.num_programs(1) + b).to(tl.int64) * (P * CH) + p * CH + ch,
                         part, mask=kmask)
            dq += sd * ks
            ty = tl.sum(sq * (e[:, None] * (k10 - k00) + w[:, None] * (k11 - k01)), axis=1)
            tx = tl.sum(sq * (s[:, None] * (k01 - k00) + n[:, None] * (k11 - k10)), axis=1)
            gp = g * P + p
            gy = ty + _column(gy_v, gcols, gp)
            gx = tx + _column(gx_v, gcols, gp)
            optr = doff_ptr + (b * (G * P * 2) + 2 * gp).to(tl.int64) * HoWo + pix
            tl.store(optr, gy * mult_y, mask=pmask)
            tl.store(optr + HoWo, gx * mult_x, mask=pmask)
            _scatter_corners(dk_ptr, b, idx, ch, sq, w00, w01, w10, w11, c00, c01, c10, c11, H, W, CH)
        tl.store(dq_ptr + qoff, dq, mask=qm)


# Compiled-GPU tile sizes to try. Bigger tiles amortise the per-point work over more pixels but
# hold [BLOCK, C/G] fp32 tiles in registers. Few configurations: each one is a compilation.
_GPU_CONFIGS = [
    triton.Config({"BLOCK": block}, num_warps=warps)
    for block in (32, 64)
    for warps in (4, 8)
]
_TUNE_KEY = ["C", "CH", "G", "P", "NH", "HAS_EMB", "HoWo", "W"]
_fwd_tuned = triton.autotune(configs=_GPU_CONFIGS, key=_TUNE_KEY)(_fwd_kernel)
# The backward accumulates with atomics: the tuner must zero those buffers before every trial.
_bwd_tuned = triton.autotune(configs=_GPU_CONFIGS, key=_TUNE_KEY,
                             reset_to_zero=["dk_ptr", "dv_ptr", "demb_ptr"])(_bwd_kernel)
_MIN_GPU_BLOCK = min(c.kwargs["BLOCK"] for c in _GPU_CONFIGS)


def _alert_not_deterministic(caller: str) -> None:
    """PyTorch's reaction to a non-deterministic op under ``torch.use_deterministic_algorithms``.

    Atomic float adds make the key/value gradients depend on the order in which programs run.
    Same messages as torch's own alert (an error, or a warning with ``warn_only=True``).
    """
    if not torch.are_deterministic_algorithms_enabled():
        return
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(
            f"{caller} does not have a deterministic implementation, but you set "
            "'torch.use_deterministic_algorithms(True, warn_only=True)'.",
            stacklevel=3,
        )
        return
    raise RuntimeError(
        f"{caller} does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation, "
        "or you can use the 'warn_only=True' option, if that's acceptable for your application. The 'cpp' "
        "and 'reference' backends are deterministic."
    )


def on_device(device: torch.device):
    # Triton launches on the current CUDA device: make it the tensors' one.
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def interpreter_block(pixels: int) -> int:
    # One program instance costs about 0.6 s in the interpreter whatever its size: cover the map
    # with as few as possible (the whole map up to 1024 pixels).
    return min(1024, triton.next_power_of_2(pixels))


def _pixel_strides(t: Tensor) -> tuple[int, int, int]:
    """Strides of a B x C x Ho x Wo tensor, NCHW or channels-last, over (batch, channel, pixel y*Wo + x)."""
    sb, sc, _, sx = t.stride()
    return sb, sc, sx


def pad_pow2(n: int) -> int:
    return max(2, triton.next_power_of_2(n))


def _meta(query: Tensor, value: Tensor, offsets: Tensor, groups: int, num_heads: int, embedding: Tensor | None):
    b, ch, ho, wo = query.shape
    _, c, h, w = value.shape
    points = offsets.shape[1] // (2 * groups)
    scalars = dict(
        HoWo=ho * wo, Wo=wo, H=h, W=w,
        # Python floats are passed as fp32 kernel arguments; the values are exactly representable.
        denom_y=float(ho - 1), denom_x=float(wo - 1),
        unnorm_y=float(torch.tensor((h - 1) / 2, dtype=torch.float32)),
        unnorm_x=float(torch.tensor((w - 1) / 2, dtype=torch.float32)),
        scale=float(ch // num_heads) ** -0.5,
    )
    consts = dict(C=c, CH=ch, G=groups, P=points, NH=num_heads, KG=ch // groups, KG_PAD=pad_pow2(ch // groups),
                  CG=c // groups, CG_PAD=pad_pow2(c // groups), HP_PAD=pad_pow2(num_heads * points),
                  HAS_EMB=embedding is not None)
    return b, points, scalars, consts


def _prepare(query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None):
    if query.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 before the import)")
    q = query.contiguous()
    k = key.permute(0, 2, 3, 1).contiguous()  # channels-last: one corner = one contiguous row
    v = value.permute(0, 2, 3, 1).contiguous()
    off = offsets.contiguous()
    emb = q.new_zeros(1)  # a valid pointer when there is no embedding (never read)
    if embedding is not None:
        emb = embedding.permute(1, 0, 2).reshape(embedding.shape[1], -1).contiguous()
    return q, k, v, off, emb


def forward(query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None, groups: int,
            num_heads: int) -> Tensor:
    """Forward of :func:`upsamplers.ops.sample_attention` with the Triton kernel."""
    q, k, v, off, emb = _prepare(query, key, value, offsets, embedding)
    b, _, scalars, consts = _meta(query, value, offsets, groups, num_heads, embedding)
    # Channels-last, the op's output layout (upsamplers.ops.sample_attention.op).
    out = torch.empty((b, consts["C"], query.shape[2], query.shape[3]), device=query.device, dtype=query.dtype,
                      memory_format=torch.channels_last)
    strides = _pixel_strides(out)
    pixels = scalars["HoWo"]
    with on_device(query.device):
        if INTERPRET:
            block = interpreter_block(pixels)
            _fwd_kernel[(triton.cdiv(pixels, block), b)](q, k, v, off, emb, out, *strides, **scalars, **consts,
                                                         BLOCK=block)
        else:
            grid = lambda meta: (triton.cdiv(pixels, meta["BLOCK"]), b)  # noqa: E731
            _fwd_tuned[grid](q, k, v, off, emb, out, *strides, **scalars, **consts)
    return out


def backward(grad: Tensor, query: Tensor, key: Tensor, value: Tensor, offsets: Tensor, embedding: Tensor | None,
             groups: int, num_heads: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients with respect to query, key, value, offsets and embedding (None without one)."""
    _alert_not_deterministic("lda_aqu::sample_attention_backward (triton backend)")
    q, k, v, off, emb = _prepare(query, key, value, offsets, embedding)
    gout = nchw_or_channels_last(grad)  # the kernel takes its strides
    b, points, scalars, consts = _meta(query, value, offsets, groups, num_heads, embedding)
    _, ch, ho, wo = query.shape
    _, c, h, w = value.shape
    pixels = scalars["HoWo"]
    f32 = dict(device=query.device, dtype=torch.float32)
    dq = torch.empty((b, ch, ho, wo), **f32)
    doff = torch.empty(offsets.shape, **f32)
    dk = torch.zeros((b, h, w, ch), **f32)  # fp32 atomic accumulators, channels-last
    dv = torch.zeros((b, h, w, c), **f32)
    block = interpreter_block(pixels) if INTERPRET else _MIN_GPU_BLOCK
    # Per-program partial sums of d(embedding), sized for the smallest tile (the most programs);
    # zeros where a bigger tile leaves rows unused.
    demb = torch.zeros((triton.cdiv(pixels, block) * b, points, ch), **f32) if embedding is not None else dq.new_zeros(1)
    mult_y = float(torch.tensor(2.0 / (ho - 1), dtype=torch.float32)) * scalars["unnorm_y"]
    mult_x = float(torch.tensor(2.0 / (wo - 1), dtype=torch.float32)) * scalars["unnorm_x"]
    consts["GP_PAD"] = pad_pow2(groups * points)
    args = (q, k, v, off, emb, gout, *_pixel_strides(gout), dq, dk, dv, doff, demb)
    with on_device(query.device):
        if INTERPRET:
            _bwd_kernel[(triton.cdiv(pixels, block), b)](*args, **scalars, mult_y=mult_y, mult_x=mult_x, **consts,
                                                         BLOCK=block)
        else:
            grid = lambda meta: (triton.cdiv(pixels, meta["BLOCK"]), b)  # noqa: E731
            _bwd_tuned[grid](*args, **scalars, mult_y=mult_y, mult_x=mult_x, **consts)
    d_emb = None
    if embedding is not None:
        heads, _, d = embedding.shape
        d_emb = demb.sum(0).view(points, heads, d).permute(1, 0, 2).contiguous().to(embedding.dtype)
    return (dq.to(query.dtype), dk.permute(0, 3, 1, 2).contiguous().to(key.dtype),
            dv.permute(0, 3, 1, 2).contiguous().to(value.dtype), doff.to(offsets.dtype), d_emb)
