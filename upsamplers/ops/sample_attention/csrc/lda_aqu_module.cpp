// CPU kernels of the LDA-AQU module around its sampling attention (upsamplers.ops.lda_aqu_module).
//
// The module (LDA-AQU, ACM MM 2024; the official fpn_lau.py, class LDA_AQU) computes, for an input
// x (B x C x H x W):
//
//   xn = LayerNorm_C(x);  q0 = W_q xn;  k0 = W_k xn                       (low resolution)
//   q  = bilinear upsampling of q0 to Ho x Wo (align_corners=True)        (high resolution)
//   per offset group g: d = depthwise3x3(q_g); a = GELU(LayerNorm_gc(d)); p = conv_ke(a) + b
//   offsets = range * tanh(p) + base grid
//
// and then the sampling attention (sample_attention_kernels.h) of q, k0 and the raw x. Two kernels:
//
// * project: LayerNorm + both projections without a normalised copy of x. The projections are
//   linear, so LN's affine folds into the weights: W' = W diag(gamma), and
//   W xn = rstd * (W' x - mean * W' 1) + W beta; only the per-pixel mean and rstd are computed (two
//   passes over x, vectorised over pixels, which also transpose x into the attention's values),
//   then one GEMM (ATen's, MKL on x86) of the raw x into pixels x outputs, and an epilogue that
//   applies the per-pixel correction, writes the keys in the attention's layout and transposes the
//   queries back to channel planes.
// * offset_attention: everything at high resolution, one output row at a time. A task owns a band
//   of output rows of one image (or a strip of its columns, where rows are wider than
//   kStripColumns); per offset group an OffsetPipeline slides down the band with ring
//   buffers of query rows and GELU rows (channel-major rows, vectorised over pixels), and as soon
//   as the offsets of a row exist, the attention computes that output row from the query row (still
//   in its ring) and the offsets (a row buffer). Neither the upsampled query nor the offsets exist
//   at full resolution: the attention reads them from cache instead of from memory, and no page of
//   them is ever faulted in.
//
// Float32 and float64; every sum in the order of the formulas above (the depthwise 3 x 3 sums its
// three kernel rows separately, then together). The vector exponential (for
// tanh and erf) serves float32; float64 keeps libm (the precision reference of the tests).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "sample_attention_kernels.h"
#include "simd.h"

namespace {

// ---------------------------------------------------------------------------------------------
// Vector math: exp, tanh and GELU (exact, through erf) for a whole vector, in plain vector
// extensions so that they serve every instruction set the build targets (SSE, AVX2, AVX-512).

inline vec_t<float> vabs(vec_t<float> x) {
  return reinterpret_cast<vec_t<float>>(reinterpret_cast<ivec_t<float>>(x) & 0x7fffffff);
}
// |m| with the sign of s.
inline vec_t<float> copysign(vec_t<float> m, vec_t<float> s) {
  return reinterpret_cast<vec_t<float>>(reinterpret_cast<ivec_t<float>>(m) |
                                        (reinterpret_cast<ivec_t<float>>(s) & static_cast<int32_t>(0x80000000u)));
}

template <typename T>
inline vec_t<T> vtanh(vec_t<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    // tanh|x| = 1 - 2 / (e^{2|x|} + 1) (|x| > 9 is 1 in float); below 2^-6, where that form loses
    // digits to cancellation, the series |x| - |x|^3/3 + 2|x|^5/15.
    vec_t<float> a = vabs(x);
    a = a < vsplat(9.0f) ? a : vsplat(9.0f);
    const vec_t<float> big = vsplat(1.0f) - vsplat(2.0f) / (vexp(a + a) + vsplat(1.0f));
    const vec_t<float> a2 = a * a;
    const vec_t<float> small = a * (vsplat(1.0f) + a2 * (vsplat(-1.0f / 3.0f) + a2 * vsplat(2.0f / 15.0f)));
    const vec_t<float> r = copysign(a < vsplat(0.015625f) ? small : big, x);
    return x == x ? r : x;  // NaN stays NaN
  } else {
    T a[Simd<T>::L];
    std::memcpy(a, &x, sizeof(x));
    for (int i = 0; i < Simd<T>::L; ++i) a[i] = std::tanh(a[i]);
    std::memcpy(&x, a, sizeof(x));
    return x;
  }
}

