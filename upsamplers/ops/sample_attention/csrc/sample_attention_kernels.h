// The kernels of LDA-AQU's deformable sampling attention (upsamplers.ops.sample_attention), shared
// by its operators (sample_attention.cpp) and the fused module (lda_aqu_module.cpp).
//
//
// For every output pixel and every offset group g, P points are sampled bilinearly from the
// low-resolution keys and values (align_corners=True geometry, zero padding per corner); one
// softmax per head over the P points weights the sum of the sampled values.
//
// Layouts: query, offsets and the returned gradients are NCHW as in PyTorch; the output is
// channels-last (B x C x Ho x Wo with the channels innermost, the layout of the official code's
// output), written straight from the accumulators with streaming stores; the incoming gradient
// may be either. Keys and values are copied channels-last, one block per offset group
// (G x B*H*W x C/G), so that a bilinear corner is one contiguous run of channels: the address
// arithmetic of a corner is paid once per point and amortised over all channels of the group, and
// the pixels next to it (the other corners, the neighbouring points) hold the same group's
// channels in the adjacent cache lines. The key/value gradient accumulators are channels-last
// (B x H x W x C). A thread owns whole output rows; NCHW rows (the query, an NCHW incoming
// gradient, the query gradient) are transposed through small buffers that stay in cache, so NCHW
// tensors are read and written with unit stride.
//
// Each group block carries one extra all-zero pixel: a corner outside the map points at it
// (with its bilinear weight), so every sample point has exactly four corners and the inner loops
// have no branches; the result equals grid_sample's zero padding, which skips such corners.
// Corner indices and weights are computed for a whole output row at once (the position
// arithmetic vectorises) and reused by every channel of the point.
//
// Nothing of size P x C x Ho x Wo is ever stored. The backward pass recomputes the softmax from
// the keys and scatters the key/value gradients into per-block private accumulators that cover
// only the low-resolution rows the block samples; they are summed in a fixed order, so the result
// does not depend on thread scheduling (it does depend on the number of threads, which fixes the
// blocks).

#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "page_cache.h"
#include "simd.h"

namespace {

// out[i] = the sum of the lanes of v[i], for i < m. With AVX-512 floats, 16 vectors are reduced at
// once by a transpose-and-add tree: 4 levels of two-source shuffles and adds (45 instructions for
// 16 sums) instead of a horizontal reduction per vector (about 8 dependent instructions each).
template <typename T>
inline void hsum_many(const vec_t<T>* v, int64_t m, T* out) {
  for (int64_t i = 0; i < m; ++i) out[i] = vsum(v[i]);
}
#if defined(__AVX512F__)
// Lane i = the sum of the lanes of v[i] for i < k <= 16, zero above.
inline __m512 hsum16(const vec_t<float>* v, int64_t k) {
  // After the tree, lane 4 * q + l holds source q + 4 * l.
  alignas(64) static const int32_t kOrder[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
  __m512 x[16];
  for (int64_t i = 0; i < 16; ++i) x[i] = i < k ? reinterpret_cast<__m512>(v[i]) : _mm512_setzero_ps();
  // Level 1: 128-bit quads {0,1} + {2,3} of two sources side by side (8 partial sums each).
  __m512 a[8];
  for (int i = 0; i < 8; ++i) {
    a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(x[2 * i], x[2 * i + 1], 0xEE));
  }
  // Level 2: one source per quad, 4 partial sums each.
  __m512 b[4];
  for (int i = 0; i < 4; ++i) {
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xDD));
  }
  // Levels 3 and 4: inside each quad, 4 -> 2 -> 1 partial sums.
  __m512 c[2];
  for (int i = 0; i < 2; ++i) {
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
  }
  const __m512 d = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xDD));
  return _mm512_permutexvar_ps(_mm512_load_si512(kOrder), d);
}

template <>
inline void hsum_many<float>(const vec_t<float>* v, int64_t m, float* out) {
  for (int64_t i0 = 0; i0 < m; i0 += 16) {
    const int64_t k = std::min<int64_t>(16, m - i0);
    _mm512_mask_storeu_ps(out + i0, static_cast<__mmask16>((1u << k) - 1), hsum16(v + i0, k));
  }
}
#elif defined(__AVX__)
// AVX/AVX2 floats: 8 vectors at once, three levels of pairwise horizontal adds and one 128-bit
// lane swap.
template <>
inline void hsum_many<float>(const vec_t<float>* v, int64_t m, float* out) {
  int64_t i0 = 0;
  for (; i0 + 8 <= m; i0 += 8) {
    const __m256* x = reinterpret_cast<const __m256*>(v + i0);
    const __m256 a0 = _mm256_hadd_ps(x[0], x[1]), a1 = _mm256_hadd_ps(x[2], x[3]);
    const __m256 a2 = _mm256_hadd_ps(x[4], x[5]), a3 = _mm256_hadd_ps(x[6], x[7]);
    const __m256 b0 = _mm256_hadd_ps(a0, a1), b1 = _mm256_hadd_ps(a2, a3);
    // b0 = sums 0-3 of the low halves, then of the high halves; b1 likewise for 4-7.
    _mm256_storeu_ps(out + i0, _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20),
                                             _mm256_permute2f128_ps(b0, b1, 0x31)));
  }
  for (; i0 < m; ++i0) out[i0] = vsum(v[i0]);
}
#endif

// out[c] = sum_t coef[t] * src[t][c] for c < n. Accumulators stay in registers while the terms
// stream through, so each source row is read once per pixel; with 32 vector registers (AVX-512)
// eight independent accumulators cover 128 float channels in one pass.
template <typename T, int U>
inline int64_t weighted_sum_chunks(T* out, int64_t c, int64_t n, int terms, const T* const* src, const T* coef) {
  constexpr int L = Simd<T>::L;
  for (; c + U * L <= n; c += U * L) {
    vec_t<T> a[U];
    for (int u = 0; u < U; ++u) a[u] = vec_t<T>{};
    for (int t = 0; t < terms; ++t) {
      const vec_t<T> k = vsplat(coef[t]);
      const T* s = src[t] + c;
      for (int u = 0; u < U; ++u) a[u] += k * vload(s + u * L);
    }
    for (int u = 0; u < U; ++u) vstore(out + c + u * L, a[u]);
  }
  return c;
}

template <typename T>
void weighted_sum(T* out, int64_t n, int terms, const T* const* src, const T* coef) {
#if defined(__AVX512F__)
  int64_t c = weighted_sum_chunks<T, 8>(out, 0, n, terms, src, coef);
#else
  int64_t c = weighted_sum_chunks<T, 4>(out, 0, n, terms, src, coef);
#endif
  c = weighted_sum_chunks<T, 1>(out, c, n, terms, src, coef);
  for (; c < n; ++c) {
    T a = 0;
    for (int t = 0; t < terms; ++t) a += coef[t] * src[t][c];
    out[c] = a;
  }
}

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  constexpr int L = Simd<T>::L;
  vec_t<T> s0{}, s1{};
  int64_t c = 0;
  for (; c + 2 * L <= n; c += 2 * L) {
    s0 += vload(a + c) * vload(b + c);
    s1 += vload(a + c + L) * vload(b + c + L);
  }
  for (; c + L <= n; c += L) s0 += vload(a + c) * vload(b + c);
  T s = vsum(s0 + s1);
  for (; c < n; ++c) s += a[c] * b[c];
  return s;
}

