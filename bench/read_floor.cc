#include "bench/read_floor.h"

#include <omp.h>

#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
// GCC 12's own AVX-512 header trips -Wuninitialized where it inlines (see
// mlp/kernels_avx512.cc).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#endif

#include "platform/simd_level.h"

namespace sparse_mlp::bench {
namespace {

volatile uint64_t g_sink;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) uint64_t ReadAvx512(const uint8_t* p, size_t bytes) {
  __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
  size_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    a = _mm512_xor_si512(a, _mm512_loadu_si512(p + i));
    b = _mm512_xor_si512(b, _mm512_loadu_si512(p + i + 64));
    c = _mm512_xor_si512(c, _mm512_loadu_si512(p + i + 128));
    d = _mm512_xor_si512(d, _mm512_loadu_si512(p + i + 192));
  }
  uint64_t tail = 0;
  for (; i < bytes; ++i) tail += p[i];
  const __m512i all = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d));
  return static_cast<uint64_t>(_mm512_reduce_add_epi64(all)) + tail;
}
#endif

uint64_t ReadPlain(const uint8_t* p, size_t bytes) {
  uint64_t s = 0;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    s ^= w;
  }
  return s;
}

uint64_t Read(const uint8_t* p, size_t bytes) {
#if defined(__x86_64__)
  static const bool avx512 = IsSupported(SimdLevel::kAvx512);
  if (avx512) return ReadAvx512(p, bytes);
#endif
  return ReadPlain(p, bytes);
}

}  // namespace

void ReadRanges(const std::vector<ByteRange>& ranges, int threads) {
#pragma omp parallel num_threads(threads)
  {
    const size_t team = static_cast<size_t>(omp_get_num_threads());
    const size_t tid = static_cast<size_t>(omp_get_thread_num());
    uint64_t s = 0;
    for (const ByteRange& r : ranges) {
      const size_t begin = r.bytes * tid / team / 64 * 64;
      const size_t end = tid + 1 == team ? r.bytes : r.bytes * (tid + 1) / team / 64 * 64;
      s += Read(static_cast<const uint8_t*>(r.data) + begin, end - begin);
    }
    g_sink = s;
  }
}

Scrubber::Scrubber(size_t bytes)
    : buffer_(*memory::AlignedBuffer::Allocate(bytes, memory::kCacheLineBytes,
                                               memory::HugePageAdvice::kHugePages)) {
  std::memset(buffer_.data(), 1, buffer_.size());
}

}  // namespace sparse_mlp::bench