// GELU(x) = x/2 (1 + erf(x / sqrt 2)), nn.GELU's exact form.
template <typename T>
inline vec_t<T> vgelu(vec_t<T> x) {
  if constexpr (std::is_same_v<T, float>) {
    // erf(z), z >= 0, by Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7); odd extension.
    const vec_t<float> z = vabs(x) * vsplat(0.70710678118654752f);
    const vec_t<float> t = vsplat(1.0f) / (vsplat(1.0f) + vsplat(0.3275911f) * z);
    vec_t<float> poly = vsplat(1.061405429f);
    poly = poly * t + vsplat(-1.453152027f);
    poly = poly * t + vsplat(1.421413741f);
    poly = poly * t + vsplat(-0.284496736f);
    poly = poly * t + vsplat(0.254829592f);
    const vec_t<float> erf_abs = vsplat(1.0f) - poly * t * vexp(-(z * z));
    return x * vsplat(0.5f) * (vsplat(1.0f) + copysign(erf_abs, x));
  } else {
    T a[Simd<T>::L];
    std::memcpy(a, &x, sizeof(x));
    for (int i = 0; i < Simd<T>::L; ++i) a[i] = a[i] / 2 * (T(1) + std::erf(a[i] / std::sqrt(T(2))));
    std::memcpy(&x, a, sizeof(x));
    return x;
  }
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------
// project

// Pixel vectors per block of the passes below. A block's C channel rows are a plane apart, so
// its lines share few cache sets (a 104 x 168 plane is 4 sets of L1 apart: one line per row of
// 256 rows fits nowhere); four lines per row spread them over all sets, and a block (64 KB for
// 256 float channels) stays in L2 between its passes. x is read from memory once. (Software
// prefetches of the next block's lines made the pass slower: 3.2 vs 2.7 ms at P2.)
constexpr int kProjectVectors = 4;

// Per-pixel mean and 1 / sqrt(var + eps) over C channel rows from src (row stride `stride`) of NX
// pixel vectors, in registers: pass 1 the mean, pass 2 the variance about it (two passes, as
// stable as LayerNorm's; every pixel sums in channel order). Serves both LayerNorms: over x's
// channels (project) and over an offset group's (the offset network).
template <typename T, int NX>
inline void channel_moments(const T* src, int64_t C, int64_t stride, T eps, vec_t<T>* mean, vec_t<T>* rstd) {
  constexpr int L = Simd<T>::L;
  vec_t<T> sq[NX];
  for (int u = 0; u < NX; ++u) mean[u] = sq[u] = vec_t<T>{};
  for (int64_t c = 0; c < C; ++c)
    for (int u = 0; u < NX; ++u) mean[u] += vload(src + c * stride + u * L);
  for (int u = 0; u < NX; ++u) mean[u] = mean[u] / vsplat(static_cast<T>(C));
  for (int64_t c = 0; c < C; ++c)
    for (int u = 0; u < NX; ++u) {
      const vec_t<T> d = vload(src + c * stride + u * L) - mean[u];
      sq[u] += d * d;
    }
  for (int u = 0; u < NX; ++u) rstd[u] = vrsqrt_exact<T>(sq[u] / vsplat(static_cast<T>(C)) + vsplat(eps));
}

// channel_moments into memory.
template <typename T, int NX>
void block_stats(const T* src, int64_t C, int64_t stride, T eps, T* mean, T* rstd) {
  constexpr int L = Simd<T>::L;
  vec_t<T> m[NX], r[NX];
  channel_moments<T, NX>(src, C, stride, eps, m, r);
  for (int u = 0; u < NX; ++u) {
    vstore(mean + u * L, m[u]);
    vstore(rstd + u * L, r[u]);
  }
}

// The same for n pixels (fewer than a vector), lane by lane.
template <typename T>
void block_stats_tail(const T* src, int64_t C, int64_t stride, int64_t n, T eps, T* mean, T* rstd) {
  for (int64_t p = 0; p < n; ++p) {
    T sum = 0, sq = 0;
    for (int64_t c = 0; c < C; ++c) sum += src[c * stride + p];
    const T m = sum / static_cast<T>(C);
    for (int64_t c = 0; c < C; ++c) {
      const T d = src[c * stride + p] - m;
      sq += d * d;
    }
    mean[p] = m;
    rstd[p] = T(1) / std::sqrt(sq / static_cast<T>(C) + eps);
  }
}

// Statistics of n <= kProjectVectors * L pixels: whole blocks, single vectors, lanes.
template <typename T>
void pixel_stats(const T* src, int64_t C, int64_t stride, int64_t n, T eps, T* mean, T* rstd) {
  constexpr int L = Simd<T>::L;
  int64_t p = 0;
  if (n == kProjectVectors * L) {
    block_stats<T, kProjectVectors>(src, C, stride, eps, mean, rstd);
    return;
  }
  for (; p + L <= n; p += L) block_stats<T, 1>(src + p, C, stride, eps, mean + p, rstd + p);
  block_stats_tail(src + p, C, stride, n - p, eps, mean + p, rstd + p);
}

// x: B x C x H x W (contiguous); w: M x C (LayerNorm's gamma folded in, queries then keys, M = 2
// Ch); s = w 1, t = W beta (M). With xn = LayerNorm_C(x) (no affine) and
// y[b, o, p] = rstd[b, p] (w x[b, :, p] - mean[b, p] s[o]) + t[o] = (W LN(x))[b, o, p], returns
//   q0 = y[:, :Ch] (B x Ch x H x W),
//   k  = y[:, Ch:] and v = x grouped channels-last (G x (B*H*W + 1) x Ch/G and x C/G, each group's
//        last pixel zeros: the attention's layout, see group_channels_last),
//   the per-pixel mean and rstd (B x H x W each).
// Three passes instead of separate statistics, transposes and epilogue: over blocks of pixels, the
// statistics and the values' transpose read x once (from memory, then L2), and write the values
// around the caches (streaming stores: module forward 36.2 -> 34.5 ms at P2, in-process A/B); the
// GEMM (ATen's, MKL on x86) reads x again and writes y^T (pixels x M); over blocks again, the
// epilogue corrects y^T pixel by pixel into the keys' layout, and the queries through a block
// buffer transposed from L1.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project(
    const at::Tensor& x, const at::Tensor& w, const at::Tensor& s, const at::Tensor& t, double eps, int64_t groups) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous() && x.device().is_cpu(), "project: x must be a contiguous CPU NCHW map");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "project: float32 or float64");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, M = w.size(0), Ch = M / 2;
  TORCH_CHECK(w.dim() == 2 && w.size(1) == C && s.numel() == M && t.numel() == M && M % 2 == 0,
              "project: weights must be 2 Ch x C");
  TORCH_CHECK(groups >= 1 && Ch % groups == 0 && C % groups == 0, "project: groups must divide the channels");
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && s.scalar_type() == x.scalar_type() &&
                  t.scalar_type() == x.scalar_type(), "project: one dtype for all inputs");
  const int64_t pixels = B * HW + 1, kg = Ch / groups, vg = C / groups;
  // The GEMM's output, channels-last; the one scratch tensor from the page cache (empty_output):
  // fresh, its pages were faulted in and zeroed on every call, 3.9% of a P2 forward's samples (0.8%
  // from the cache) and a module forward 5.5% slower (paired ratio, interleaved calls, 2-core AMD
  // EPYC). It keeps its block (10 MB at P2) mapped between calls.
  at::Tensor yt = empty_output({B, HW, M}, x.options());
  at::Tensor q0 = empty_pages({B, Ch, H, W}, x.options());
  at::Tensor k = empty_pages({groups, pixels, kg}, x.options());
  at::Tensor v = empty_pages({groups, pixels, vg}, x.options());
  at::Tensor mean = at::empty({B, H, W}, x.options());
  at::Tensor rstd = at::empty({B, H, W}, x.options());
  const at::Tensor wc = w.contiguous(), sc = s.contiguous(), tc = t.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lda_aqu_project", [&] {
    using T = scalar_t;
    constexpr int L = Simd<T>::L;
    constexpr int64_t kBlock = kProjectVectors * L;
    const int64_t blocks = (HW + kBlock - 1) / kBlock;  // per image
    const T* xp = x.const_data_ptr<T>();
    T* mp = mean.mutable_data_ptr<T>();
    T* rp = rstd.mutable_data_ptr<T>();
    T* kp = k.mutable_data_ptr<T>();
    T* vp = v.mutable_data_ptr<T>();
    const int64_t grain = grain_rows(C * kBlock);
    at::parallel_for(0, B * blocks, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t b = blk / blocks, p0 = blk % blocks * kBlock, n = std::min(kBlock, HW - p0);
        const T* src = xp + b * C * HW + p0;
        pixel_stats(src, C, HW, n, static_cast<T>(eps), mp + b * HW + p0, rp + b * HW + p0);
        for (int64_t g = 0; g < groups; ++g)
          transpose<T, true>(src + g * vg * HW, HW, vg, n, vp + (g * pixels + b * HW + p0) * vg, vg);
      }
      stream_fence();
    });
    // y^T = x^T w^T: pixels x outputs, x read as its transpose (MKL's "TN" product: 17% faster than
    // w x into NCHW on the 2-core AMD EPYC at P2, 7.1 vs 8.5 ms, interleaved calls).
    for (int64_t b = 0; b < B; ++b) {
      at::Tensor ytb = yt.select(0, b);
      at::mm_out(ytb, x.select(0, b).view({C, HW}).t(), wc.t());
    }
    const T* sp = sc.const_data_ptr<T>();
    const T* tp = tc.const_data_ptr<T>();
    const T* ytp = yt.const_data_ptr<T>();
    T* qp = q0.mutable_data_ptr<T>();
    at::parallel_for(0, B * blocks, grain_rows(M * kBlock), [&](int64_t b0, int64_t b1) {
      std::vector<T> queries(kBlock * Ch);  // the block's corrected queries, pixel-major, for the transpose
      // dst[i] = rstd (y[o0 + i] - mean s[o0 + i]) + t[o0 + i], i < count, of one pixel.
      const auto correct = [&](const T* y, T m, T r, int64_t o0, int64_t count, T* dst) {
        const vec_t<T> mv = vsplat(m), rv = vsplat(r);
        int64_t i = 0;
        for (; i + L <= count; i += L)
          vstore(dst + i, rv * (vload(y + o0 + i) - mv * vload(sp + o0 + i)) + vload(tp + o0 + i));
        for (; i < count; ++i) dst[i] = r * (y[o0 + i] - m * sp[o0 + i]) + tp[o0 + i];
      };
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t b = blk / blocks, p0 = blk % blocks * kBlock, n = std::min(kBlock, HW - p0);
        for (int64_t p = 0; p < n; ++p) {
          const int64_t pix = b * HW + p0 + p;
          const T* y = ytp + pix * M;
          correct(y, mp[pix], rp[pix], 0, Ch, queries.data() + p * Ch);
          for (int64_t g = 0; g < groups; ++g) correct(y, mp[pix], rp[pix], Ch + g * kg, kg, kp + (g * pixels + pix) * kg);
        }
        transpose<T>(queries.data(), Ch, n, Ch, qp + b * Ch * HW + p0, HW);
      }
    });
    zero_pixels(kp, groups, pixels, kg);
    zero_pixels(vp, groups, pixels, vg);
  });
  return {q0, k, v, mean, rstd};
}