// y[c] += alpha * x[c]
template <typename T>
void axpy(T* y, T alpha, const T* x, int64_t n) {
  constexpr int L = Simd<T>::L;
  const vec_t<T> k = vsplat(alpha);
  int64_t c = 0;
  for (; c + L <= n; c += L) vstore(y + c, vload(y + c) + k * vload(x + c));
  for (; c < n; ++c) y[c] += alpha * x[c];
}

// For the NC corners of one sample point: dots[j] = sum_c d[c] * x[j][c] and y[j][c] += alpha[j] * d[c].
// d (the incoming gradient or the query) is loaded once for all corners.
template <typename T, int NC>
void dot_axpy_corners_n(const T* const* x, T* const* y, const T* alpha, const T* d, int64_t n, T* dots) {
  constexpr int L = Simd<T>::L;
  // Local copies: through the pointer arrays the compiler would have to assume that the stores to
  // y alias them and reload every pointer in every iteration.
  const T* xs[NC];
  T* ys[NC];
  vec_t<T> acc[NC];
  vec_t<T> k[NC];
  for (int j = 0; j < NC; ++j) {
    xs[j] = x[j];
    ys[j] = y[j];
    acc[j] = vec_t<T>{};
    k[j] = vsplat(alpha[j]);
  }
  int64_t c = 0;
  for (; c + L <= n; c += L) {
    const vec_t<T> dd = vload(d + c);
    for (int j = 0; j < NC; ++j) {
      acc[j] += dd * vload(xs[j] + c);
      vstore(ys[j] + c, vload(ys[j] + c) + k[j] * dd);
    }
  }
  for (int j = 0; j < NC; ++j) dots[j] = vsum(acc[j]);
  for (; c < n; ++c) {
    for (int j = 0; j < NC; ++j) {
      dots[j] += d[c] * xs[j][c];
      ys[j][c] += alpha[j] * d[c];
    }
  }
}

// Transposes between an NCHW row (channel stride `plane`) and a channels-last row buffer. They
// move every element of the output, so they must not walk either side with a stride of
// `channels` elements element by element (for 256 channels, 1 KB, which maps every access to the
// same few L1 sets): full L x L tiles go through registers, edges through a scalar loop.

#if defined(__AVX512F__)
// In-register L x L transpose (L = lanes per vector) by butterfly stages: stage s swaps the
// off-diagonal s x s blocks of each 2s x 2s block, one two-source permute per row.
template <typename T>
struct Permute;
template <>
struct Permute<float> {
  using I = __m512i;
  static inline __m512 apply(__m512 a, I idx, __m512 b) { return _mm512_permutex2var_ps(a, idx, b); }
  static inline I index(const int32_t* m) { return _mm512_loadu_si512(m); }
};
template <>
struct Permute<double> {
  using I = __m512i;
  static inline __m512d apply(__m512d a, I idx, __m512d b) { return _mm512_permutex2var_pd(a, idx, b); }
  static inline I index(const int64_t* m) { return _mm512_loadu_si512(m); }
};

template <typename T>
struct TransposeMasks {
  static constexpr int L = Simd<T>::L;
  using Int = typename std::conditional<sizeof(T) == 4, int32_t, int64_t>::type;
  Int lo[L][L], hi[L][L];  // per stage s (indexed by s), lane j
  TransposeMasks() {
    for (int s = 1; s < L; s *= 2) {
      for (int j = 0; j < L; ++j) {
        lo[s][j] = (j & s) == 0 ? j : L + j - s;
        hi[s][j] = (j & s) == 0 ? j + s : L + j;
      }
    }
  }
};

