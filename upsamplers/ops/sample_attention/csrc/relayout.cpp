// The operator lda_aqu_cpp::relayout_: dst = src or dst += src between the two dense layouts of a
// 4-D map, NCHW and channels-last (NHWC memory), in either direction.
//
// The module's backward (upsamplers/ops/lda_aqu_module/backward.py) moves full-resolution maps
// between the layouts its ATen kernels are fastest in (oneDNN's convolutions and LayerNorm over
// channels want channels-last; the attention's gradients are NCHW). ATen's copy_ and add between
// the two layouts stride through one side element by element: at P2 (2 x 32 x 208 x 336, 18 MB)
// a conversion took 13 ms and an add of two 1 x 256 x 104 x 168 maps 32 ms on the 2-core machine.
// Here every image row goes through the in-register tile transposes of the attention kernels
// (sample_attention_kernels.h), so both sides are read and written with unit stride.

#include "sample_attention_kernels.h"

namespace {

enum class Layout { kNchw, kChannelsLast };

// The dense layout of t; a map whose NCHW and channels-last memory orders coincide (one channel,
// or one pixel) counts as NCHW.
Layout dense_layout(const at::Tensor& t, const char* name) {
  if (t.is_contiguous()) return Layout::kNchw;
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), "relayout_: ", name,
              " must be dense NCHW or dense channels-last");
  return Layout::kChannelsLast;
}

// y[i] (+)= x[i] for i < n.
template <typename T>
void copy_or_add(const T* x, T* y, int64_t n, bool accumulate) {
  constexpr int L = Simd<T>::L;
  int64_t i = 0;
  if (accumulate) {
    for (; i + L <= n; i += L) vstore(y + i, vload(y + i) + vload(x + i));
    for (; i < n; ++i) y[i] += x[i];
  } else {
    std::memcpy(y, x, n * sizeof(T));
  }
}

template <typename T>
void relayout_kernel(T* dst, Layout dst_layout, const T* src, Layout src_layout, int64_t B, int64_t C, int64_t H,
                     int64_t W, bool accumulate) {
  const int64_t HW = H * W, row = W * C;  // one image row holds W * C elements in either layout
  if (dst_layout == src_layout) {
    const int64_t n = B * C * HW;
    at::parallel_for(0, n, int64_t(1) << 16, [&](int64_t i0, int64_t i1) {
      copy_or_add(src + i0, dst + i0, i1 - i0, accumulate);
    });
    return;
  }
  const bool to_channels_last = dst_layout == Layout::kChannelsLast;
  at::parallel_for(0, B * H, grain_rows(row), [&](int64_t r0, int64_t r1) {
    // Accumulation transposes a row into a buffer first (it stays in cache), then adds it.
    std::vector<T> buffer(accumulate ? row : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / H, y = r % H;
      const int64_t nchw = b * C * HW + y * W, nhwc = (b * HW + y * W) * C;  // the row's first element
      if (to_channels_last) {
        T* out = accumulate ? buffer.data() : dst + nhwc;
        load_row(src + nchw, C, HW, W, out);  // out[x * C + c] = src[c * HW + x]
        if (accumulate) copy_or_add(out, dst + nhwc, row, true);
      } else if (!accumulate) {
        // dst[c * HW + x] = src[x * C + c]
        transpose(src + nhwc, C, W, C, dst + nchw, HW);
      } else {
        transpose(src + nhwc, C, W, C, buffer.data(), W);
        for (int64_t c = 0; c < C; ++c) copy_or_add(buffer.data() + c * W, dst + nchw + c * HW, W, true);
      }
    }
  });
}

void relayout_(const at::Tensor& dst, const at::Tensor& src, bool accumulate) {
  TORCH_CHECK(dst.dim() == 4 && src.dim() == 4 && dst.sizes() == src.sizes(), "relayout_: dst and src must be ",
              "4-D maps of one shape, got ", dst.sizes(), " and ", src.sizes());
  TORCH_CHECK(dst.device().is_cpu() && src.device().is_cpu(), "relayout_: CPU tensors");
  TORCH_CHECK(dst.scalar_type() == src.scalar_type() &&
                  (dst.scalar_type() == at::kFloat || dst.scalar_type() == at::kDouble),
              "relayout_: float32 or float64, one dtype for both");
  if (dst.numel() == 0) return;
  TORCH_CHECK(dst.data_ptr() != src.data_ptr(), "relayout_: dst and src must be different tensors");
  const Layout dl = dense_layout(dst, "dst"), sl = dense_layout(src, "src");
  dispatch_float(dst.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    relayout_kernel<T>(dst.mutable_data_ptr<T>(), dl, src.const_data_ptr<T>(), sl, dst.size(0), dst.size(1),
                       dst.size(2), dst.size(3), accumulate);
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lda_aqu_cpp, m) { m.def("relayout_(Tensor(a!) dst, Tensor src, bool accumulate) -> ()"); }

TORCH_LIBRARY_IMPL(lda_aqu_cpp, CPU, m) { m.impl("relayout_", TORCH_FN(relayout_)); }