// ---------------------------------------------------------------------------------------------
// offset_net

// Source row (or column) of each output row under align_corners=True, as upsample_bilinear2d
// computes it: position i * (in - 1) / (out - 1), lower neighbour i0, upper i1 (= i0 at the last
// row), and the weight w of i1.
template <typename T>
void align_corners_taps(int64_t in, int64_t out, std::vector<int64_t>& i0, std::vector<int64_t>& i1,
                        std::vector<T>& w) {
  const T scale = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
  i0.resize(out);
  i1.resize(out);
  w.resize(out);
  for (int64_t i = 0; i < out; ++i) {
    const T src = scale * static_cast<T>(i);
    i0[i] = std::min<int64_t>(static_cast<int64_t>(src), in - 1);
    i1[i] = std::min<int64_t>(i0[i] + 1, in - 1);
    w[i] = src - static_cast<T>(i0[i]);
  }
}

template <typename T>
struct OffsetNet {
  int64_t B, Ch, H, W, Ho, Wo, G, gc, O, ke;
  T range, eps;
  const T* q0;      // B x Ch x H x W
  int64_t q0_batch;  // batch stride of q0 (it may be a slice of a larger tensor)
  const T* dw;      // gc x 3 x 3
  const T* ln_w;    // gc
  const T* ln_b;    // gc
  const T* cw;      // transposed: (gc * ke * ke) x O, output channel innermost
  const T* cb;      // O
  const T* base;    // O: the base grid, (point, [dy, dx])
  std::vector<int64_t> x0, x1;  // horizontal source columns of each output column
  std::vector<T> wx;             // and the weight of x1
  // Vector blocks of the horizontal interpolation (float with AVX2 or AVX-512): the L output
  // columns [k L, k L + L) read source columns hbase[k] + hidx[k][i] and the next one, all among
  // the L + 1 source values from hbase[k]. The blocks [0, hend) qualify: they span fewer than L
  // source columns (upsampling) and those L + 1 values lie inside the row; the rest is scalar.
  std::vector<int64_t> hbase;
  std::vector<ivec_t<T>> hidx;
  int64_t hend = 0;
};