template <typename T, bool Stream>
inline void transpose_tile(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  constexpr int L = Simd<T>::L;
  using P = Permute<T>;
  using R = decltype(P::apply(std::declval<typename std::conditional<sizeof(T) == 4, __m512, __m512d>::type>(),
                              std::declval<__m512i>(),
                              std::declval<typename std::conditional<sizeof(T) == 4, __m512, __m512d>::type>()));
  R r[L];
  for (int i = 0; i < L; ++i) r[i] = reinterpret_cast<R>(vload(src + i * src_stride));
  if constexpr (std::is_same_v<T, float>) {
    // Floats: in-lane unpacks and shuffles, then 128-bit block shuffles. The same 64 shuffles as
    // the butterfly below, but cheaper ones: about 3.5x faster per tile on AMD Zen 4, where the
    // two-source permutes are slow.
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int h = 0; h < 2; ++h) {
      for (int i = 0; i < 4; ++i) {
        t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
        t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xDD);
      }
    }
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
      r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
    }
  } else {
    static const TransposeMasks<T> masks;
    for (int s = L / 2; s >= 1; s /= 2) {
      const __m512i lo = P::index(masks.lo[s]), hi = P::index(masks.hi[s]);
      for (int i = 0; i < L; ++i) {
        if (i & s) continue;
        const R a = r[i], b = r[i + s];
        r[i] = P::apply(a, lo, b);
        r[i + s] = P::apply(a, hi, b);
      }
    }
  }
  for (int i = 0; i < L; ++i) {
    T* d = dst + i * dst_stride;
    if constexpr (Stream) {
      vstream(d, reinterpret_cast<vec_t<T>>(r[i]));
    } else {
      vstore(d, reinterpret_cast<vec_t<T>>(r[i]));
    }
  }
}
template <typename T>
constexpr bool kTileTranspose = true;
#elif defined(__AVX__)
// AVX/AVX2 floats: the classic 8 x 8 transpose in 24 shuffles (unpacks, in-lane shuffles, 128-bit
// lane swaps). Doubles take the scalar blocks below (the float64 path is the precision reference).
template <typename T, bool Stream>
inline void transpose_tile(const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  if constexpr (std::is_same_v<T, float>) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * src_stride);
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {
      r[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
      r[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
      r[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
      r[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    for (int i = 0; i < 4; ++i) {
      t[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
      t[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
    }
    for (int i = 0; i < 8; ++i) {
      if constexpr (Stream) {
        vstream(dst + i * dst_stride, reinterpret_cast<vec_t<float>>(t[i]));
      } else {
        _mm256_storeu_ps(dst + i * dst_stride, t[i]);
      }
    }
  }
}
template <typename T>
constexpr bool kTileTranspose = std::is_same_v<T, float>;
#else
template <typename T, bool Stream>
inline void transpose_tile(const T*, int64_t, T*, int64_t) {}
template <typename T>
constexpr bool kTileTranspose = false;
#endif

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols. Stream: write
// around the caches where possible.
template <typename T, bool Stream = false>
void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride) {
  constexpr int64_t L = Simd<T>::L;
  int64_t i0 = 0;
  if constexpr (kTileTranspose<T>) {
    for (; i0 + L <= rows; i0 += L) {
      int64_t j0 = 0;
      for (; j0 + L <= cols; j0 += L) {
        transpose_tile<T, Stream>(src + i0 * src_stride + j0, src_stride, dst + j0 * dst_stride + i0, dst_stride);
      }
      for (int64_t i = i0; i < i0 + L; ++i) {
        for (int64_t j = j0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
      }
    }
  }
  // Remaining rows (or everything without in-register tiles), in cache-friendly 16 x 16 blocks.
  constexpr int64_t kBlock = 16;
  for (int64_t b0 = i0; b0 < rows; b0 += kBlock) {
    const int64_t b1 = std::min(rows, b0 + kBlock);
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t j1 = std::min(cols, j0 + kBlock);
      for (int64_t i = b0; i < b1; ++i) {
        for (int64_t j = j0; j < j1; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
      }
    }
  }
}

// dst[x * channels + c] = src[c * plane + x]: one NCHW row into a channels-last row buffer.
template <typename T>
void load_row(const T* src, int64_t channels, int64_t plane, int64_t width, T* dst) {
  transpose(src, plane, channels, width, dst, channels);
}

// dst[c * plane + x] = src[x * channels + c]: a channels-last row buffer into an NCHW row.
template <typename T>
void store_row(const T* src, int64_t channels, int64_t plane, int64_t width, T* dst) {
  transpose<T, true>(src, channels, width, channels, dst, plane);
}

// ---------------------------------------------------------------------------------------------
// Problem description.

template <typename T>
struct Geometry {
  int64_t B, C, Ch, H, W, Ho, Wo, G, P, NH;
  int64_t zero_pix;      // index of the all-zero pixel appended to the channels-last maps
  T scale;               // (Ch / NH)^-1/2
  T unnorm_y, unnorm_x;  // grid_sample's (size - 1) / 2
  T denom_y, denom_x;    // Ho - 1, Wo - 1: the official normalisation 2 * y / (Ho - 1) - 1
  T mult_y, mult_x;      // d(low-res position) / d(offset)
};

// The channels shared by one offset group and one head (both are contiguous channel blocks).
struct Segment {
  int64_t g, h;
  int64_t k0, k1;  // key channels
  int64_t v0, v1;  // value channels
  int64_t kg, vg;  // k0 and v0 relative to the group's first channel
};

// B images, Ch query/key channels, C value channels, H x W -> Ho x Wo, G groups of P points, NH heads.
template <typename T>
Geometry<T> make_geometry(int64_t B, int64_t Ch, int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                          int64_t groups, int64_t points, int64_t heads) {
  Geometry<T> g;
  g.B = B;
  g.Ch = Ch;
  g.Ho = Ho;
  g.Wo = Wo;
  g.C = C;
  g.H = H;
  g.W = W;
  g.G = groups;
  g.P = points;
  g.NH = heads;
  g.zero_pix = g.B * g.H * g.W;
  g.scale = T(1) / std::sqrt(T(g.Ch / heads));
  g.unnorm_y = static_cast<T>(g.H - 1) / 2;
  g.unnorm_x = static_cast<T>(g.W - 1) / 2;
  g.denom_y = static_cast<T>(g.Ho - 1);
  g.denom_x = static_cast<T>(g.Wo - 1);
  g.mult_y = T(2) / g.denom_y * g.unnorm_y;
  g.mult_x = T(2) / g.denom_x * g.unnorm_x;
  return g;
}

template <typename T>
Geometry<T> make_geometry(const at::Tensor& query, const at::Tensor& value, const at::Tensor& offsets, int64_t groups,
                          int64_t heads) {
  return make_geometry<T>(query.size(0), query.size(1), value.size(1), value.size(2), value.size(3), query.size(2),
                          query.size(3), groups, offsets.size(1) / (2 * groups), heads);
}

template <typename T>
std::vector<Segment> make_segments(const Geometry<T>& g) {
  std::vector<Segment> segs;
  for (int64_t gi = 0; gi < g.G; ++gi) {
    for (int64_t h = 0; h < g.NH; ++h) {
      const int64_t k0 = std::max(gi * g.Ch / g.G, h * g.Ch / g.NH);
      const int64_t k1 = std::min((gi + 1) * g.Ch / g.G, (h + 1) * g.Ch / g.NH);
      const int64_t v0 = std::max(gi * g.C / g.G, h * g.C / g.NH);
      const int64_t v1 = std::min((gi + 1) * g.C / g.G, (h + 1) * g.C / g.NH);
      if (k0 < k1 && v0 < v1) segs.push_back({gi, h, k0, k1, v0, v1, k0 - gi * g.Ch / g.G, v0 - gi * g.C / g.G});
    }
  }
  return segs;
}

// Rows per parallel chunk so that each chunk carries at least kMinChunkWork units of work. Small
// problems then run on the calling thread: waking a thread team costs microseconds, and on a
// loaded machine a preempted team member stalls the whole region for a scheduler tick.
constexpr int64_t kMinChunkWork = int64_t(1) << 18;
inline int64_t grain_rows(int64_t work_per_row) {
  return std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, work_per_row));
}

// An uninitialised scratch tensor whose pages the kernel will touch first (hinted to use huge
// pages: first-touch faults of 4 KB pages cost about as much as the kernel itself).
at::Tensor empty_pages(at::IntArrayRef sizes, const at::TensorOptions& options,
                       at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  return lda_aqu_pages::empty_hinted(sizes, options, format);
}

// An uninitialised forward output: from the page cache (page_cache.h), so that a call does not pay
// for faulting in and zeroing the pages of a fresh output. Scratch tensors and the backward's
// gradients stay out of the cache: they are glibc's to reuse for the allocations between two
// calls, and cached there they raised the peak of a P2 forward + backward by 52 MB (12%). (One
// exception, measured: the GEMM output of lda_aqu_module.cpp's project.)
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  return lda_aqu_pages::empty(sizes, options, format);
}

// The last pixel (the zero pixel) of each of the G blocks of a grouped channels-last map
// (G x pixels x CG), all zeros.
template <typename T>
void zero_pixels(T* dst, int64_t groups, int64_t pixels, int64_t CG) {
  for (int64_t gi = 0; gi < groups; ++gi) {
    std::fill(dst + (gi * pixels + pixels - 1) * CG, dst + (gi + 1) * pixels * CG, T(0));
  }
}

// B x C x H x W -> G x (B*H*W + 1) x C/G: channels-last per block of C/G channels, each block's
// extra last pixel all zeros.
template <typename T>
at::Tensor group_channels_last(const at::Tensor& x, int64_t groups) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t CG = C / groups, pixels = B * H * W + 1, batch = x.stride(0);  // x may be a channel slice
  TORCH_CHECK((W == 1 || x.stride(3) == 1) && (H == 1 || x.stride(2) == W) && (C == 1 || x.stride(1) == H * W),
              "group_channels_last: the channel planes must be dense");
  at::Tensor out = empty_pages({groups, pixels, CG}, x.options());
  const T* src = x.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  at::parallel_for(0, groups * B * H, grain_rows(W * CG), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t gi = r / (B * H), b = r % (B * H) / H, y = r % H;
      transpose(src + b * batch + gi * CG * H * W + y * W, H * W, CG, W, dst + (gi * pixels + b * H * W + y * W) * CG,
                CG);
    }
  });
  zero_pixels(dst, groups, pixels, CG);
  return out;
}

