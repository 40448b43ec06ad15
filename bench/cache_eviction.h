// EvictFromCaches: the benchmarks' way to start every timed copy from cold,
// clean caches.
#ifndef SPARSE_MLP_BENCH_CACHE_EVICTION_H_
#define SPARSE_MLP_BENCH_CACHE_EVICTION_H_

#include <cpuid.h>
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace sparse_mlp::bench {

namespace internal {

__attribute__((target("clflushopt"))) inline void FlushLinesOpt(const uint8_t* p,
                                                                const uint8_t* end) {
  for (; p < end; p += 64) _mm_clflushopt(const_cast<uint8_t*>(p));
}

inline bool HasClflushopt() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (ebx & (1u << 23)) != 0;
}

}  // namespace internal

// Writes back and drops every cache line of [data, data + bytes), so that
// the next timed copy finds neither those lines cached nor their dirty
// copies waiting to be written back. Why: glibc's memcpy (the floor) writes
// with ordinary stores here (its streaming threshold follows the 508 MB L3
// this VM reports), leaving up to a last-level cache of dirty lines behind,
// while the kernels measured against it stream their stores. Left alone,
// the floor's write-back would be paid by whatever is timed next, a kernel
// or a baseline. Called untimed on the bytes each timed copy read and wrote;
// O(bytes / 64) flushes.
inline void EvictFromCaches(const void* data, size_t bytes) {
  static const bool has_clflushopt = internal::HasClflushopt();
  const uintptr_t first = reinterpret_cast<uintptr_t>(data) & ~uintptr_t{63};
  const auto* p = reinterpret_cast<const uint8_t*>(first);
  const auto* end = static_cast<const uint8_t*>(data) + bytes;
  if (has_clflushopt) {
    internal::FlushLinesOpt(p, end);
  } else {
    for (; p < end; p += 64) _mm_clflush(p);
  }
  _mm_mfence();
}

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_CACHE_EVICTION_H_