#if defined(__AVX512F__) || defined(__AVX2__)
constexpr bool kVectorPermute = true;
// v[idx[i]] for every lane i (idx[i] < L).
inline vec_t<float> permute(vec_t<float> v, ivec_t<float> idx) {
#if defined(__AVX512F__)
  return reinterpret_cast<vec_t<float>>(
      _mm512_permutexvar_ps(reinterpret_cast<__m512i>(idx), reinterpret_cast<__m512>(v)));
#else
  return reinterpret_cast<vec_t<float>>(
      _mm256_permutevar8x32_ps(reinterpret_cast<__m256>(v), reinterpret_cast<__m256i>(idx)));
#endif
}
#else
constexpr bool kVectorPermute = false;
inline vec_t<float> permute(vec_t<float> v, ivec_t<float>) { return v; }  // never called
#endif

// Fills n.hbase, n.hidx and n.hend from n.x0 (see OffsetNet).
template <typename T>
void horizontal_blocks(OffsetNet<T>& n) {
  constexpr int L = Simd<T>::L;
  n.hend = 0;
  if constexpr (!std::is_same_v<T, float> || !kVectorPermute) return;
  for (int64_t x = 0; x + L <= n.Wo; x += L) {
    const int64_t base = n.x0[x];
    if (n.x0[x + L - 1] - base > L - 1 || base + L + 1 > n.W) break;
    ivec_t<T> idx;
    for (int i = 0; i < L; ++i) idx[i] = static_cast<int32_t>(n.x0[x + i] - base);
    n.hbase.push_back(base);
    n.hidx.push_back(idx);
    n.hend = x + L;
  }
}

// Row buffers of a strip of `width` columns are channel-major, gc rows of `stride` elements: `pad`
// columns left of the strip, its `width` columns, `pad` columns right of it (the halo the
// convolutions read: the neighbouring strip's values, or zeros beyond the image, the convolutions'
// zero padding), rounded up so every row starts on a vector boundary. The last vector of a row is
// computed whole (its lanes past the strip are dropped), so its loads may run up to a vector past
// the row's end: into the next row, or into the slack after the last one.
template <typename T>
struct RowRing {
  int64_t rows, gc, stride, pad;
  std::vector<T> data;
  std::vector<int64_t> tag;  // which image row each slot holds (or a sentinel)
  RowRing(int64_t rows_, int64_t gc_, int64_t width, int64_t pad_)
      : rows(rows_), gc(gc_), stride(round_up(width + 2 * pad_, Simd<T>::L)), pad(pad_),
        data(rows_ * gc_ * stride + 2 * Simd<T>::L, T(0)), tag(rows_, INT64_MIN) {}
  T* slot(int64_t r) { return data.data() + ((r % rows + rows) % rows) * gc * stride; }
  const T* row(int64_t r, int64_t c) const {
    return data.data() + ((r % rows + rows) % rows) * gc * stride + c * stride + pad;
  }
};

// The output columns [xa, xb) of the horizontally interpolated low-resolution row y of group g's
// query channels: column x of channel c at dst[c * dst_stride + x - xa].
template <typename T>
void horizontal_row(const OffsetNet<T>& n, int64_t b, int64_t g, int64_t y, int64_t xa, int64_t xb, T* dst,
                    int64_t dst_stride) {
  constexpr int L = Simd<T>::L;
  // The vector blocks inside [xa, xb); none where there are none (vb = ve = xa).
  int64_t vb = round_up(xa, L), ve = std::min(n.hend, xb) / L * L;
  if (vb >= ve) vb = ve = xa;
  for (int64_t c = 0; c < n.gc; ++c) {
    const T* src = n.q0 + b * n.q0_batch + ((g * n.gc + c) * n.H + y) * n.W;
    T* d = dst + c * dst_stride - xa;
    const auto scalar = [&](int64_t x) { d[x] = (T(1) - n.wx[x]) * src[n.x0[x]] + n.wx[x] * src[n.x1[x]]; };
    int64_t x = xa;
    for (; x < vb; ++x) scalar(x);
    if constexpr (std::is_same_v<T, float>) {
      // A vector of L columns from two loads and two permutes instead of 2 L scalar loads.
      for (; x < ve; x += L) {
        const T* s = src + n.hbase[x / L];
        const ivec_t<T> idx = n.hidx[x / L];
        const vec_t<T> w1 = vload(n.wx.data() + x);
        vstore(d + x, (vsplat(T(1)) - w1) * permute(vload(s), idx) + w1 * permute(vload(s + 1), idx));
      }
    }
    for (; x < xb; ++x) scalar(x);
  }
}

// Register blocking of the offset convolution: NB output channels x NX pixel vectors of
// accumulators. Each weight broadcast then feeds NX FMAs and each loaded input vector NB FMAs. With
// 32 AVX-512 registers, all 18 output channels (2 k_u^2 at k_u = 3) x 1 vector; with 16 (AVX2, SSE)
// 6 x 2 (12 accumulators, 2 inputs, 1 broadcast): 8 loads per 12 FMAs instead of 10 per 9 for
// 9 x 1, which left the loop waiting on its broadcasts.
#if defined(__AVX512F__)
constexpr int kOutBlock = 18;
constexpr int kPixelVectors = 1;
#else
constexpr int kOutBlock = 6;
constexpr int kPixelVectors = 2;
#endif