// Bilinear corners of every sample point of one output row, structure of arrays: corner j of
// point i (= group * P + point) at pixel x is entry (i * 4 + j) * Wo + x. Corner order: (y0, x0),
// (y0, x0+1), (y0+1, x0), (y0+1, x0+1).
template <typename T>
struct RowCorners {
  std::vector<int32_t> idx;  // flattened low-res pixel (b*H + y)*W + x, or the zero pixel
  std::vector<T> w;          // bilinear weight
  std::vector<T> fy, fx;     // fractional position y - y0, x - x0 of point i at x: entry i * Wo + x
  explicit RowCorners(const Geometry<T>& g)
      : idx(g.G * g.P * 4 * g.Wo), w(idx.size()), fy(g.G * g.P * g.Wo), fx(g.G * g.P * g.Wo) {}
};

// One point's corners along a row. A function of its own because GCC honours __restrict__ on
// parameters (it does not on the local pointers), and without it the loop does not vectorise.
template <typename T, bool KeepFractions>
void point_corners(const T* oyp, const T* oxp, T row, const Geometry<T>& g, int32_t image, int64_t x_begin,
                   int64_t x_end, int32_t* __restrict__ id0, int32_t* __restrict__ id1, int32_t* __restrict__ id2,
                   int32_t* __restrict__ id3, T* __restrict__ w0, T* __restrict__ w1, T* __restrict__ w2,
                   T* __restrict__ w3, T* __restrict__ ny, T* __restrict__ nx) {
  const T hf = static_cast<T>(g.H), wf = static_cast<T>(g.W);
  const T denom_y = g.denom_y, denom_x = g.denom_x, unnorm_y = g.unnorm_y, unnorm_x = g.unnorm_x;
  const int32_t H = static_cast<int32_t>(g.H), W = static_cast<int32_t>(g.W);
  const int32_t zero = static_cast<int32_t>(g.zero_pix);
  // Columns [x_begin, x_end): the offsets of column x at oyp[x - x_begin], its corners at id0[x].
  int64_t x = x_begin;
  if constexpr (std::is_same_v<T, float>) {
    // The loop below in explicit float vectors: GCC 12 vectorises it only with AVX-512 (masked
    // selects); with AVX2 it stayed scalar, 10% of the forward. The same operations in the same
    // order, lane by lane (comparisons give -1 for true, hence + where the scalar code has -).
    using V = vec_t<float>;
    using I = ivec_t<float>;
    constexpr int L = Simd<float>::L;
    V lane;
    for (int i = 0; i < L; ++i) lane[i] = static_cast<float>(i);
    for (; x + L <= x_end; x += L) {
      V iy = (vsplat(2.0f) * (vload(oyp + (x - x_begin)) + vsplat(row)) / vsplat(denom_y) - vsplat(1.0f) +
              vsplat(1.0f)) * vsplat(unnorm_y);
      V ix = (vsplat(2.0f) * (vload(oxp + (x - x_begin)) + (lane + vsplat(static_cast<float>(x)))) / vsplat(denom_x) -
              vsplat(1.0f) + vsplat(1.0f)) * vsplat(unnorm_x);
      const I inside = (iy >= vsplat(-1.0f)) & (iy < vsplat(hf)) & (ix >= vsplat(-1.0f)) & (ix < vsplat(wf));
      iy = inside ? iy : vsplat(-2.0f);
      ix = inside ? ix : vsplat(-2.0f);
      const I ty = __builtin_convertvector(iy, I), tx = __builtin_convertvector(ix, I);
      const I y0 = ty + (iy < __builtin_convertvector(ty, V)), x0 = tx + (ix < __builtin_convertvector(tx, V));
      const V n = iy - __builtin_convertvector(y0, V), s = vsplat(1.0f) - n;
      const V w = ix - __builtin_convertvector(x0, V), e = vsplat(1.0f) - w;
      const I top = y0 >= 0, bottom = (y0 + 1 >= 0) & (y0 + 1 < H);
      const I left = x0 >= 0, right = (x0 + 1 >= 0) & (x0 + 1 < W);
      const I p00 = image + y0 * W + x0;
      const I z = zero - I{};
      vstore(id0 + x, (top & left) ? p00 : z);
      vstore(id1 + x, (top & right) ? p00 + 1 : z);
      vstore(id2 + x, (bottom & left) ? p00 + W : z);
      vstore(id3 + x, (bottom & right) ? p00 + W + 1 : z);
      vstore(w0 + x, s * e);
      vstore(w1 + x, s * w);
      vstore(w2 + x, n * e);
      vstore(w3 + x, n * w);
      if (KeepFractions) {
        vstore(ny + x, n);
        vstore(nx + x, w);
      }
    }
  }
  for (; x < x_end; ++x) {  // branch-free (bitwise &, selects) so that it vectorises
    // The same float operations in the same order as the reference (normalise with
    // 2 * y / (Ho - 1) - 1, then grid_sample's (v + 1) * (H - 1) / 2), so that positions, and
    // with them the one-sided gradients at integer positions, land where the reference puts them.
    T iy = (T(2) * (oyp[x - x_begin] + row) / denom_y - T(1) + T(1)) * unnorm_y;
    T ix = (T(2) * (oxp[x - x_begin] + static_cast<T>(x)) / denom_x - T(1) + T(1)) * unnorm_x;
    // Points with no corner inside (NaN included) go to -2, which keeps the casts in range.
    const bool inside = (iy >= T(-1)) & (iy < hf) & (ix >= T(-1)) & (ix < wf);
    iy = inside ? iy : T(-2);
    ix = inside ? ix : T(-2);
    // floor() by truncation and correction: exact in this range, and unlike std::floor GCC
    // vectorises it.
    const int32_t ty = static_cast<int32_t>(iy), tx = static_cast<int32_t>(ix);
    const int32_t y0 = ty - (iy < static_cast<T>(ty)), x0 = tx - (ix < static_cast<T>(tx));
    const T fy = static_cast<T>(y0), fx = static_cast<T>(x0);
    // grid_sample's names: distances n(orth), s(outh), w(est), e(ast) to the corner rows/columns.
    const T n = iy - fy, s = T(1) - n, w = ix - fx, e = T(1) - w;
    const bool top = y0 >= 0, bottom = (y0 + 1 >= 0) & (y0 + 1 < H);
    const bool left = x0 >= 0, right = (x0 + 1 >= 0) & (x0 + 1 < W);
    const int32_t p00 = image + y0 * W + x0;
    id0[x] = (top & left) ? p00 : zero;
    id1[x] = (top & right) ? p00 + 1 : zero;
    id2[x] = (bottom & left) ? p00 + W : zero;
    id3[x] = (bottom & right) ? p00 + W + 1 : zero;
    w0[x] = s * e;
    w1[x] = s * w;
    w2[x] = n * e;
    w3[x] = n * w;
    if (KeepFractions) {  // only the backward pass needs them
      ny[x] = n;
      nx[x] = w;
    }
  }
}

