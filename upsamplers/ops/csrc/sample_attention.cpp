// CPU kernels of LDA-AQU's deformable sampling attention (upsamplers.ops.sample_attention).
//
// For every output pixel and every offset group g, P points are sampled bilinearly from the
// low-resolution keys and values (align_corners=True geometry, zero padding per corner); one
// softmax per head over the P points weights the sum of the sampled values.
//
// Layouts: query, offsets, the output and the returned gradients are NCHW as in PyTorch. Keys and
// values (and their gradient accumulators) are channels-last (B x H x W x C) so that a bilinear
// corner is one contiguous run of channels: the address arithmetic of a corner is paid once per
// point and amortised over all channels of the group. A thread owns whole output rows; the query
// row and the output row (or the incoming gradient row) are transposed through small buffers that
// stay in cache, so NCHW tensors are read and written with unit stride.
//
// Nothing of size P x C x Ho x Wo is ever stored. The backward pass recomputes the softmax from
// the keys and scatters the key/value gradients into per-block private accumulators that cover
// only the low-resolution rows the block samples; they are summed in a fixed order, so the result
// does not depend on thread scheduling.

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
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {

// ---------------------------------------------------------------------------------------------
// SIMD helpers. GCC/Clang vector extensions as wide as the build's target flags allow (one
// AVX-512, AVX or SSE register); the compiler lowers the arithmetic to that instruction set.

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Simd {
  typedef T V __attribute__((vector_size(kVecBytes)));
  static constexpr int L = kVecBytes / sizeof(T);
};
template <typename T>
using vec_t = typename Simd<T>::V;

template <typename T>
inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  std::memcpy(&v, p, sizeof(v));  // unaligned load
  return v;
}
template <typename T>
inline void vstore(T* p, const vec_t<T>& v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline vec_t<T> vsplat(T x) {
  return vec_t<T>{} + x;
}
// Horizontal sum. Spelled with intrinsics: the generic spelling through an array made GCC go
// through the stack with store-forwarding stalls.
#if defined(__x86_64__) || defined(__i386__)
inline float vsum(const vec_t<float>& v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
#elif defined(__AVX__)
  const __m256 x = reinterpret_cast<__m256>(v);
  __m128 r = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_movehdup_ps(r));
  return _mm_cvtss_f32(r);
#else
  __m128 r = reinterpret_cast<__m128>(v);
  r = _mm_add_ps(r, _mm_movehl_ps(r, r));
  r = _mm_add_ss(r, _mm_shuffle_ps(r, r, 1));
  return _mm_cvtss_f32(r);
#endif
}
inline double vsum(const vec_t<double>& v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_pd(reinterpret_cast<__m512d>(v));
#elif defined(__AVX__)
  const __m256d x = reinterpret_cast<__m256d>(v);
  __m128d r = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
  return _mm_cvtsd_f64(_mm_add_sd(r, _mm_unpackhi_pd(r, r)));
#else
  const __m128d r = reinterpret_cast<__m128d>(v);
  return _mm_cvtsd_f64(_mm_add_sd(r, _mm_unpackhi_pd(r, r)));
#endif
}
#else
template <typename T>
inline T vsum(const vec_t<T>& v) {
  T a[Simd<T>::L];
  std::memcpy(a, &v, sizeof(v));
  for (int w = Simd<T>::L / 2; w >= 1; w /= 2) {
    for (int i = 0; i < w; ++i) a[i] += a[i + w];
  }
  return a[0];
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

template <typename T>
void dot_axpy_corners(int nc, const T* const* x, T* const* y, const T* alpha, const T* d, int64_t n, T* dots) {
  switch (nc) {
    case 1: dot_axpy_corners_n<T, 1>(x, y, alpha, d, n, dots); break;
    case 2: dot_axpy_corners_n<T, 2>(x, y, alpha, d, n, dots); break;
    case 3: dot_axpy_corners_n<T, 3>(x, y, alpha, d, n, dots); break;
    case 4: dot_axpy_corners_n<T, 4>(x, y, alpha, d, n, dots); break;
    default: break;
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
  static const TransposeMasks<T> masks;
  R r[L];
  for (int i = 0; i < L; ++i) r[i] = reinterpret_cast<R>(vload(src + i * src_stride));
  for (int s = L / 2; s >= 1; s /= 2) {
    const __m512i lo = P::index(masks.lo[s]), hi = P::index(masks.hi[s]);
    for (int i = 0; i < L; ++i) {
      if (i & s) continue;
      const R a = r[i], b = r[i + s];
      r[i] = P::apply(a, lo, b);
      r[i + s] = P::apply(a, hi, b);
    }
  }
  for (int i = 0; i < L; ++i) {
    T* d = dst + i * dst_stride;
    if (Stream && (reinterpret_cast<uintptr_t>(d) % 64) == 0) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(d), reinterpret_cast<__m512i>(r[i]));
    } else {
      vstore(d, reinterpret_cast<vec_t<T>>(r[i]));
    }
  }
}
constexpr bool kTileTranspose = true;
// Streaming stores are weakly ordered: fence them before other threads may read the output.
inline void stream_fence() { _mm_sfence(); }
#else
inline void stream_fence() {}
template <typename T, bool Stream>
inline void transpose_tile(const T*, int64_t, T*, int64_t) {}
constexpr bool kTileTranspose = false;
#endif

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols. Stream: write
// around the caches where possible.
template <typename T, bool Stream = false>
void transpose(const T* src, int64_t src_stride, int64_t rows, int64_t cols, T* dst, int64_t dst_stride) {
  constexpr int64_t L = Simd<T>::L;
  int64_t i0 = 0;
  if (kTileTranspose) {
    for (; i0 + L <= rows; i0 += L) {
      int64_t j0 = 0;
      for (; j0 + L <= cols; j0 += L) transpose_tile<T, Stream>(src + i0 * src_stride + j0, src_stride, dst + j0 * dst_stride + i0, dst_stride);
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
};

template <typename T>
struct Point {
  int64_t pix[4];  // flattened low-res pixel (b * H + y) * W + x of the corners inside the map
  T w[4];          // bilinear weights
  T wy[4], wx[4];  // their derivatives with respect to the low-res position (y, x)
  int n;           // corners inside the map (the arrays are packed)
};

template <typename T>
Geometry<T> make_geometry(const at::Tensor& query, const at::Tensor& value_nhwc, const at::Tensor& offsets,
                          int64_t groups, int64_t heads) {
  Geometry<T> g;
  g.B = query.size(0);
  g.Ch = query.size(1);
  g.Ho = query.size(2);
  g.Wo = query.size(3);
  g.H = value_nhwc.size(1);
  g.W = value_nhwc.size(2);
  g.C = value_nhwc.size(3);
  g.G = groups;
  g.P = offsets.size(1) / (2 * groups);
  g.NH = heads;
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
std::vector<Segment> make_segments(const Geometry<T>& g) {
  std::vector<Segment> segs;
  for (int64_t gi = 0; gi < g.G; ++gi) {
    for (int64_t h = 0; h < g.NH; ++h) {
      const int64_t k0 = std::max(gi * g.Ch / g.G, h * g.Ch / g.NH);
      const int64_t k1 = std::min((gi + 1) * g.Ch / g.G, (h + 1) * g.Ch / g.NH);
      const int64_t v0 = std::max(gi * g.C / g.G, h * g.C / g.NH);
      const int64_t v1 = std::min((gi + 1) * g.C / g.G, (h + 1) * g.C / g.NH);
      if (k0 < k1 && v0 < v1) segs.push_back({gi, h, k0, k1, v0, v1});
    }
  }
  return segs;
}

// Low-res sample positions (y, x) of every point of output row oy, for the whole row at once so
// that the divisions vectorise. off points at (b, 0, oy, 0); iy and ix are G*P x Wo.
template <typename T>
void row_positions(const Geometry<T>& g, const T* off, int64_t oy, T* iy, T* ix) {
  const int64_t plane = g.Ho * g.Wo;
  const T row = static_cast<T>(oy);
  for (int64_t i = 0; i < g.G * g.P; ++i) {
    const T* oy_ = off + (2 * i) * plane;
    const T* ox_ = off + (2 * i + 1) * plane;
    T* py = iy + i * g.Wo;
    T* px = ix + i * g.Wo;
    // The same float operations in the same order as the reference (normalise with
    // 2 * y / (Ho - 1) - 1, then grid_sample's (v + 1) * (H - 1) / 2), so that positions, and with
    // them the one-sided gradients at integer positions, land exactly where the reference puts them.
    for (int64_t x = 0; x < g.Wo; ++x) {
      py[x] = (T(2) * (oy_[x] + row) / g.denom_y - T(1) + T(1)) * g.unnorm_y;
      px[x] = (T(2) * (ox_[x] + static_cast<T>(x)) / g.denom_x - T(1) + T(1)) * g.unnorm_x;
    }
  }
}

// Bilinear corners of the low-res position (iy, ix) in image b.
template <typename T>
inline void corners(const Geometry<T>& g, int64_t b, T iy, T ix, Point<T>& pt) {
  pt.n = 0;
  // Negated so that NaN positions count as outside; this also keeps the integer casts in range.
  if (!(iy >= T(-1) && iy < static_cast<T>(g.H) && ix >= T(-1) && ix < static_cast<T>(g.W))) return;
  const T fy = std::floor(iy), fx = std::floor(ix);
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  // grid_sample's names: distances n(orth), s(outh), w(est), e(ast) to the corner rows/columns.
  const T n = iy - fy, s = T(1) - n, w = ix - fx, e = T(1) - w;
  const int64_t base = b * g.H;
  auto add = [&](int64_t y, int64_t x, T weight, T dy, T dx) {
    if (y >= 0 && y < g.H && x >= 0 && x < g.W) {
      const int i = pt.n++;
      pt.pix[i] = (base + y) * g.W + x;
      pt.w[i] = weight;
      pt.wy[i] = dy;
      pt.wx[i] = dx;
    }
  };
  add(y0, x0, s * e, -e, -s);
  add(y0, x0 + 1, s * w, -w, s);
  add(y0 + 1, x0, n * e, e, -n);
  add(y0 + 1, x0 + 1, n * w, w, n);
}

template <typename T>
struct Inputs {
  const T* q;    // B x Ch x Ho x Wo
  const T* k;    // B x H x W x Ch
  const T* v;    // B x H x W x C
  const T* off;  // B x G*P*2 x Ho x Wo, channel order (group, point, [dy, dx])
  const T* emb;  // P x Ch (per-point key embedding, heads concatenated) or nullptr
};

// Per-thread scratch space.
template <typename T>
struct Scratch {
  std::vector<T> iy, ix;         // G*P x Wo sample positions of the current row
  std::vector<Point<T>> pts;     // G*P corners of the current pixel
  std::vector<T> ks;             // P x Ch sampled keys (+ embedding)
  std::vector<vec_t<T>> logit;   // NH x P partial dot products
  std::vector<T> attn;           // NH x P
  std::vector<const T*> src;     // 4P gather sources
  std::vector<T> coef;           // and their weights
  explicit Scratch(const Geometry<T>& g)
      : iy(g.G * g.P * g.Wo), ix(g.G * g.P * g.Wo), pts(g.G * g.P), ks(g.P * g.Ch), logit(g.NH * g.P),
        attn(g.NH * g.P), src(4 * g.P), coef(4 * g.P) {}
  void start_row(const Geometry<T>& geo, const T* off, int64_t b, int64_t oy) {
    row_positions(geo, off + b * geo.G * geo.P * 2 * geo.Ho * geo.Wo + oy * geo.Wo, oy, iy.data(), ix.data());
  }
};

// Sample points, keys and softmax weights of pixel ox of the current row; qv is its query.
template <typename T>
void attention_weights(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, int64_t b,
                       int64_t ox, const T* qv, Scratch<T>& s) {
  constexpr int L = Simd<T>::L;
  for (int64_t i = 0; i < g.G * g.P; ++i) corners(g, b, s.iy[i * g.Wo + ox], s.ix[i * g.Wo + ox], s.pts[i]);
  std::fill(s.attn.begin(), s.attn.end(), T(0));
  std::fill(s.logit.begin(), s.logit.end(), vec_t<T>{});
  for (const Segment& sg : segs) {
    for (int64_t p = 0; p < g.P; ++p) {
      const Point<T>& pt = s.pts[sg.g * g.P + p];
      const T* kr[4];
      for (int j = 0; j < pt.n; ++j) kr[j] = in.k + pt.pix[j] * g.Ch;
      const T* e = in.emb ? in.emb + p * g.Ch : nullptr;
      T* ks = s.ks.data() + p * g.Ch;
      // ks = embedding + sum of the weighted corners; the logit takes q . ks.
      vec_t<T> acc{};
      int64_t c = sg.k0;
      for (; c + L <= sg.k1; c += L) {
        vec_t<T> a = e ? vload(e + c) : vec_t<T>{};
        for (int j = 0; j < pt.n; ++j) a += vsplat(pt.w[j]) * vload(kr[j] + c);
        vstore(ks + c, a);
        acc += vload(qv + c) * a;
      }
      T tail = 0;
      for (; c < sg.k1; ++c) {
        T a = e ? e[c] : T(0);
        for (int j = 0; j < pt.n; ++j) a += pt.w[j] * kr[j][c];
        ks[c] = a;
        tail += qv[c] * a;
      }
      s.logit[sg.h * g.P + p] += acc;
      s.attn[sg.h * g.P + p] += tail;
    }
  }
  for (int64_t h = 0; h < g.NH; ++h) {
    T* a = s.attn.data() + h * g.P;
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t p = 0; p < g.P; ++p) {
      a[p] = (a[p] + vsum(s.logit[h * g.P + p])) * g.scale;
      m = std::max(m, a[p]);
    }
    T sum = 0;
    for (int64_t p = 0; p < g.P; ++p) {
      a[p] = std::exp(a[p] - m);
      sum += a[p];
    }
    for (int64_t p = 0; p < g.P; ++p) a[p] /= sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
void forward_rows(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, T* out, int64_t r0,
                  int64_t r1) {
  const int64_t plane = g.Ho * g.Wo;
  std::vector<T> qrow(g.Wo * g.Ch), orow(g.Wo * g.C);
  Scratch<T> s(g);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / g.Ho, oy = r % g.Ho;
    load_row(in.q + b * g.Ch * plane + oy * g.Wo, g.Ch, plane, g.Wo, qrow.data());
    s.start_row(g, in.off, b, oy);
    for (int64_t ox = 0; ox < g.Wo; ++ox) {
      attention_weights(g, segs, in, b, ox, qrow.data() + ox * g.Ch, s);
      for (const Segment& sg : segs) {
        int nt = 0;
        for (int64_t p = 0; p < g.P; ++p) {
          const Point<T>& pt = s.pts[sg.g * g.P + p];
          const T a = s.attn[sg.h * g.P + p];
          for (int j = 0; j < pt.n; ++j) {
            s.src[nt] = in.v + pt.pix[j] * g.C + sg.v0;
            s.coef[nt++] = a * pt.w[j];
          }
        }
        weighted_sum(orow.data() + ox * g.C + sg.v0, sg.v1 - sg.v0, nt, s.src.data(), s.coef.data());
      }
    }
    store_row(orow.data(), g.C, plane, g.Wo, out + b * g.C * plane + oy * g.Wo);
  }
  stream_fence();
}

template <typename T>
Inputs<T> make_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      const at::Tensor& offsets, const std::optional<at::Tensor>& embedding) {
  return {query.const_data_ptr<T>(), key.const_data_ptr<T>(), value.const_data_ptr<T>(),
          offsets.const_data_ptr<T>(), embedding.has_value() ? embedding->const_data_ptr<T>() : nullptr};
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
  const int64_t H = value.size(1), W = value.size(2), C = value.size(3);
  TORCH_CHECK(groups >= 1 && heads >= 1, "groups and heads must be positive");
  TORCH_CHECK(key.size(0) == B && key.size(1) == H && key.size(2) == W && key.size(3) == Ch,
              "key must be B x H x W x Ch (channels-last)");
  TORCH_CHECK(value.size(0) == B, "value batch differs from the query's");
  TORCH_CHECK(offsets.size(0) == B && offsets.size(2) == Ho && offsets.size(3) == Wo &&
                  offsets.size(1) % (2 * groups) == 0 && offsets.size(1) > 0,
              "offsets must be B x G*2*P x Ho x Wo");
  TORCH_CHECK(Ch % groups == 0 && C % groups == 0 && Ch % heads == 0 && C % heads == 0,
              "groups and heads must divide the key and value channels");
  TORCH_CHECK(Ho >= 2 && Wo >= 2, "the output map must be at least 2 x 2");
  if (embedding.has_value()) {
    TORCH_CHECK(embedding->dim() == 2 && embedding->size(0) == offsets.size(1) / (2 * groups) &&
                    embedding->size(1) == Ch,
                "embedding must be P x Ch");
  }
}

at::Tensor forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, const at::Tensor& offsets,
                   const std::optional<at::Tensor>& embedding, int64_t groups, int64_t heads) {
  check_inputs(query, key, value, offsets, embedding, groups, heads);
  at::Tensor out = at::empty({query.size(0), value.size(3), query.size(2), query.size(3)}, query.options());
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const Geometry<T> g = make_geometry<T>(query, value, offsets, groups, heads);
    const std::vector<Segment> segs = make_segments(g);
    const Inputs<T> in = make_inputs<T>(query, key, value, offsets, embedding);
    T* o = out.mutable_data_ptr<T>();
    at::parallel_for(0, g.B * g.Ho, 1, [&](int64_t r0, int64_t r1) { forward_rows(g, segs, in, o, r0, r1); });
  };
  if (query.scalar_type() == at::kFloat) {
    run(float(0));
  } else {
    run(double(0));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backward.

// A fixed share of the output rows with private key/value gradient accumulators over the
// low-res rows [lo, hi) (flattened b * H + y) that its samples touch.
template <typename T>
struct Block {
  int64_t r0 = 0, r1 = 0;
  int64_t lo = 0, hi = 0;
  std::vector<T> dk, dv, demb;
};

template <typename T>
void find_window(const Geometry<T>& g, const T* off, Block<T>& blk) {
  int64_t lo = INT64_MAX, hi = -1;
  std::vector<T> iy(g.G * g.P * g.Wo), ix(g.G * g.P * g.Wo);
  Point<T> pt;
  for (int64_t r = blk.r0; r < blk.r1; ++r) {
    const int64_t b = r / g.Ho, oy = r % g.Ho;
    row_positions(g, off + b * g.G * g.P * 2 * g.Ho * g.Wo + oy * g.Wo, oy, iy.data(), ix.data());
    for (size_t i = 0; i < iy.size(); ++i) {
      corners(g, b, iy[i], ix[i], pt);
      for (int j = 0; j < pt.n; ++j) {
        const int64_t row = pt.pix[j] / g.W;
        lo = std::min(lo, row);
        hi = std::max(hi, row);
      }
    }
  }
  blk.lo = hi < 0 ? 0 : lo;
  blk.hi = hi < 0 ? 0 : hi + 1;
}

template <typename T>
void backward_block(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, const T* gout,
                    T* dq, T* doff, Block<T>& blk) {
  const int64_t plane = g.Ho * g.Wo;
  find_window(g, in.off, blk);
  const int64_t npix = (blk.hi - blk.lo) * g.W;
  blk.dk.assign(npix * g.Ch, T(0));
  blk.dv.assign(npix * g.C, T(0));
  blk.demb.assign(in.emb ? g.P * g.Ch : 0, T(0));
  const int64_t first = blk.lo * g.W;  // flattened pixel index of the window's first pixel

  std::vector<T> qrow(g.Wo * g.Ch), drow(g.Wo * g.C), dqrow(g.Wo * g.Ch);
  std::vector<T> dw(g.NH * g.P), dl(g.NH * g.P), gy(g.G * g.P), gx(g.G * g.P);
  Scratch<T> s(g);
  const T* xs[4];
  T* ys[4];
  T alpha[4], dots[4];

  for (int64_t r = blk.r0; r < blk.r1; ++r) {
    const int64_t b = r / g.Ho, oy = r % g.Ho;
    load_row(in.q + b * g.Ch * plane + oy * g.Wo, g.Ch, plane, g.Wo, qrow.data());
    load_row(gout + b * g.C * plane + oy * g.Wo, g.C, plane, g.Wo, drow.data());
    std::fill(dqrow.begin(), dqrow.end(), T(0));
    s.start_row(g, in.off, b, oy);
    for (int64_t ox = 0; ox < g.Wo; ++ox) {
      const T* qv = qrow.data() + ox * g.Ch;
      const T* dv = drow.data() + ox * g.C;
      T* dqv = dqrow.data() + ox * g.Ch;
      attention_weights(g, segs, in, b, ox, qv, s);
      std::fill(dw.begin(), dw.end(), T(0));
      std::fill(gy.begin(), gy.end(), T(0));
      std::fill(gx.begin(), gx.end(), T(0));

      // Values: dL/dattn, the value part of the position gradient, and the value gradient scatter.
      for (const Segment& sg : segs) {
        for (int64_t p = 0; p < g.P; ++p) {
          const int64_t ip = sg.g * g.P + p;
          const Point<T>& pt = s.pts[ip];
          if (pt.n == 0) continue;
          const T a = s.attn[sg.h * g.P + p];
          for (int j = 0; j < pt.n; ++j) {
            xs[j] = in.v + pt.pix[j] * g.C + sg.v0;
            ys[j] = blk.dv.data() + (pt.pix[j] - first) * g.C + sg.v0;
            alpha[j] = a * pt.w[j];
          }
          dot_axpy_corners(pt.n, xs, ys, alpha, dv + sg.v0, sg.v1 - sg.v0, dots);
          T sw = 0, sy = 0, sx = 0;
          for (int j = 0; j < pt.n; ++j) {
            sw += pt.w[j] * dots[j];
            sy += pt.wy[j] * dots[j];
            sx += pt.wx[j] * dots[j];
          }
          dw[sg.h * g.P + p] += sw;
          gy[ip] += a * sy;
          gx[ip] += a * sx;
        }
      }
      // Softmax backward; dl carries the 1/sqrt(d) of the logits.
      for (int64_t h = 0; h < g.NH; ++h) {
        const T* a = s.attn.data() + h * g.P;
        T delta = 0;
        for (int64_t p = 0; p < g.P; ++p) delta += a[p] * dw[h * g.P + p];
        for (int64_t p = 0; p < g.P; ++p) dl[h * g.P + p] = g.scale * a[p] * (dw[h * g.P + p] - delta);
      }
      // Keys: query and embedding gradients, the key part of the position gradient, key scatter.
      for (const Segment& sg : segs) {
        const int64_t len = sg.k1 - sg.k0;
        for (int64_t p = 0; p < g.P; ++p) {
          const int64_t ip = sg.g * g.P + p;
          const T d = dl[sg.h * g.P + p];
          axpy(dqv + sg.k0, d, s.ks.data() + p * g.Ch + sg.k0, len);
          if (in.emb) axpy(blk.demb.data() + p * g.Ch + sg.k0, d, qv + sg.k0, len);
          const Point<T>& pt = s.pts[ip];
          if (pt.n == 0) continue;
          for (int j = 0; j < pt.n; ++j) {
            xs[j] = in.k + pt.pix[j] * g.Ch + sg.k0;
            ys[j] = blk.dk.data() + (pt.pix[j] - first) * g.Ch + sg.k0;
            alpha[j] = d * pt.w[j];
          }
          dot_axpy_corners(pt.n, xs, ys, alpha, qv + sg.k0, len, dots);
          T sy = 0, sx = 0;
          for (int j = 0; j < pt.n; ++j) {
            sy += pt.wy[j] * dots[j];
            sx += pt.wx[j] * dots[j];
          }
          gy[ip] += d * sy;
          gx[ip] += d * sx;
        }
      }
      T* o = doff + b * g.G * g.P * 2 * plane + oy * g.Wo + ox;
      for (int64_t i = 0; i < g.G * g.P; ++i) {
        o[(2 * i) * plane] = gy[i] * g.mult_y;
        o[(2 * i + 1) * plane] = gx[i] * g.mult_x;
      }
    }
    store_row(dqrow.data(), g.Ch, plane, g.Wo, dq + b * g.Ch * plane + oy * g.Wo);
  }
  stream_fence();
}

// Sum the blocks' accumulators (in block order, so the result is reproducible) into an NCHW
// gradient of the low-res map.
template <typename T>
void reduce_blocks(const Geometry<T>& g, const std::vector<Block<T>>& blocks, bool keys, T* dst) {
  const int64_t channels = keys ? g.Ch : g.C;
  const int64_t plane = g.H * g.W;
  const int64_t row_len = g.W * channels;
  at::parallel_for(0, g.B * g.H, 1, [&](int64_t r0, int64_t r1) {
    std::vector<T> row(row_len);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / g.H, y = r % g.H;
      std::fill(row.begin(), row.end(), T(0));
      for (const Block<T>& blk : blocks) {
        if (r < blk.lo || r >= blk.hi) continue;
        const T* src = (keys ? blk.dk.data() : blk.dv.data()) + (r - blk.lo) * row_len;
        for (int64_t i = 0; i < row_len; ++i) row[i] += src[i];
      }
      store_row(row.data(), channels, plane, g.W, dst + b * channels * plane + y * g.W);
    }
    stream_fence();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& offsets, const std::optional<at::Tensor>& embedding, int64_t groups, int64_t heads) {
  check_inputs(query, key, value, offsets, embedding, groups, heads);
  TORCH_CHECK(grad.is_contiguous() && grad.scalar_type() == query.scalar_type() && grad.dim() == 4 &&
                  grad.size(0) == query.size(0) && grad.size(1) == value.size(3) && grad.size(2) == query.size(2) &&
                  grad.size(3) == query.size(3),
              "grad must be a contiguous B x C x Ho x Wo tensor of the query's dtype");
  const auto opts = query.options();
  at::Tensor dq = at::empty(query.sizes(), opts);
  at::Tensor doff = at::empty(offsets.sizes(), opts);
  at::Tensor dk = at::empty({key.size(0), key.size(3), key.size(1), key.size(2)}, opts);
  at::Tensor dv = at::empty({value.size(0), value.size(3), value.size(1), value.size(2)}, opts);
  at::Tensor demb = embedding.has_value() ? at::empty(embedding->sizes(), opts) : at::empty({0}, opts);

  auto run = [&](auto zero) {
    using T = decltype(zero);
    const Geometry<T> g = make_geometry<T>(query, value, offsets, groups, heads);
    const std::vector<Segment> segs = make_segments(g);
    const Inputs<T> in = make_inputs<T>(query, key, value, offsets, embedding);
    // One block per thread: every block is one contiguous share of the rows, fixed before any work
    // starts, so which thread runs which block does not change the sums.
    const int64_t rows = g.B * g.Ho;
    const int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
    std::vector<Block<T>> blocks(nblocks);
    for (int64_t i = 0; i < nblocks; ++i) {
      blocks[i].r0 = rows * i / nblocks;
      blocks[i].r1 = rows * (i + 1) / nblocks;
    }
    const T* gout = grad.const_data_ptr<T>();
    T* dqp = dq.mutable_data_ptr<T>();
    T* doffp = doff.mutable_data_ptr<T>();
    at::parallel_for(0, nblocks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) backward_block(g, segs, in, gout, dqp, doffp, blocks[i]);
    });
    reduce_blocks(g, blocks, true, dk.mutable_data_ptr<T>());
    reduce_blocks(g, blocks, false, dv.mutable_data_ptr<T>());
    if (in.emb) {
      T* e = demb.mutable_data_ptr<T>();
      std::fill(e, e + g.P * g.Ch, T(0));
      for (const Block<T>& blk : blocks) {
        for (int64_t i = 0; i < g.P * g.Ch; ++i) e[i] += blk.demb[i];
      }
    }
  };
  if (query.scalar_type() == at::kFloat) {
    run(float(0));
  } else {
    run(double(0));
  }
  return {dq, dk, dv, doff, demb};
}

}  // namespace

TORCH_LIBRARY(lda_aqu_cpp, m) {
  m.def(
      "forward(Tensor query, Tensor key, Tensor value, Tensor offsets, Tensor? embedding, int groups, "
      "int num_heads) -> Tensor");
  m.def(
      "backward(Tensor grad, Tensor query, Tensor key, Tensor value, Tensor offsets, Tensor? embedding, "
      "int groups, int num_heads) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lda_aqu_cpp, CPU, m) {
  m.impl("forward", TORCH_FN(forward));
  m.impl("backward", TORCH_FN(backward));
}