// dst[(o0 + k) * plane + x] = range * tanh(b + sum_{c,i,j} w[c,i,j,o0+k] a[i][c][x + j - p]) + base
// for k < NB and the pixels [x, x_end) in blocks of NX vectors; returns the first pixel left.
// x_end - x is a multiple of NX vectors, or x_end = plane (the strip's width) with NX = 1: the
// row's last vector is then computed whole and only its lanes inside the strip are stored (the
// ring rows have slack for its loads).
// A scalar loop there, one dependent FMA after another, was three quarters of the P5 level's
// offset network on AVX-512, where 42 pixels leave a tail of 10.
// rows[i] points at GELU row r + i - p, channel 0, the strip's column 0 (channel c at c * stride;
// p halo columns on either side). Not inlined: inside offset_rows GCC 12 spilled the accumulators
// to the stack in the innermost loop (a third slower than the original 9 x 1 blocks).
template <typename T, int NB, int NX>
__attribute__((noinline)) int64_t conv_vectors(const OffsetNet<T>& n, const T* const* rows, int64_t stride,
                                               int64_t o0, T* dst, int64_t plane, int64_t x, int64_t x_end) {
  constexpr int L = Simd<T>::L;
  const int64_t p = n.ke / 2, O = n.O, ke = n.ke, gc = n.gc;
  for (; x < x_end; x += NX * L) {
    vec_t<T> acc[NB][NX];
#pragma GCC unroll 32
    for (int k = 0; k < NB; ++k)
#pragma GCC unroll 8
      for (int u = 0; u < NX; ++u) acc[k][u] = vsplat(n.cb[o0 + k]);
    const T* w = n.cw + o0;
    for (int64_t c = 0; c < gc; ++c) {
      for (int64_t i = 0; i < ke; ++i) {
        const T* src = rows[i] + c * stride + x - p;
        for (int64_t j = 0; j < ke; ++j, w += O) {
          vec_t<T> v[NX];
#pragma GCC unroll 8
          for (int u = 0; u < NX; ++u) v[u] = vload(src + j + u * L);
#pragma GCC unroll 32
          for (int k = 0; k < NB; ++k) {
            const vec_t<T> wk = vsplat(w[k]);
#pragma GCC unroll 8
            for (int u = 0; u < NX; ++u) acc[k][u] += wk * v[u];
          }
        }
      }
    }
#pragma GCC unroll 32
    for (int k = 0; k < NB; ++k)
#pragma GCC unroll 8
      for (int u = 0; u < NX; ++u)
        vstore_first(dst + (o0 + k) * plane + x + u * L,
                     vtanh<T>(acc[k][u]) * vsplat(n.range) + vsplat(n.base[o0 + k]), plane - x - u * L);
  }
  return x;
}

// Output channels [o0, o0 + NB) of one strip's row, `plane` columns wide (channel o at
// dst + o * plane): blocks of kPixelVectors vectors, then single vectors (the last one partial
// where the width is not a multiple of the vector width).
template <typename T, int NB>
void conv_block(const OffsetNet<T>& n, const T* const* rows, int64_t stride, int64_t o0, T* dst, int64_t plane) {
  constexpr int64_t kBlock = kPixelVectors * Simd<T>::L;
  const int64_t x = conv_vectors<T, NB, kPixelVectors>(n, rows, stride, o0, dst, plane, 0, plane / kBlock * kBlock);
  conv_vectors<T, NB, 1>(n, rows, stride, o0, dst, plane, x, plane);
}

// The output channels left over after the full blocks, 1 to 4 at a time.
template <typename T>
void conv_rest(const OffsetNet<T>& n, const T* const* rows, int64_t stride, int64_t o0, T* dst, int64_t plane) {
  for (; o0 + 4 <= n.O; o0 += 4) conv_block<T, 4>(n, rows, stride, o0, dst, plane);
  for (; o0 < n.O; ++o0) conv_block<T, 1>(n, rows, stride, o0, dst, plane);
}

// The offset network of one image, one offset group and one strip of output columns [xs, xs + w),
// row by row: ring buffers of query rows (for the depthwise 3 x 3) and of GELU rows (for the
// k_e x k_e convolution) slide down the image, so that nothing of it exists at full resolution.
// The rings also hold the halo the convolutions read beyond the strip (p + 1 query columns and p
// GELU columns on either side, computed again by the neighbouring strip; zeros beyond the image).
// Rows must be asked for in increasing order; the first one asked for may be any row (the rows
// above it that it needs are computed then).
template <typename T>
class OffsetPipeline {
 public:
  OffsetPipeline(const OffsetNet<T>& n, int64_t b, int64_t g, int64_t xs, int64_t xe)
      : n_(n), b_(b), g_(g), p_(n.ke / 2), xs_(xs), w_(xe - xs),
        qa_(std::max<int64_t>(0, xs - p_ - 1)), qb_(std::min(n.Wo, xe + p_ + 1)),
        aa_(std::max<int64_t>(0, xs - p_)), ab_(std::min(n.Wo, xe + p_)),
        // Query row r is still in its ring when the offsets of row r are done (query rows up to
        // r + p + 1 have been made by then), hence p + 2 slots, and 3 for the depthwise 3 x 3.
        qring_(std::max<int64_t>(3, p_ + 2), n.gc, w_, p_ + 1), aring_(n.ke, n.gc, w_, p_),
        hstride_(qb_ - qa_), hrow_{std::vector<T>(n.gc * hstride_), std::vector<T>(n.gc * hstride_)},
        dstride_(round_up(ab_ - aa_, Simd<T>::L)), drow_(n.gc * dstride_), arows_(n.ke),
        ry_(n.Ho > 1 ? static_cast<T>(n.H - 1) / static_cast<T>(n.Ho - 1) : T(0)) {}

  // range * tanh(conv(GELU rows around r)) + base of the strip's columns into dst (O channels of
  // w columns, channel stride w).
  void offsets(int64_t r, T* dst) {
    if (next_a_ == INT64_MIN) next_a_ = r - p_;
    for (; next_a_ <= r + p_; ++next_a_) make_a(next_a_);
    for (int64_t i = 0; i < n_.ke; ++i) arows_[i] = aring_.row(r + i - p_, 0);
    int64_t o0 = 0;
    for (; o0 + kOutBlock <= n_.O; o0 += kOutBlock)
      conv_block<T, kOutBlock>(n_, arows_.data(), aring_.stride, o0, dst, w_);
    if (o0 < n_.O) conv_rest<T>(n_, arows_.data(), aring_.stride, o0, dst, w_);
  }