// Corners of the columns [x_begin, x_end) (by default the whole row) of output row oy of image b;
// offsets: those columns' offset channel 0 (column x_begin first), channel c at c * channel_stride
// (the plane of an NCHW tensor, or the width of a row buffer).
template <typename T, bool KeepFractions = true>
void row_corners(const Geometry<T>& g, const T* offsets, int64_t channel_stride, int64_t b, int64_t oy,
                 RowCorners<T>& rc, int64_t x_begin = 0, int64_t x_end = -1) {
  const int64_t Wo = g.Wo;
  if (x_end < 0) x_end = Wo;
  const int32_t image = static_cast<int32_t>(b * g.H * g.W);
  for (int64_t i = 0; i < g.G * g.P; ++i) {
    int32_t* id = rc.idx.data() + i * 4 * Wo;
    T* w = rc.w.data() + i * 4 * Wo;
    point_corners<T, KeepFractions>(offsets + (2 * i) * channel_stride, offsets + (2 * i + 1) * channel_stride,
                                    static_cast<T>(oy), g, image, x_begin, x_end, id, id + Wo, id + 2 * Wo,
                                    id + 3 * Wo, w, w + Wo, w + 2 * Wo, w + 3 * Wo, rc.fy.data() + i * Wo,
                                    rc.fx.data() + i * Wo);
  }
}

// Row oy of image b of an NCHW offsets tensor (B x G*P*2 x Ho x Wo); its channels are a plane apart.
template <typename T>
const T* offset_row(const Geometry<T>& g, const T* off, int64_t b, int64_t oy) {
  return off + b * g.G * g.P * 2 * g.Ho * g.Wo + oy * g.Wo;
}

template <typename T>
struct Inputs {
  const T* q;    // B x Ch x Ho x Wo
  const T* k;    // G x (B*H*W + 1) x Ch/G, channels-last per group with the zero pixel
  const T* v;    // G x (B*H*W + 1) x C/G
  const T* off;  // B x G*P*2 x Ho x Wo, channel order (group, point, [dy, dx])
  const T* emb;  // P x Ch (per-point key embedding, heads side by side; zeros when there is none)
  int64_t kw, vw;  // channels per pixel in a group block: Ch/G, C/G
  int64_t pixels;  // pixels per group block: B*H*W + 1

  // Segment sg's first key (value) channel at low-res pixel pix (or the zero pixel).
  const T* key(const Segment& sg, int32_t pix) const { return k + (sg.g * pixels + pix) * kw + sg.kg; }
  const T* value(const Segment& sg, int32_t pix) const { return v + (sg.g * pixels + pix) * vw + sg.vg; }
};

// Per-thread scratch space.
template <typename T>
struct Scratch {
  RowCorners<T> rc;            // corners of the current row
  std::vector<T> ks;           // P x Ch sampled keys (+ embedding) of the current pixel
  std::vector<vec_t<T>> part;  // NH x P partial dot products
  std::vector<T> attn;         // NH x P
  explicit Scratch(const Geometry<T>& g) : rc(g), ks(g.P * g.Ch), part(g.NH * g.P), attn(g.NH * g.P) {}
};

#if defined(__AVX512F__)
// The softmax of every head of one pixel whose NH x P (<= 16) unscaled logits are the low lanes of
// `logits` (vector exponentials; one libm expf call per point was 5% of the forward).
inline __m512 softmax_heads16(int64_t heads, int64_t points, float scale, __m512 logits) {
  const __m512 x = _mm512_mul_ps(logits, _mm512_set1_ps(scale));
  __m512 out = _mm512_setzero_ps();
  for (int64_t h = 0; h < heads; ++h) {
    const __mmask16 k = static_cast<__mmask16>(((1u << points) - 1) << (h * points));
    const __m512 d = _mm512_sub_ps(x, _mm512_set1_ps(_mm512_mask_reduce_max_ps(k, x)));
    // exp_ps clamps NaN away; a NaN logit must still poison the head as it does in the reference.
    const __m512 e = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(d, d, _CMP_UNORD_Q), exp_ps(d), d);
    out = _mm512_mask_mul_ps(out, k, e, _mm512_set1_ps(1.0f / _mm512_mask_reduce_add_ps(k, e)));
  }
  return out;
}
#endif

// In place: a[h * P + p] holds q . k (unscaled) of point p in head h; afterwards, the softmax over
// the points of each head of the scaled logits.
template <typename T>
void softmax_heads(const Geometry<T>& g, T* a) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {  // double keeps std::exp: the precision reference
    const int64_t np = g.NH * g.P;
    if (np <= 16) {
      const __mmask16 k = static_cast<__mmask16>((1u << np) - 1);
      _mm512_mask_storeu_ps(a, k, softmax_heads16(g.NH, g.P, g.scale, _mm512_maskz_loadu_ps(k, a)));
      return;
    }
  }
#endif
#if !defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {  // vector exponentials for all heads at once
    constexpr int L = Simd<float>::L;
    constexpr int64_t kMax = 8 * L;
    const int64_t np = g.NH * g.P;
    if (np <= kMax) {
      float d[kMax];
      for (int64_t p = np; p < (np + L - 1) / L * L; ++p) d[p] = 0.0f;  // lanes past the last point
      for (int64_t h = 0; h < g.NH; ++h) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t p = h * g.P; p < (h + 1) * g.P; ++p) m = std::max(m, a[p] * g.scale);
        for (int64_t p = h * g.P; p < (h + 1) * g.P; ++p) d[p] = a[p] * g.scale - m;
      }
      for (int64_t i = 0; i < np; i += L) {
        const vec_t<float> x = vload(d + i);
        vstore(d + i, x == x ? vexp(x) : x);  // a NaN logit poisons its head, as in the reference
      }
      for (int64_t h = 0; h < g.NH; ++h) {
        float sum = 0;
        for (int64_t p = h * g.P; p < (h + 1) * g.P; ++p) sum += d[p];
        const float inv = 1.0f / sum;
        for (int64_t p = h * g.P; p < (h + 1) * g.P; ++p) a[p] = d[p] * inv;
      }
      return;
    }
  }
#endif
  for (int64_t h = 0; h < g.NH; ++h, a += g.P) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t p = 0; p < g.P; ++p) {
      a[p] *= g.scale;
      m = std::max(m, a[p]);
    }
    T sum = 0;
    for (int64_t p = 0; p < g.P; ++p) {
      a[p] = std::exp(a[p] - m);
      sum += a[p];
    }
    const T inv = T(1) / sum;
    for (int64_t p = 0; p < g.P; ++p) a[p] *= inv;
  }
}

