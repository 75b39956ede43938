// The operators lda_aqu_cpp::forward and lda_aqu_cpp::backward: LDA-AQU's deformable sampling
// attention on CPU tensors. The kernels and their description: sample_attention_kernels.h.

#include "sample_attention_kernels.h"

namespace {

at::Tensor forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, const at::Tensor& offsets,
                   const std::optional<at::Tensor>& embedding, int64_t groups, int64_t heads) {
  check_inputs(query, key, value, offsets, embedding, groups, heads);
  // Channels-last: each thread's rows are one contiguous range of the output, so where its pages
  // are fresh (not from the page cache) they are faulted in by the thread that writes them.
  at::Tensor out = empty_output({query.size(0), value.size(1), query.size(2), query.size(3)}, query.options(),
                                at::MemoryFormat::ChannelsLast);
  dispatch_float(query.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const Geometry<T> g = make_geometry<T>(query, value, offsets, groups, heads);
    const std::vector<Segment> segs = make_segments(g);
    const Prepared<T> pr = prepare(g, query.const_data_ptr<T>(), key, value, offsets.const_data_ptr<T>(), embedding);
    T* o = out.mutable_data_ptr<T>();
    at::parallel_for(0, g.B * g.Ho, grain_rows(g.Wo * g.P * (g.C + g.Ch)),
                     [&](int64_t r0, int64_t r1) { forward_rows(g, segs, pr.in, o, r0, r1); });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// Backward.

// Derivatives of a bilinear sample with respect to its low-res position, given the four corner
// values (here their dot products with a direction): d/dy = (1-fx)(v10 - v00) + fx(v11 - v01),
// d/dx = (1-fy)(v01 - v00) + fy(v11 - v10); corners outside the map hold zeros.
template <typename T>
inline T d_dy(const RowCorners<T>& rc, int64_t e, const T* v) {
  const T fx = rc.fx[e];
  return (T(1) - fx) * (v[2] - v[0]) + fx * (v[3] - v[1]);
}
template <typename T>
inline T d_dx(const RowCorners<T>& rc, int64_t e, const T* v) {
  const T fy = rc.fy[e];
  return (T(1) - fy) * (v[1] - v[0]) + fy * (v[3] - v[2]);
}

// A fixed share of the output rows with private key/value gradient accumulators over the
// low-res rows [lo, hi) (flattened b * H + y) that its samples touch, plus one sink pixel at the
// end that absorbs the (zero-weighted) scatter of corners outside the map.
template <typename T>
struct Block {
  int64_t r0 = 0, r1 = 0;
  int64_t lo = 0, hi = 0;
  at::Tensor dk, dv;
  std::vector<T> demb;
};

template <typename T>
void find_window(const Geometry<T>& g, const T* off, Block<T>& blk, RowCorners<T>& rc) {
  // Pixel indices grow with the row ((b * H + y) * W + x), so the rows are those of the smallest
  // and largest index: one division per block (a division per corner was 6% of the backward). The
  // zero pixel, the largest index of all, is left out of the maximum (and of the minimum, where
  // it is one, by the empty check).
  const int32_t zero = static_cast<int32_t>(g.zero_pix);
  int32_t lo = INT32_MAX, hi = -1;
  for (int64_t r = blk.r0; r < blk.r1; ++r) {
    row_corners(g, offset_row(g, off, r / g.Ho, r % g.Ho), g.Ho * g.Wo, r / g.Ho, r % g.Ho, rc);
    for (const int32_t pix : rc.idx) {
      lo = std::min(lo, pix);
      hi = std::max(hi, pix == zero ? -1 : pix);
    }
  }
  blk.lo = hi < 0 ? 0 : lo / g.W;
  blk.hi = hi < 0 ? 0 : hi / g.W + 1;
}

#if defined(__AVX512F__)
// attention_weights for one head, P points known at compile time and segments (= groups) of NV
// float vectors (as chunk_weights_registers in the forward): the P dot products stay in registers
// across the groups and go straight into the reduction tree and the softmax; the sampled keys are
// kept in s.ks as attention_weights keeps them.
template <int NV, int P>
void attention_weights_registers(const Geometry<float>& g, const std::vector<Segment>& segs, const Inputs<float>& in,
                                 int64_t x, const float* qv, Scratch<float>& s) {
  constexpr int L = Simd<float>::L;
  vec_t<float> acc[P];
  for (int p = 0; p < P; ++p) acc[p] = vec_t<float>{};
  for (const Segment& sg : segs) {
    vec_t<float> q[NV];
    for (int v = 0; v < NV; ++v) q[v] = vload(qv + sg.k0 + v * L);
#pragma GCC unroll 16  // keeps acc[] in registers
    for (int p = 0; p < P; ++p) {
      acc[p] += point_key_dot<float, NV, true>(g, sg, in, s.rc, (sg.g * P + p) * 4 * g.Wo + x, p, q,
                                               s.ks.data() + p * g.Ch + sg.k0);
    }
  }
  _mm512_mask_storeu_ps(s.attn.data(), static_cast<__mmask16>((1u << P) - 1),
                        softmax_heads16(1, P, g.scale, hsum16(acc, P)));
}
#endif

// attention_weights through the register path where it applies (nv from register_path_width).
template <typename T>
void backward_weights(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, int64_t x,
                      const T* qv, Scratch<T>& s, int nv) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    switch (nv) {
      case 1: return attention_weights_registers<1, 9>(g, segs, in, x, qv, s);
      case 2: return attention_weights_registers<2, 9>(g, segs, in, x, qv, s);
      case 4: return attention_weights_registers<4, 9>(g, segs, in, x, qv, s);
      default: break;
    }
  }
#endif
  (void)nv;
  attention_weights(g, segs, in, x, qv, s);
}