  // The strip's columns of the upsampled query row r (after offsets(r)) into a channels-last row:
  // the group's gc channels of the strip's pixel x at dst[x * dst_stride + c].
  void query(int64_t r, T* dst, int64_t dst_stride) const {
    transpose(qring_.row(r, 0), qring_.stride, n_.gc, w_, dst, dst_stride);
  }

 private:
  // Slot of low-resolution row y, horizontally interpolated over the query columns [qa_, qb_),
  // computed if needed without evicting row `keep`.
  const T* hsource(int64_t y, int64_t keep) {
    for (int i = 0; i < 2; ++i)
      if (hy_[i] == y) return hrow_[i].data();
    const int i = hy_[0] == keep ? 1 : 0;
    horizontal_row(n_, b_, g_, y, qa_, qb_, hrow_[i].data(), hstride_);
    hy_[i] = y;
    return hrow_[i].data();
  }

  // Query row r into its ring slot (zeros outside the map).
  void make_q(int64_t r) {
    constexpr int L = Simd<T>::L;
    int64_t& tag = qring_.tag[((r % qring_.rows) + qring_.rows) % qring_.rows];
    if (tag == r) return;
    tag = r;
    T* slot = qring_.slot(r);
    if (r < 0 || r >= n_.Ho) {
      std::fill(slot, slot + n_.gc * qring_.stride, T(0));
      return;
    }
    const T sy = ry_ * static_cast<T>(r);
    const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(sy), n_.H - 1);
    const int64_t y1 = std::min<int64_t>(y0 + 1, n_.H - 1);
    const T wy = sy - static_cast<T>(y0);
    const T* h0 = hsource(y0, -1);
    const T* h1 = hsource(y1, y0);
    const vec_t<T> a0 = vsplat(T(1) - wy), a1 = vsplat(wy);
    const int64_t count = qb_ - qa_, vec_end = count / L * L;
    for (int64_t c = 0; c < n_.gc; ++c) {
      T* d = slot + c * qring_.stride + qring_.pad + (qa_ - xs_);
      const T* s0 = h0 + c * hstride_;
      const T* s1 = h1 + c * hstride_;
      int64_t x = 0;
      for (; x < vec_end; x += L) vstore(d + x, a0 * vload(s0 + x) + a1 * vload(s1 + x));
      for (; x < count; ++x) d[x] = (T(1) - wy) * s0[x] + wy * s1[x];
    }
  }

  // GELU(LayerNorm(depthwise3x3(q))) of row r, columns [aa_, ab_), into the GELU ring (zeros
  // outside the map).
  void make_a(int64_t r) {
    constexpr int L = Simd<T>::L;
    const int64_t gc = n_.gc, count = ab_ - aa_;
    T* slot = aring_.slot(r);
    if (r < 0 || r >= n_.Ho) {
      std::fill(slot, slot + gc * aring_.stride, T(0));
      return;
    }
    for (int64_t i = -1; i <= 1; ++i) make_q(r + i);
    // Depthwise 3 x 3, zero padded; whole vectors up to the row's last one (drow_ has room for it;
    // its lanes past the window hold values of no pixel, which nothing stores). The channel's nine
    // weights stay in registers across the row; one accumulator per kernel row (three short
    // dependency chains instead of one of nine FMAs), summed in the row order.
    for (int64_t c = 0; c < gc; ++c) {
      const T* w = n_.dw + c * 9;
      vec_t<T> wv[9];
      for (int k = 0; k < 9; ++k) wv[k] = vsplat(w[k]);
      const int64_t shift = aa_ - xs_;  // ring column of the window's first column
      const T* rows[3] = {qring_.row(r - 1, c) + shift, qring_.row(r, c) + shift, qring_.row(r + 1, c) + shift};
      T* d = drow_.data() + c * dstride_;
      for (int64_t x = 0; x < count; x += L) {
        vec_t<T> acc[3];
        for (int i = 0; i < 3; ++i)
          acc[i] = wv[i * 3] * vload(rows[i] + x - 1) + wv[i * 3 + 1] * vload(rows[i] + x) +
                   wv[i * 3 + 2] * vload(rows[i] + x + 1);
        vstore(d + x, acc[0] + acc[1] + acc[2]);
      }
    }
    // LayerNorm over the group's channels, per pixel, then GELU; four vectors of pixels at a time
    // (independent dependency chains over the channels), then one.
    const int64_t vectors = (count + L - 1) / L;
    int64_t v = 0;
    for (; v + 4 <= vectors; v += 4) layer_norm_gelu<4>(v * L, count, slot);
    for (; v < vectors; ++v) layer_norm_gelu<1>(v * L, count, slot);
  }

  // LayerNorm over the group's channels and GELU of the NX pixel vectors from column x of drow_
  // into the GELU ring slot; lanes at or past column `count` are not stored (the ring's columns
  // beyond the image must stay zero). Each lane sums in channel order, as one vector at a time would.
  template <int NX>
  void layer_norm_gelu(int64_t x, int64_t count, T* slot) {
    constexpr int L = Simd<T>::L;
    const int64_t gc = n_.gc;
    const T* drow = drow_.data() + x;
    T* out = slot + aring_.pad + (aa_ - xs_) + x;
    vec_t<T> mean[NX], rstd[NX];
    channel_moments<T, NX>(drow, gc, dstride_, n_.eps, mean, rstd);
    for (int64_t c = 0; c < gc; ++c) {
      const vec_t<T> w = vsplat(n_.ln_w[c]), b = vsplat(n_.ln_b[c]);
      for (int u = 0; u < NX; ++u) {
        const vec_t<T> v = (vload(drow + c * dstride_ + u * L) - mean[u]) * rstd[u] * w + b;
        vstore_first(out + c * aring_.stride + u * L, vgelu<T>(v), count - x - u * L);
      }
    }
  }

  const OffsetNet<T>& n_;
  const int64_t b_, g_, p_, xs_, w_;
  const int64_t qa_, qb_;  // the query columns of the image the strip needs
  const int64_t aa_, ab_;  // the GELU columns likewise
  RowRing<T> qring_, aring_;
  const int64_t hstride_;
  std::vector<T> hrow_[2];
  int64_t hy_[2] = {-1, -1};
  const int64_t dstride_;
  std::vector<T> drow_;
  std::vector<const T*> arows_;
  const T ry_;
  int64_t next_a_ = INT64_MIN;  // the next GELU row to make
};