// q . (emb[p] + sum_j w_j k[corner j]) of point p over the key channels of segment sg, any width:
// returns the lane-wise vector part and adds the scalar remainder to tail. qs is the query at the
// segment's first channel; KeepKeys: ks (likewise) receives emb[p] + sum_j w_j k[corner j], which
// the backward pass needs. e0 = the point's first corner entry in rc.
template <typename T, bool KeepKeys>
inline vec_t<T> point_key_dot_any(const Geometry<T>& g, const Segment& sg, const Inputs<T>& in,
                                  const RowCorners<T>& rc, int64_t e0, int64_t p, const T* qs, T* ks, T& tail) {
  constexpr int L = Simd<T>::L;
  const int64_t Wo = g.Wo;
  const T* k0 = in.key(sg, rc.idx[e0]);
  const T* k1 = in.key(sg, rc.idx[e0 + Wo]);
  const T* k2 = in.key(sg, rc.idx[e0 + 2 * Wo]);
  const T* k3 = in.key(sg, rc.idx[e0 + 3 * Wo]);
  const T w0 = rc.w[e0], w1 = rc.w[e0 + Wo], w2 = rc.w[e0 + 2 * Wo], w3 = rc.w[e0 + 3 * Wo];
  const T* e = in.emb + p * g.Ch + sg.k0;
  const vec_t<T> v0 = vsplat(w0), v1 = vsplat(w1), v2 = vsplat(w2), v3 = vsplat(w3);
  vec_t<T> acc{};
  const int64_t len = sg.k1 - sg.k0;
  int64_t c = 0;
  for (; c + L <= len; c += L) {
    const vec_t<T> a = vload(e + c) + v0 * vload(k0 + c) + v1 * vload(k1 + c) + v2 * vload(k2 + c) +
                       v3 * vload(k3 + c);
    if (KeepKeys) vstore(ks + c, a);
    acc += vload(qs + c) * a;
  }
  T t = 0;
  for (; c < len; ++c) {
    const T a = e[c] + w0 * k0[c] + w1 * k1[c] + w2 * k2[c] + w3 * k3[c];
    if (KeepKeys) ks[c] = a;
    t += qs[c] * a;
  }
  tail += t;
  return acc;
}

// Softmax weights of pixel x of the current row (backward pass); qv is its query. Also keeps the
// sampled keys (+ embedding) in s.ks.
template <typename T>
void attention_weights(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, int64_t x,
                       const T* qv, Scratch<T>& s) {
  std::fill(s.attn.begin(), s.attn.end(), T(0));
  std::fill(s.part.begin(), s.part.end(), vec_t<T>{});
  for (const Segment& sg : segs) {
    for (int64_t p = 0; p < g.P; ++p) {
      const int64_t e0 = (sg.g * g.P + p) * 4 * g.Wo + x;
      s.part[sg.h * g.P + p] += point_key_dot_any<T, true>(g, sg, in, s.rc, e0, p, qv + sg.k0,
                                                           s.ks.data() + p * g.Ch + sg.k0, s.attn[sg.h * g.P + p]);
    }
  }
  for (int64_t i = 0; i < g.NH * g.P; ++i) s.attn[i] += vsum(s.part[i]);
  softmax_heads(g, s.attn.data());
}

// ---------------------------------------------------------------------------------------------
// Forward.

// The forward pass works on one output row at a time (the query row is converted with a whole-row
// transpose, which reads memory in long runs; the output row is written in place) and,
// inside a row, on chunks of kChunk pixels in three phases: the logits of every pixel of the
// chunk, one segment at a time; the softmax; the weighted sums of values, one segment at a time.
// Going through a chunk segment by segment keeps what the chunk samples of one group (its keys,
// then its values) in L1/L2 while the chunk's pixels reuse it, and each phase is a long run of
// independent work for the out-of-order core instead of one long dependency chain per pixel
// (gather keys -> reduce -> softmax -> gather values).
constexpr int64_t kChunk = 32;

// Buffers of one thread.
template <typename T>
struct ForwardScratch {
  std::vector<T> qrow;           // Wo x Ch query row, channels-last
  T* orow = nullptr;             // the current row of the (channels-last) output
  std::vector<vec_t<T>> part;    // kChunk x NH*P partial dot products
  std::vector<T> tail, weights;  // kChunk x NH*P: scalar remainders of the dots; logits, then softmax
  std::vector<const T*> src;     // 4P gather sources and their weights (channel slices of no fixed width)
  std::vector<T> coef;
  RowCorners<T> rc;
  explicit ForwardScratch(const Geometry<T>& g)
      : qrow(g.Wo * g.Ch), part(kChunk * g.NH * g.P), tail(part.size()), weights(part.size()),
        src(4 * g.P), coef(4 * g.P), rc(g) {}
};

// q . (emb[p] + sum_j w_j k[corner j]) of point p over a segment's key channels that are exactly NV
// vectors, lane by lane (the caller reduces the lanes); e0 = the point's first corner entry in rc,
// q = the query's NV vectors of the segment. KeepKeys: ks (the segment's first channel) receives
// emb[p] + sum_j w_j k[corner j], which the backward pass needs.
template <typename T, int NV, bool KeepKeys = false>
inline vec_t<T> point_key_dot(const Geometry<T>& g, const Segment& sg, const Inputs<T>& in, const RowCorners<T>& rc,
                              int64_t e0, int64_t p, const vec_t<T>* q, T* ks = nullptr) {
  constexpr int L = Simd<T>::L;
  const int64_t Wo = g.Wo;
  const T* k0 = in.key(sg, rc.idx[e0]);
  const T* k1 = in.key(sg, rc.idx[e0 + Wo]);
  const T* k2 = in.key(sg, rc.idx[e0 + 2 * Wo]);
  const T* k3 = in.key(sg, rc.idx[e0 + 3 * Wo]);
  const vec_t<T> v0 = vsplat(rc.w[e0]), v1 = vsplat(rc.w[e0 + Wo]), v2 = vsplat(rc.w[e0 + 2 * Wo]),
                 v3 = vsplat(rc.w[e0 + 3 * Wo]);
  const T* e = in.emb + p * g.Ch + sg.k0;
  vec_t<T> acc{};
  for (int v = 0; v < NV; ++v) {
    const int64_t c = v * L;
    const vec_t<T> a = vload(e + c) + v0 * vload(k0 + c) + v1 * vload(k1 + c) + v2 * vload(k2 + c) + v3 * vload(k3 + c);
    if (KeepKeys) vstore(ks + c, a);
    acc += q[v] * a;
  }
  return acc;
}

// part[x][h*P + p] += the vector part of q[x] . (emb[p] + sum_j w_j k[corner j]) over the key
// channels of one segment, for the pixels x0 + x, x < n, of the current row. NV > 0: the segment is
// exactly NV vectors wide, and the query's vectors stay in registers for all P points; NV = 0: any
// width, scalar remainder in tail.
template <typename T, int NV>
void segment_logits(const Geometry<T>& g, const Segment& sg, const Inputs<T>& in, ForwardScratch<T>& f, int64_t x0,
                    int64_t n) {
  constexpr int L = Simd<T>::L;
  const int64_t Wo = g.Wo, NP = g.NH * g.P;
  for (int64_t x = 0; x < n; ++x) {
    const T* qv = f.qrow.data() + (x0 + x) * g.Ch + sg.k0;
    vec_t<T> q[NV > 0 ? NV : 1];
    for (int v = 0; v < NV; ++v) q[v] = vload(qv + v * L);
    vec_t<T>* part = f.part.data() + x * NP + sg.h * g.P;
    T* tail = f.tail.data() + x * NP + sg.h * g.P;
    for (int64_t p = 0; p < g.P; ++p) {
      const int64_t e0 = (sg.g * g.P + p) * 4 * Wo + x0 + x;
      if constexpr (NV > 0) {
        part[p] += point_key_dot<T, NV>(g, sg, in, f.rc, e0, p, q);
      } else {
        part[p] += point_key_dot_any<T, false>(g, sg, in, f.rc, e0, p, qv, nullptr, tail[p]);
      }
    }
  }
}

