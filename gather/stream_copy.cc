// Streaming row copies. Each vector function carries its ISA in a target
// attribute and is reached only through SelectRowCopy's runtime check.
#include "gather/stream_copy.h"

#include <cstring>

#if SPARSE_MLP_X86
#include <immintrin.h>
#endif

namespace sparse_mlp::gather::internal {
namespace {

void PlainCopy(uint8_t* dst, const uint8_t* src, size_t bytes, ReadAhead* /*ahead*/) {
  std::memcpy(dst, src, bytes);
}

}  // namespace

#if SPARSE_MLP_X86
namespace {

// The read-ahead's progress in the loops below: one Advance per loop step
// (four lines), the head and tail at the end.
inline void Progress(ReadAhead* ahead, size_t bytes) {
  if (ahead != nullptr) ahead->Advance(bytes);
}

// Bytes before dst reaches a multiple of 64 (at most `bytes`).
size_t HeadBytes(const uint8_t* dst, size_t bytes) {
  const size_t misalignment = reinterpret_cast<uintptr_t>(dst) % 64;
  const size_t head = misalignment == 0 ? 0 : 64 - misalignment;
  return head < bytes ? head : bytes;
}

}  // namespace

__attribute__((target("avx2"))) void StreamCopyAvx2(uint8_t* dst, const uint8_t* src,
                                                    size_t bytes, ReadAhead* ahead) {
  const size_t head = HeadBytes(dst, bytes);
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 128 <= bytes; i += 128) {
    Progress(ahead, 128);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 64));
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 96));
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i), a);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 32), b);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 64), c);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + i + 96), d);
  }
  std::memcpy(dst + i, src + i, bytes - i);
  Progress(ahead, head + (bytes - i));
}

__attribute__((target("avx512f"))) void StreamCopyAvx512(uint8_t* dst, const uint8_t* src,
                                                         size_t bytes, ReadAhead* ahead) {
  const size_t head = HeadBytes(dst, bytes);
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 256 <= bytes; i += 256) {
    Progress(ahead, 256);
    const __m512i a = _mm512_loadu_si512(src + i);
    const __m512i b = _mm512_loadu_si512(src + i + 64);
    const __m512i c = _mm512_loadu_si512(src + i + 128);
    const __m512i d = _mm512_loadu_si512(src + i + 192);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), a);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i + 64), b);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i + 128), c);
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i + 192), d);
  }
  const size_t body_end = i;
  for (; i + 64 <= bytes; i += 64) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + i), _mm512_loadu_si512(src + i));
  }
  std::memcpy(dst + i, src + i, bytes - i);
  Progress(ahead, head + (bytes - body_end));
}
#endif  // SPARSE_MLP_X86

RowCopyFn SelectRowCopy(SimdLevel level) {
  switch (Resolve(level)) {
#if SPARSE_MLP_X86
    case SimdLevel::kAvx512:
      return StreamCopyAvx512;
    case SimdLevel::kAvx2:
      return StreamCopyAvx2;
#endif
    default:
      return PlainCopy;
  }
}

}  // namespace sparse_mlp::gather::internal