// ---------------------------------------------------------------------------------------------
// offset_attention: the offset network and the sampling attention, one output row at a time.
//
// A task owns a band of output rows of one image, or a strip of such a band (kStripColumns). For
// each row it runs every group's offset pipeline (which leaves the query row in its ring and the
// offsets in a row buffer), transposes the query row into the attention's channels-last row
// buffer, and computes the output row from them: the upsampled query and the offsets exist only a
// few rows at a time, in cache. A band boundary recomputes k_e - 1 GELU rows and their query rows;
// bands are as few as the threads allow.

// Rows wider than this many output columns are cut into strips of at most this width (a multiple
// of the vector width), each with its own offset pipelines over the whole band: the low-resolution
// rows a strip's points sample (keys and values of both groups, about 9 rows x 1.3 KB per pixel at
// the paper's 256 channels) and the pipelines' rings then stay in L2. P2 (336 columns) as two strips
// of 168: module forward 42.5 -> 38.1 ms on the 2-core AVX-512 machine (medians, one process,
// interleaved); three strips of 112 were slower again (39.3 ms: more halo, shorter rows).
constexpr int64_t kStripColumns = 192;

// q0: B x Ch x H x W (the query projection, dense channel planes; its batch stride may be larger);
// k, v: the keys and values grouped channels-last (G x (B*H*W + 1) x Ch/G and C/G, each
// group's last pixel zeros), as project returns them.
at::Tensor offset_attention(const at::Tensor& q0, const at::Tensor& k, const at::Tensor& v, int64_t Ho, int64_t Wo,
                            int64_t groups, int64_t heads, const at::Tensor& dw, const at::Tensor& ln_w,
                            const at::Tensor& ln_b, const at::Tensor& cw, const at::Tensor& cb, double range,
                            const at::Tensor& base, double eps, const std::optional<at::Tensor>& embedding) {
  TORCH_CHECK(q0.dim() == 4 && k.dim() == 3 && v.dim() == 3 && q0.device().is_cpu() && k.device().is_cpu() &&
                  v.device().is_cpu(),
              "offset_attention: q0 must be a CPU NCHW map, k and v grouped channels-last CPU tensors");
  TORCH_CHECK(q0.scalar_type() == at::kFloat || q0.scalar_type() == at::kDouble,
              "offset_attention: float32 or float64");
  const int64_t B = q0.size(0), Ch = q0.size(1), H = q0.size(2), W = q0.size(3);
  TORCH_CHECK(q0.stride(3) == 1 && q0.stride(2) == W && q0.stride(1) == H * W,
              "offset_attention: q0's channel planes must be dense");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "offset_attention: contiguous k and v");
  TORCH_CHECK(groups >= 1 && k.size(0) == groups && v.size(0) == groups && k.size(1) == B * H * W + 1 &&
                  v.size(1) == B * H * W + 1 && k.size(2) * groups == Ch,
              "offset_attention: k and v must be G x (B*H*W + 1) x channels per group");
  const int64_t C = v.size(2) * groups;  // and Ch = groups * k.size(2): groups divide both
  TORCH_CHECK(heads >= 1 && Ch % heads == 0 && C % heads == 0, "offset_attention: heads must divide channels");
  const int64_t gc = Ch / groups, O = cw.size(0), ke = cw.size(2);
  TORCH_CHECK(dw.numel() == gc * 9 && ln_w.numel() == gc && ln_b.numel() == gc,
              "offset_attention: depthwise/LN shapes");
  TORCH_CHECK(cw.dim() == 4 && cw.size(1) == gc && cw.size(3) == ke && ke % 2 == 1 && O % 2 == 0,
              "offset_attention: conv weight shape");
  TORCH_CHECK(cb.numel() == O && base.numel() == O, "offset_attention: bias/base shapes");
  TORCH_CHECK(Ho >= 1 && Wo >= 1, "offset_attention: empty output");
  for (const at::Tensor* t : {&k, &v, &dw, &ln_w, &ln_b, &cw, &cb, &base})
    TORCH_CHECK(t->scalar_type() == q0.scalar_type(), "offset_attention: one dtype for all inputs");
  if (embedding.has_value()) {
    TORCH_CHECK(embedding->scalar_type() == q0.scalar_type() && embedding->numel() == O / 2 * Ch,
                "offset_attention: embedding must be P x Ch");
  }
  at::Tensor out = empty_output({B, C, Ho, Wo}, v.options(), at::MemoryFormat::ChannelsLast);
  // Output channel innermost: the inner loop broadcasts O consecutive weights.
  const at::Tensor cwt = cw.permute({1, 2, 3, 0}).contiguous();
  const at::Tensor dwc = dw.contiguous(), lw = ln_w.contiguous(), lb = ln_b.contiguous(), cbc = cb.contiguous(),
                   bc = base.contiguous();
  AT_DISPATCH_FLOATING_TYPES(q0.scalar_type(), "lda_aqu_offset_attention", [&] {
    using T = scalar_t;
    OffsetNet<T> n;
    n.B = B; n.Ch = Ch; n.H = H; n.W = W; n.Ho = Ho; n.Wo = Wo; n.G = groups; n.gc = gc; n.O = O; n.ke = ke;
    n.range = static_cast<T>(range);
    n.eps = static_cast<T>(eps);
    n.q0 = q0.const_data_ptr<T>();
    n.q0_batch = q0.stride(0);
    n.dw = dwc.const_data_ptr<T>();
    n.ln_w = lw.const_data_ptr<T>();
    n.ln_b = lb.const_data_ptr<T>();
    n.cw = cwt.const_data_ptr<T>();
    n.cb = cbc.const_data_ptr<T>();
    n.base = bc.const_data_ptr<T>();
    align_corners_taps<T>(W, Wo, n.x0, n.x1, n.wx);
    horizontal_blocks(n);

    const Geometry<T> geo = make_geometry<T>(B, Ch, C, H, W, Ho, Wo, groups, O / 2, heads);
    const std::vector<Segment> segs = make_segments(geo);
    const Prepared<T> pr = prepare_grouped<T>(geo, nullptr, k, v, nullptr, embedding);
    T* o = out.mutable_data_ptr<T>();
    const int64_t threads = at::get_num_threads();
    const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(Ho / 8, (threads + B - 1) / B));
    const int64_t band = (Ho + bands - 1) / bands;
    const int64_t strips = (Wo + kStripColumns - 1) / kStripColumns;
    const int64_t strip = std::min(Wo, round_up((Wo + strips - 1) / strips, Simd<T>::L));
    const int64_t nstrips = (Wo + strip - 1) / strip;
    at::parallel_for(0, B * bands * nstrips, 1, [&](int64_t t0, int64_t t1) {
      ForwardScratch<T> f(geo);
      std::vector<T> offrow(groups * O * Wo);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / (bands * nstrips), r0 = t / nstrips % bands * band, r1 = std::min(Ho, r0 + band);
        const int64_t xs = t % nstrips * strip, xe = std::min(Wo, xs + strip), w = xe - xs;
        std::vector<OffsetPipeline<T>> pipes;
        pipes.reserve(groups);
        for (int64_t g = 0; g < groups; ++g) pipes.emplace_back(n, b, g, xs, xe);
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            pipes[g].offsets(r, offrow.data() + g * O * w);
            pipes[g].query(r, f.qrow.data() + xs * Ch + g * gc, Ch);
          }
          row_corners<T, false>(geo, offrow.data(), w, b, r, f.rc, xs, xe);
          forward_row(geo, segs, pr.in, f, o + (b * Ho + r) * Wo * C, xs, xe);
        }
      }
      stream_fence();
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// upsample_backward: the gradient of the query's bilinear upsampling (align_corners=True).