// orow[x0 + x][c0, c0 + U*L) = sum over the points p of the segment's head and group and their
// corners j of attn[x][p] * w_j * v[corner j][c0, c0 + U*L): U vector accumulators stay in
// registers while the 4P source rows stream through.
template <typename T, int U>
void segment_values(const Geometry<T>& g, const Segment& sg, const Inputs<T>& in, ForwardScratch<T>& f, int64_t x0,
                    int64_t n, int64_t c0) {
  constexpr int L = Simd<T>::L;
  const int64_t Wo = g.Wo, NP = g.NH * g.P;
  for (int64_t x = 0; x < n; ++x) {
    const T* attn = f.weights.data() + x * NP + sg.h * g.P;
    vec_t<T> acc[U];
    for (int u = 0; u < U; ++u) acc[u] = vec_t<T>{};
    for (int64_t p = 0; p < g.P; ++p) {
      const int64_t e0 = (sg.g * g.P + p) * 4 * Wo + x0 + x;
      const T a = attn[p];
      for (int j = 0; j < 4; ++j) {
        const T* src = in.value(sg, f.rc.idx[e0 + j * Wo]) + (c0 - sg.v0);
        const vec_t<T> k = vsplat(a * f.rc.w[e0 + j * Wo]);
        for (int u = 0; u < U; ++u) acc[u] += k * vload(src + u * L);
      }
    }
    T* o = f.orow + (x0 + x) * g.C + c0;
    for (int u = 0; u < U; ++u) vstream(o + u * L, acc[u]);
  }
}

// The same for channels [c0, c1) of any width, through gather lists.
template <typename T>
void segment_values_any(const Geometry<T>& g, const Segment& sg, const Inputs<T>& in, ForwardScratch<T>& f,
                        int64_t x0, int64_t n, int64_t c0, int64_t c1) {
  const int64_t Wo = g.Wo, NP = g.NH * g.P;
  for (int64_t x = 0; x < n; ++x) {
    const T* attn = f.weights.data() + x * NP + sg.h * g.P;
    int nt = 0;
    for (int64_t p = 0; p < g.P; ++p) {
      const int64_t e0 = (sg.g * g.P + p) * 4 * Wo + x0 + x;
      for (int j = 0; j < 4; ++j) {
        f.src[nt] = in.value(sg, f.rc.idx[e0 + j * Wo]) + (c0 - sg.v0);
        f.coef[nt++] = attn[p] * f.rc.w[e0 + j * Wo];
      }
    }
    weighted_sum(f.orow + (x0 + x) * g.C + c0, c1 - c0, nt, f.src.data(), f.coef.data());
  }
}

#if defined(__AVX512F__)
// Softmax weights of the NX pixels from x of the chunk when there is one head, P points known at
// compile time (k_u = 3: 9) and every segment (= group) is NV float vectors wide: the P dot
// products of each pixel stay in registers across the groups and go straight into the reduction
// tree and the softmax; no partial sums through memory.
template <int NV, int P, int NX>
inline void pixel_weights_registers(const Geometry<float>& g, const std::vector<Segment>& segs,
                                    const Inputs<float>& in, ForwardScratch<float>& f, int64_t x0, int64_t x) {
  static_assert(P <= 16, "one vector of logits");
  constexpr int L = Simd<float>::L;
  vec_t<float> acc[NX][P];
  for (int i = 0; i < NX; ++i)
    for (int p = 0; p < P; ++p) acc[i][p] = vec_t<float>{};
  for (const Segment& sg : segs) {
    const float* qv = f.qrow.data() + (x0 + x) * g.Ch + sg.k0;
    vec_t<float> q[NX][NV];
    for (int i = 0; i < NX; ++i)
      for (int v = 0; v < NV; ++v) q[i][v] = vload(qv + i * g.Ch + v * L);
#pragma GCC unroll 16  // keeps acc[] in registers
    for (int p = 0; p < P; ++p) {
      const int64_t e0 = (sg.g * P + p) * 4 * g.Wo + x0 + x;
      for (int i = 0; i < NX; ++i) acc[i][p] += point_key_dot<float, NV>(g, sg, in, f.rc, e0 + i, p, q[i]);
    }
  }
  for (int i = 0; i < NX; ++i) {
    _mm512_mask_storeu_ps(f.weights.data() + (x + i) * P, static_cast<__mmask16>((1u << P) - 1),
                          softmax_heads16(1, P, g.scale, hsum16(acc[i], P)));
  }
}

// The chunk's softmax weights through pixel_weights_registers: two pixels at a time where their
// queries and accumulators fit the registers (NV <= 2). One pixel at a time, each pixel's
// reduction and softmax at the end of a long run of gathers was a dependency chain the
// out-of-order window could not overlap with the next pixel's work: two interleaved pixels gave
// a P2 module forward of 33.7 vs 34.5 ms (medians of 8 interleaved rounds, one process).
template <int NV, int P>
void chunk_weights_registers(const Geometry<float>& g, const std::vector<Segment>& segs, const Inputs<float>& in,
                             ForwardScratch<float>& f, int64_t x0, int64_t n) {
  int64_t x = 0;
  if constexpr (NV <= 2) {
    for (; x + 2 <= n; x += 2) pixel_weights_registers<NV, P, 2>(g, segs, in, f, x0, x);
  }
  for (; x < n; ++x) pixel_weights_registers<NV, P, 1>(g, segs, in, f, x0, x);
}

// Whether chunk_weights_registers<NV, 9> applies; NV = 0 when it does not.
inline int register_path_width(const Geometry<float>& g, const std::vector<Segment>& segs) {
  constexpr int L = Simd<float>::L;
  if (g.NH != 1 || g.P != 9) return 0;
  const int64_t len = segs.front().k1 - segs.front().k0;
  for (const Segment& sg : segs) {
    if (sg.k1 - sg.k0 != len) return 0;
  }
  return len % L == 0 && (len / L == 1 || len / L == 2 || len / L == 4) ? static_cast<int>(len / L) : 0;
}
#endif

// Logits of the chunk's pixels, one segment at a time, then the softmax of each pixel.
template <typename T>
void chunk_weights(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, ForwardScratch<T>& f,
                   int64_t x0, int64_t n) {
  constexpr int L = Simd<T>::L;
  const int64_t NP = g.NH * g.P;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    switch (register_path_width(g, segs)) {
      case 1: return chunk_weights_registers<1, 9>(g, segs, in, f, x0, n);
      case 2: return chunk_weights_registers<2, 9>(g, segs, in, f, x0, n);
      case 4: return chunk_weights_registers<4, 9>(g, segs, in, f, x0, n);
      default: break;
    }
  }
#endif
  std::fill(f.part.begin(), f.part.begin() + n * NP, vec_t<T>{});
  std::fill(f.tail.begin(), f.tail.begin() + n * NP, T(0));
  for (const Segment& sg : segs) {
    const int64_t len = sg.k1 - sg.k0;
    switch (len % L == 0 ? len / L : 0) {
      case 1: segment_logits<T, 1>(g, sg, in, f, x0, n); break;
      case 2: segment_logits<T, 2>(g, sg, in, f, x0, n); break;
      case 3: segment_logits<T, 3>(g, sg, in, f, x0, n); break;
      case 4: segment_logits<T, 4>(g, sg, in, f, x0, n); break;
      default: segment_logits<T, 0>(g, sg, in, f, x0, n); break;
    }
  }
  for (int64_t x = 0; x < n; ++x) {
    T* logits = f.weights.data() + x * NP;
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
      if (NP <= 16) {  // reduction, softmax and weights in one register, no round trip through memory
        const __mmask16 k = static_cast<__mmask16>((1u << NP) - 1);
        const __m512 l =
            _mm512_add_ps(hsum16(f.part.data() + x * NP, NP), _mm512_maskz_loadu_ps(k, f.tail.data() + x * NP));
        _mm512_mask_storeu_ps(logits, k, softmax_heads16(g.NH, g.P, g.scale, l));
        continue;
      }
    }
