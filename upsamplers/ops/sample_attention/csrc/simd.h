// SIMD helpers shared by the LDA-AQU CPU kernels (sample_attention.cpp, lda_aqu_module.cpp).
//
// GCC/Clang vector extensions as wide as the build's target flags allow (one AVX-512, AVX or SSE
// register); the compiler lowers the arithmetic to that instruction set. Everything is inline and
// in an anonymous namespace: each translation unit gets its own copy.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {

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
// The first n (<= L) lanes of v: the last, partial vector of a row, computed whole and stored only
// where the row has pixels.
// A whole vector is one store; a partial one goes lane by lane (a memcpy of a run-time length
// became `rep movsq` through the stack, a quarter of the offset network when every vector went
// through it).
template <typename T>
inline void vstore_first(T* p, const vec_t<T>& v, int64_t n) {
  if (n >= Simd<T>::L) {
    vstore(p, v);
    return;
  }
  T lanes[Simd<T>::L];
  std::memcpy(lanes, &v, sizeof(v));
  for (int64_t i = 0; i < n; ++i) p[i] = lanes[i];
}
// Store around the caches (a non-temporal store) where p is aligned to the vector: for outputs
// that are written once and are larger than the caches, so that they neither evict the data being
// gathered nor cost a read of the line before the write.
template <typename T>
inline void vstream(T* p, const vec_t<T>& v) {
#if defined(__AVX512F__)
  if ((reinterpret_cast<uintptr_t>(p) & 63) == 0) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), reinterpret_cast<__m512i>(v));
    return;
  }
#elif defined(__AVX__)
  if ((reinterpret_cast<uintptr_t>(p) & 31) == 0) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(v));
    return;
  }
#endif
  vstore(p, v);
}
// Streaming stores are weakly ordered: fence them before other threads may read the output.
#if defined(__x86_64__) || defined(__i386__)
inline void stream_fence() { _mm_sfence(); }
#else
inline void stream_fence() {}
#endif
// Broadcast. Spelled with intrinsics where there are some: the generic `vec_t<T>{} + x` costs a
// scalar add before the broadcast.
template <typename T>
inline vec_t<T> vsplat(T x) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) return reinterpret_cast<vec_t<T>>(_mm512_set1_ps(x));
  else return reinterpret_cast<vec_t<T>>(_mm512_set1_pd(x));
#elif defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) return reinterpret_cast<vec_t<T>>(_mm256_set1_ps(x));
  else return reinterpret_cast<vec_t<T>>(_mm256_set1_pd(x));
#elif defined(__SSE2__)
  if constexpr (std::is_same_v<T, float>) return reinterpret_cast<vec_t<T>>(_mm_set1_ps(x));
  else return reinterpret_cast<vec_t<T>>(_mm_set1_pd(x));
#else
  return vec_t<T>{} + x;
#endif
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

template <typename T>
using ivec_t = typename Simd<int32_t>::V;  // as many int32 lanes as float lanes

// 1 / sqrt(v) lane by lane, each lane rounded as the scalar T(1) / std::sqrt(v[i]) (square root and
// division are correctly rounded in both forms).
template <typename T>
inline vec_t<T> vrsqrt_exact(vec_t<T> v) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    return vsplat(1.0f) / reinterpret_cast<vec_t<float>>(_mm512_sqrt_ps(reinterpret_cast<__m512>(v)));
  } else {
    return vsplat(1.0) / reinterpret_cast<vec_t<double>>(_mm512_sqrt_pd(reinterpret_cast<__m512d>(v)));
  }
#elif defined(__AVX__)
  if constexpr (std::is_same_v<T, float>) {
    return vsplat(1.0f) / reinterpret_cast<vec_t<float>>(_mm256_sqrt_ps(reinterpret_cast<__m256>(v)));
  } else {
    return vsplat(1.0) / reinterpret_cast<vec_t<double>>(_mm256_sqrt_pd(reinterpret_cast<__m256d>(v)));
  }
#else
  T a[Simd<T>::L];
  std::memcpy(a, &v, sizeof(v));
  for (int i = 0; i < Simd<T>::L; ++i) a[i] = T(1) / std::sqrt(a[i]);
  std::memcpy(&v, a, sizeof(v));
  return v;
#endif
}

// e^x for float lanes in plain vector extensions, for every instruction set the build targets
// (Cephes' expf: x = n ln 2 + r, ln 2 in two parts, a degree-6 polynomial for e^r, 2^n through the
// exponent bits; within 2 ulp). Arguments are clamped to [-87.3, 88.3]; NaN becomes e^88.3, so
// callers that must propagate NaN select it back.
inline vec_t<float> vexp(vec_t<float> x) {
  x = x < vsplat(88.3762626647949f) ? x : vsplat(88.3762626647949f);
  x = x > vsplat(-87.3365447505531f) ? x : vsplat(-87.3365447505531f);
  const vec_t<float> t = x * vsplat(1.44269504088896341f) + vsplat(0.5f);
  ivec_t<float> i = __builtin_convertvector(t, ivec_t<float>);  // truncation toward zero
  i += reinterpret_cast<ivec_t<float>>(__builtin_convertvector(i, vec_t<float>) > t);  // -1 where it rounded up: floor
  const vec_t<float> n = __builtin_convertvector(i, vec_t<float>);
  x = x - n * vsplat(0.693359375f);
  x = x - n * vsplat(-2.12194440e-4f);
  vec_t<float> y = vsplat(1.9875691500e-4f);
  y = y * x + vsplat(1.3981999507e-3f);
  y = y * x + vsplat(8.3334519073e-3f);
  y = y * x + vsplat(4.1665795894e-2f);
  y = y * x + vsplat(1.6666665459e-1f);
  y = y * x + vsplat(5.0000001201e-1f);
  y = y * (x * x) + x + vsplat(1.0f);
  return y * reinterpret_cast<vec_t<float>>((i + 127) << 23);
}

#if defined(__AVX512F__)
// e^x lane by lane (Cephes' expf: x = n ln 2 + r with ln 2 in two parts, a degree-6 polynomial for
// e^r; within 2 ulp of the correctly rounded result). NaN stays NaN.
inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f));  // (NaN, c) -> c; NaN is restored below
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3365447505531f));
  const __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);  // y * 2^n
}
#endif

}  // namespace