// grad: B x C x Ho x Wo (NCHW) -> B x C x H x W: every output pixel's gradient spread over its four
// source pixels with their bilinear weights. Plane by plane: first the rows (whole vectors: each
// output row goes to two source rows of a H x Wo buffer), then the columns (each column of the
// buffer to two source columns). aten::upsample_bilinear2d_backward scatters pixel by pixel (13 ms
// for the P2 query gradient, 64 x 208 x 336, on the 2-core AVX-512 machine).
at::Tensor upsample_backward(const at::Tensor& grad, int64_t H, int64_t W) {
  TORCH_CHECK(grad.dim() == 4 && grad.device().is_cpu() && grad.is_contiguous(),
              "upsample_backward: grad must be a contiguous CPU NCHW map");
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble,
              "upsample_backward: float32 or float64");
  TORCH_CHECK(H >= 1 && W >= 1, "upsample_backward: the source size must be positive");
  const int64_t B = grad.size(0), C = grad.size(1), Ho = grad.size(2), Wo = grad.size(3);
  at::Tensor out = at::empty({B, C, H, W}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "lda_aqu_upsample_backward", [&] {
    using T = scalar_t;
    constexpr int L = Simd<T>::L;
    std::vector<int64_t> y0, y1, x0, x1;
    std::vector<T> wy, wx;
    align_corners_taps<T>(H, Ho, y0, y1, wy);
    align_corners_taps<T>(W, Wo, x0, x1, wx);
    const T* g = grad.const_data_ptr<T>();
    T* o = out.mutable_data_ptr<T>();
    at::parallel_for(0, B * C, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, Ho * Wo)),
                     [&](int64_t p0, int64_t p1) {
      std::vector<T> rows(H * Wo);
      for (int64_t p = p0; p < p1; ++p) {
        std::fill(rows.begin(), rows.end(), T(0));
        const T* src = g + p * Ho * Wo;
        for (int64_t r = 0; r < Ho; ++r) {
          T* a = rows.data() + y0[r] * Wo;
          T* b = rows.data() + y1[r] * Wo;
          const T* d = src + r * Wo;
          const T w1 = wy[r], w0 = T(1) - w1;
          int64_t x = 0;
          for (; x + L <= Wo; x += L) {
            const vec_t<T> v = vload(d + x);
            vstore(a + x, vload(a + x) + vsplat(w0) * v);
            vstore(b + x, vload(b + x) + vsplat(w1) * v);  // after a: b is a at the last row
          }
          for (; x < Wo; ++x) {
            a[x] += w0 * d[x];
            b[x] += w1 * d[x];
          }
        }
        T* dst = o + p * H * W;
        std::fill(dst, dst + H * W, T(0));
        for (int64_t y = 0; y < H; ++y) {
          const T* row = rows.data() + y * Wo;
          T* drow = dst + y * W;
          for (int64_t x = 0; x < Wo; ++x) {
            drow[x0[x]] += (T(1) - wx[x]) * row[x];
            drow[x1[x]] += wx[x] * row[x];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lda_aqu_cpp, m) {
  m.def(
      "project(Tensor x, Tensor w, Tensor s, Tensor t, float eps, int groups) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor)");
  m.def("upsample_backward(Tensor grad, int H, int W) -> Tensor");
  m.def(
      "offset_attention(Tensor q0, Tensor k, Tensor v, int Ho, int Wo, int groups, int num_heads, Tensor dw, Tensor ln_w, "
      "Tensor ln_b, Tensor cw, Tensor cb, float range, Tensor base, float eps, Tensor? embedding) -> Tensor");
}

TORCH_LIBRARY_IMPL(lda_aqu_cpp, CPU, m) {
  m.impl("project", TORCH_FN(project));
  m.impl("offset_attention", TORCH_FN(offset_attention));
  m.impl("upsample_backward", TORCH_FN(upsample_backward));
}