#endif
    hsum_many(f.part.data() + x * NP, NP, logits);
    for (int64_t i = 0; i < NP; ++i) logits[i] += f.tail[x * NP + i];
    softmax_heads(g, logits);
  }
}

template <typename T>
void forward_chunk(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, ForwardScratch<T>& f,
                   int64_t x0, int64_t n) {
  constexpr int L = Simd<T>::L;
  chunk_weights(g, segs, in, f, x0, n);
  // Values: slices of 8, 4, 2, 1 vectors (8 vectors = 128 float channels, a group's share at the
  // paper's 256 channels and 2 groups), anything narrower through the gather lists.
  for (const Segment& sg : segs) {
    int64_t c = sg.v0;
    for (; c + 8 * L <= sg.v1; c += 8 * L) segment_values<T, 8>(g, sg, in, f, x0, n, c);
    if (c + 4 * L <= sg.v1) {
      segment_values<T, 4>(g, sg, in, f, x0, n, c);
      c += 4 * L;
    }
    if (c + 2 * L <= sg.v1) {
      segment_values<T, 2>(g, sg, in, f, x0, n, c);
      c += 2 * L;
    }
    if (c + L <= sg.v1) {
      segment_values<T, 1>(g, sg, in, f, x0, n, c);
      c += L;
    }
    if (c < sg.v1) segment_values_any(g, sg, in, f, x0, n, c, sg.v1);
  }
}

// The columns [x_begin, x_end) (by default all) of one output row (channels-last, Wo x C), given
// their query in f.qrow and their corners in f.rc. Streaming stores: the caller fences them
// (stream_fence) before the output is read.
template <typename T>
void forward_row(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, ForwardScratch<T>& f,
                 T* out_row, int64_t x_begin = 0, int64_t x_end = -1) {
  if (x_end < 0) x_end = g.Wo;
  f.orow = out_row;
  for (int64_t x0 = x_begin; x0 < x_end; x0 += kChunk) forward_chunk(g, segs, in, f, x0, std::min(kChunk, x_end - x0));
}

template <typename T>
void forward_rows(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, T* out, int64_t r0,
                  int64_t r1) {
  const int64_t plane = g.Ho * g.Wo, Wo = g.Wo;
  ForwardScratch<T> f(g);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.Ho, oy = r % g.Ho;
    load_row(in.q + b * g.Ch * plane + oy * Wo, g.Ch, plane, Wo, f.qrow.data());
    row_corners<T, false>(g, offset_row(g, in.off, b, oy), plane, b, oy, f.rc);
    forward_row(g, segs, in, f, out + r * Wo * g.C);
  }
  stream_fence();
}

void check_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, const at::Tensor& offsets,
                  const std::optional<at::Tensor>& embedding, int64_t groups, int64_t heads) {
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "lda_aqu cpp kernels support float32 and float64, got ",
              dtype);
  std::vector<const at::Tensor*> all = {&query, &key, &value, &offsets};
  if (embedding.has_value()) all.push_back(&*embedding);
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->device().is_cpu(), "lda_aqu cpp kernels need CPU tensors");
    TORCH_CHECK(t->scalar_type() == dtype, "lda_aqu cpp kernels need one dtype for all inputs");
    TORCH_CHECK(t->is_contiguous(), "lda_aqu cpp kernels need contiguous inputs");
  }
  TORCH_CHECK(query.dim() == 4 && key.dim() == 4 && value.dim() == 4 && offsets.dim() == 4, "expected 4-D tensors");
  const int64_t B = query.size(0), Ch = query.size(1), Ho = query.size(2), Wo = query.size(3);
  const int64_t C = value.size(1), H = value.size(2), W = value.size(3);
  TORCH_CHECK(groups >= 1 && heads >= 1, "groups and heads must be positive");
  TORCH_CHECK(key.size(0) == B && key.size(1) == Ch && key.size(2) == H && key.size(3) == W,
              "key must be B x Ch x H x W");
  TORCH_CHECK(value.size(0) == B, "value batch differs from the query's");
  TORCH_CHECK(offsets.size(0) == B && offsets.size(2) == Ho && offsets.size(3) == Wo &&
                  offsets.size(1) % (2 * groups) == 0 && offsets.size(1) > 0,
              "offsets must be B x G*2*P x Ho x Wo");
  TORCH_CHECK(Ch % groups == 0 && C % groups == 0 && Ch % heads == 0 && C % heads == 0,
              "groups and heads must divide the key and value channels");
  TORCH_CHECK(Ho >= 2 && Wo >= 2, "the output map must be at least 2 x 2");
  TORCH_CHECK(B * H * W < (int64_t(1) << 31) - 1, "the low-resolution maps are too large for 32-bit pixel indices");
  if (embedding.has_value()) {
    TORCH_CHECK(embedding->dim() == 2 && embedding->size(0) == offsets.size(1) / (2 * groups) &&
                    embedding->size(1) == Ch,
                "embedding must be P x Ch");
  }
}

// The converted inputs of one call; the tensors keep the buffers alive.
template <typename T>
struct Prepared {
  at::Tensor k, v, emb;
  Inputs<T> in;
};

// query and offsets: NCHW tensors' data, or null where the caller supplies rows itself; key and
// value already grouped channels-last (group_channels_last's layout, zero pixel included).
template <typename T>
Prepared<T> prepare_grouped(const Geometry<T>& g, const T* query, at::Tensor key, at::Tensor value, const T* offsets,
                            const std::optional<at::Tensor>& embedding) {
  Prepared<T> pr;
  pr.k = std::move(key);
  pr.v = std::move(value);
  pr.emb = embedding.has_value() ? embedding->contiguous() : at::zeros({g.P, g.Ch}, pr.k.options());
  pr.in = {query, pr.k.template const_data_ptr<T>(), pr.v.template const_data_ptr<T>(), offsets,
           pr.emb.template const_data_ptr<T>(), g.Ch / g.G, g.C / g.G, g.zero_pix + 1};
  return pr;
}

// The same from NCHW key and value maps.
template <typename T>
Prepared<T> prepare(const Geometry<T>& g, const T* query, const at::Tensor& key, const at::Tensor& value,
                    const T* offsets, const std::optional<at::Tensor>& embedding) {
  return prepare_grouped<T>(g, query, group_channels_last<T>(key, g.G), group_channels_last<T>(value, g.G), offsets,
                            embedding);
}

template <typename F>
void dispatch_float(at::ScalarType dtype, const F& f) {
  if (dtype == at::kFloat) {
    f(float(0));
  } else {
    f(double(0));
  }
}

}  // namespace
