// A cache of large page-backed blocks for the outputs of the CPU kernels' forward passes.
//
// A fresh tensor of many megabytes comes from mmap (glibc maps every allocation above its 32 MB
// ceiling; PyTorch's CPU allocator adds no cache on top), so the kernel writing it first faults
// every page in and the OS zeroes each one: at the P2 level of an FPN (a 71.6 MB output) the
// zeroing alone was 15% of the fused module's forward (AVX-512 Xeon, 2 threads). The blocks here
// outlive their tensors: when the last reference to a tensor dies, its block goes back to the
// cache and the next call that returns about as much memory writes into pages that are already
// mapped. Like PyTorch's CUDA caching allocator, but bounded: at most `limit` bytes are kept
// (least recently returned blocks are unmapped first); the limit comes from
// $LDA_BENCH_CPU_CACHE_MB (default 256, 0 disables the cache) and can be changed, and the cache
// emptied, at run time (upsamplers.ops.set_cpu_cache_limit, empty_cpu_cache, cpu_cache_info).
// Scratch tensors and gradients do not come from here (sample_attention_kernels.h, empty_output),
// with one exception: the projection's GEMM output (lda_aqu_module.cpp, project).
//
// Only blocks of at least kMinBlock bytes go through the cache; a request takes the smallest
// cached block that holds it if that block is at most 1.5x its size. New blocks are mapped on
// 2 MB boundaries and asked for transparent huge pages (a hint; errors are ignored).
//
// One cache per process, shared by every translation unit of the library (an inline function's
// static); a mutex guards it (tensors die on any thread).

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/MemoryFormat.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <c10/util/strides.h>

#include <cstdint>
#include <cstdlib>
#include <list>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace lda_aqu_pages {

constexpr int64_t kMinBlock = int64_t(2) << 20;
constexpr uint64_t kHuge = uint64_t(2) << 20;

struct Stats {
  int64_t cached_bytes = 0, cached_blocks = 0, limit_bytes = 0, hits = 0, misses = 0;
};

class PageCache {
 public:
  PageCache() {
    const char* env = std::getenv("LDA_BENCH_CPU_CACHE_MB");
    const long long mb = env != nullptr && *env != '\0' ? std::atoll(env) : 256;
    limit_ = mb > 0 ? static_cast<int64_t>(mb) << 20 : 0;
  }

  // A block of at least `bytes` (rounded up to 2 MB) and its size, or {nullptr, 0} when the
  // mapping fails.
  std::pair<void*, int64_t> take(int64_t bytes) {
    const int64_t need = static_cast<int64_t>((static_cast<uint64_t>(bytes) + kHuge - 1) & ~(kHuge - 1));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->size >= need && it->size * 2 <= need * 3 && (best == free_.end() || it->size < best->size)) best = it;
      }
      if (best != free_.end()) {
        const Block b = *best;
        free_.erase(best);
        cached_ -= b.size;
        ++hits_;
        return {b.ptr, b.size};
      }
      ++misses_;
    }
    return {map(need), need};
  }

  // Takes back a block whose tensor died; unmaps the least recently returned blocks over the limit.
  void give(void* ptr, int64_t size) {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      free_.push_back({ptr, size});
      cached_ += size;
      evicted = pop_over(limit_);
    }
    unmap_all(evicted);
  }

  // Sets the limit in bytes (0 disables the cache; what is over it is unmapped); returns the old one.
  int64_t set_limit(int64_t bytes) {
    int64_t old;
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      old = limit_;
      limit_ = bytes > 0 ? bytes : 0;
      evicted = pop_over(limit_);
    }
    unmap_all(evicted);
    return old;
  }

  // Unmaps cached blocks until at most `keep` bytes are cached; returns the bytes unmapped.
  int64_t trim(int64_t keep) {
    std::list<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      evicted = pop_over(keep);
    }
    return unmap_all(evicted);
  }

  bool enabled() {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_ > 0;
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {cached_, static_cast<int64_t>(free_.size()), limit_, hits_, misses_};
  }

 private:
  struct Block {
    void* ptr;
    int64_t size;
  };

  // With the mutex held: takes the least recently returned blocks off the list until at most
  // `keep` bytes are cached (the caller unmaps them after releasing the mutex).
  std::list<Block> pop_over(int64_t keep) {
    std::list<Block> evicted;
    while (cached_ > keep && !free_.empty()) {
      cached_ -= free_.front().size;
      evicted.splice(evicted.end(), free_, free_.begin());
    }
    return evicted;
  }

  // Unmaps the blocks; returns their bytes.
  static int64_t unmap_all(const std::list<Block>& blocks) {
    int64_t bytes = 0;
    for (const Block& b : blocks) {
      unmap(b.ptr, b.size);
      bytes += b.size;
    }
    return bytes;
  }

  static void* map(int64_t size) {
#if defined(__linux__)
    // Over-map by 2 MB and cut the ends off, so that the block starts on a huge-page boundary.
    const size_t span = static_cast<size_t>(size) + kHuge;
    void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t aligned = (begin + kHuge - 1) & ~(uintptr_t(kHuge) - 1);
    if (aligned > begin) munmap(raw, aligned - begin);
    const uintptr_t end = begin + span, used_end = aligned + static_cast<uintptr_t>(size);
    if (end > used_end) munmap(reinterpret_cast<void*>(used_end), end - used_end);
#if defined(MADV_HUGEPAGE)
    madvise(reinterpret_cast<void*>(aligned), static_cast<size_t>(size), MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(aligned);
#else
    return std::aligned_alloc(kHuge, static_cast<size_t>(size));
#endif
  }

  static void unmap(void* ptr, int64_t size) {
#if defined(__linux__)
    munmap(ptr, static_cast<size_t>(size));
#else
    (void)size;
    std::free(ptr);
#endif
  }

  std::mutex mutex_;
  std::list<Block> free_;  // least recently returned first
  int64_t cached_ = 0, limit_ = 0, hits_ = 0, misses_ = 0;
};

// Never destroyed: tensors may die during interpreter shutdown, after static destructors ran.
inline PageCache& page_cache() {
  static PageCache* cache = new PageCache();
  return *cache;
}

// at::empty, with the transparent-huge-page hint on the whole 2 MB pages inside the tensor.
inline at::Tensor empty_hinted(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format) {
  at::Tensor t = at::empty(sizes, options, format);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(uintptr_t(kHuge) - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(uintptr_t(kHuge) - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return t;
}

// An uninitialised dense CPU tensor of these sizes in `format`: from the cache when it is large
// enough and the cache is on, else from at::empty (hinted to use huge pages).
inline at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options,
                        at::MemoryFormat format = at::MemoryFormat::Contiguous) {
  const int64_t bytes =
      c10::multiply_integers(sizes) * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  PageCache& cache = page_cache();
  if (bytes < kMinBlock || !options.device().is_cpu() || !cache.enabled()) return empty_hinted(sizes, options, format);
  const auto [ptr, size] = cache.take(bytes);
  if (ptr == nullptr) return empty_hinted(sizes, options, format);
  TORCH_CHECK(format != at::MemoryFormat::ChannelsLast || sizes.size() == 4, "channels-last needs 4 dimensions");
  const c10::DimVector strides = format == at::MemoryFormat::ChannelsLast
                                    ? c10::DimVector(c10::get_channels_last_strides_2d(sizes))
                                    : c10::contiguous_strides(sizes);
  return at::from_blob(
      ptr, sizes, strides, [size = size](void* p) { page_cache().give(p, size); }, options.device(at::kCPU));
}

}  // namespace lda_aqu_pages