template <typename T>
void backward_block(const Geometry<T>& g, const std::vector<Segment>& segs, const Inputs<T>& in, const T* gout,
                    bool gout_channels_last, T* dq, T* doff, Block<T>& blk) {
  const int64_t plane = g.Ho * g.Wo, Wo = g.Wo;
  Scratch<T> s(g);
  find_window(g, in.off, blk, s.rc);
  int nv = 0;  // the register path's vectors per segment, 0 where it does not apply
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) nv = register_path_width(g, segs);
#endif
  const int64_t npix = (blk.hi - blk.lo) * g.W;
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  blk.dk = empty_pages({npix + 1, g.Ch}, opts).zero_();
  blk.dv = empty_pages({npix + 1, g.C}, opts).zero_();
  blk.demb.assign(g.P * g.Ch, T(0));
  T* dkw = blk.dk.template mutable_data_ptr<T>();
  T* dvw = blk.dv.template mutable_data_ptr<T>();
  const int64_t first = blk.lo * g.W;  // flattened pixel index of the window's first pixel
  // Window pixel of a corner: the sink (last) pixel for the zero pixel.
  auto local = [&](int32_t pix) { return pix == g.zero_pix ? npix : int64_t(pix) - first; };

  std::vector<T> qrow(Wo * g.Ch), drow(gout_channels_last ? 0 : Wo * g.C), dqrow(Wo * g.Ch);
  std::vector<T> dw(g.NH * g.P), dl(g.NH * g.P), gy(g.G * g.P), gx(g.G * g.P);
  const T* xs[4];
  T* ys[4];
  T alpha[4], dots[4];

  for (int64_t r = blk.r0; r < blk.r1; ++r) {
    const int64_t b = r / g.Ho, oy = r % g.Ho;
    load_row(in.q + b * g.Ch * plane + oy * Wo, g.Ch, plane, Wo, qrow.data());
    const T* grow = gout + r * Wo * g.C;  // the row of a channels-last gradient, else its NCHW copy
    if (!gout_channels_last) {
      load_row(gout + b * g.C * plane + oy * Wo, g.C, plane, Wo, drow.data());
      grow = drow.data();
    }
    std::fill(dqrow.begin(), dqrow.end(), T(0));
    row_corners(g, offset_row(g, in.off, b, oy), plane, b, oy, s.rc);
    for (int64_t x = 0; x < Wo; ++x) {
      const T* qv = qrow.data() + x * g.Ch;
      const T* dv = grow + x * g.C;
      T* dqv = dqrow.data() + x * g.Ch;
      backward_weights(g, segs, in, x, qv, s, nv);
      std::fill(dw.begin(), dw.end(), T(0));
      std::fill(gy.begin(), gy.end(), T(0));
      std::fill(gx.begin(), gx.end(), T(0));

      // Values: dL/dattn, the value part of the position gradient, and the value gradient scatter.
      for (const Segment& sg : segs) {
        for (int64_t p = 0; p < g.P; ++p) {
          const int64_t ip = sg.g * g.P + p;
          const int64_t e0 = ip * 4 * Wo + x;
          const T a = s.attn[sg.h * g.P + p];
          for (int j = 0; j < 4; ++j) {
            const int32_t pix = s.rc.idx[e0 + j * Wo];
            xs[j] = in.value(sg, pix);
            ys[j] = dvw + local(pix) * g.C + sg.v0;
            alpha[j] = a * s.rc.w[e0 + j * Wo];
          }
          dot_axpy_corners_n<T, 4>(xs, ys, alpha, dv + sg.v0, sg.v1 - sg.v0, dots);
          T sw = 0;
          for (int j = 0; j < 4; ++j) sw += s.rc.w[e0 + j * Wo] * dots[j];
          dw[sg.h * g.P + p] += sw;
          gy[ip] += a * d_dy(s.rc, ip * Wo + x, dots);
          gx[ip] += a * d_dx(s.rc, ip * Wo + x, dots);
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
          const int64_t e0 = ip * 4 * Wo + x;
          const T d = dl[sg.h * g.P + p];
          axpy(dqv + sg.k0, d, s.ks.data() + p * g.Ch + sg.k0, len);
          axpy(blk.demb.data() + p * g.Ch + sg.k0, d, qv + sg.k0, len);
          for (int j = 0; j < 4; ++j) {
            const int32_t pix = s.rc.idx[e0 + j * Wo];
            xs[j] = in.key(sg, pix);
            ys[j] = dkw + local(pix) * g.Ch + sg.k0;
            alpha[j] = d * s.rc.w[e0 + j * Wo];
          }
          dot_axpy_corners_n<T, 4>(xs, ys, alpha, qv + sg.k0, len, dots);
          gy[ip] += d * d_dy(s.rc, ip * Wo + x, dots);
          gx[ip] += d * d_dx(s.rc, ip * Wo + x, dots);
        }
      }
      T* o = doff + b * g.G * g.P * 2 * plane + oy * Wo + x;
      for (int64_t i = 0; i < g.G * g.P; ++i) {
        o[(2 * i) * plane] = gy[i] * g.mult_y;
        o[(2 * i + 1) * plane] = gx[i] * g.mult_x;
      }
    }
    store_row(dqrow.data(), g.Ch, plane, Wo, dq + b * g.Ch * plane + oy * Wo);
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
  const int64_t grain = grain_rows(row_len * static_cast<int64_t>(blocks.size()));
  at::parallel_for(0, g.B * g.H, grain, [&](int64_t r0, int64_t r1) {
    std::vector<T> row(row_len);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / g.H, y = r % g.H;
      std::fill(row.begin(), row.end(), T(0));
      for (const Block<T>& blk : blocks) {
        if (r < blk.lo || r >= blk.hi) continue;
        const T* src = (keys ? blk.dk : blk.dv).template const_data_ptr<T>() + (r - blk.lo) * row_len;
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
  TORCH_CHECK(grad.scalar_type() == query.scalar_type() && grad.dim() == 4 && grad.size(0) == query.size(0) &&
                  grad.size(1) == value.size(1) && grad.size(2) == query.size(2) && grad.size(3) == query.size(3),
              "grad must be a B x C x Ho x Wo tensor of the query's dtype");
  // Either layout is read as it is: NCHW (as a user's gradient usually is) or channels-last (as the
  // forward's output, and so most gradients flowing back through a network, are).
  const bool grad_channels_last = !grad.is_contiguous();
  TORCH_CHECK(!grad_channels_last || grad.is_contiguous(at::MemoryFormat::ChannelsLast),
              "grad must be contiguous, NCHW or channels-last");
  const auto opts = query.options();
  at::Tensor dq = empty_pages(query.sizes(), opts);
  at::Tensor doff = empty_pages(offsets.sizes(), opts);
  at::Tensor dk = empty_pages(key.sizes(), opts);
  at::Tensor dv = empty_pages(value.sizes(), opts);
  at::Tensor demb = embedding.has_value() ? at::empty(embedding->sizes(), opts) : at::empty({0}, opts);

  dispatch_float(query.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    const Geometry<T> g = make_geometry<T>(query, value, offsets, groups, heads);
    const std::vector<Segment> segs = make_segments(g);
    const Prepared<T> pr = prepare(g, query.const_data_ptr<T>(), key, value, offsets.const_data_ptr<T>(), embedding);
    // One block per thread: every block is one contiguous share of the rows, fixed before any work
    // starts, so which thread runs which block does not change the sums.
    const int64_t rows = g.B * g.Ho;
    const int64_t chunks = rows / grain_rows(3 * g.Wo * g.P * (g.C + g.Ch));  // ~3x the forward's work
    const int64_t nblocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), chunks));
    std::vector<Block<T>> blocks(nblocks);
    for (int64_t i = 0; i < nblocks; ++i) {
      blocks[i].r0 = rows * i / nblocks;
      blocks[i].r1 = rows * (i + 1) / nblocks;
    }
    const T* gout = grad.const_data_ptr<T>();
    T* dqp = dq.mutable_data_ptr<T>();
    T* doffp = doff.mutable_data_ptr<T>();
    at::parallel_for(0, nblocks, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) backward_block(g, segs, pr.in, gout, grad_channels_last, dqp, doffp, blocks[i]);
    });
    reduce_blocks(g, blocks, true, dk.mutable_data_ptr<T>());
    reduce_blocks(g, blocks, false, dv.mutable_data_ptr<T>());
    if (embedding.has_value()) {
      T* e = demb.mutable_data_ptr<T>();
      std::fill(e, e + g.P * g.Ch, T(0));
      for (const Block<T>& blk : blocks) {
        for (int64_t i = 0; i < g.P * g.Ch; ++i) e[i] += blk.demb[i];
      }
    }
  });
  return {dq, dk, dv, doff, demb};
}

// The page cache (page_cache.h): [cached bytes, cached blocks, limit in bytes, hits, misses].
std::vector<int64_t> cpu_cache_stats() {
  const lda_aqu_pages::Stats s = lda_aqu_pages::page_cache().stats();
  return {s.cached_bytes, s.cached_blocks, s.limit_bytes, s.hits, s.misses};
}

int64_t cpu_cache_set_limit(int64_t bytes) { return lda_aqu_pages::page_cache().set_limit(bytes); }

int64_t cpu_cache_trim(int64_t keep_bytes) { return lda_aqu_pages::page_cache().trim(keep_bytes); }

}  // namespace

TORCH_LIBRARY(lda_aqu_cpp, m) {
  // No tensor arguments, hence catch-all kernels.
  m.def("cpu_cache_stats() -> int[]", &cpu_cache_stats);
  m.def("cpu_cache_set_limit(int bytes) -> int", &cpu_cache_set_limit);
  m.def("cpu_cache_trim(int keep_bytes) -> int", &cpu_cache_trim);
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
