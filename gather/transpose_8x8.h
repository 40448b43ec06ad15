// 8x8 in-register transposes shared by the AVX2 and AVX-512 tile kernels
// (internal to //gather:transpose). Static inline with AVX2 target
// attributes: each including kernel file gets its own copy, so no
// out-of-line AVX2 code can be picked by the linker for a non-AVX2 caller.
#ifndef SPARSE_MLP_GATHER_TRANSPOSE_8X8_H_
#define SPARSE_MLP_GATHER_TRANSPOSE_8X8_H_

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace sparse_mlp::gather::internal {

// out[c] = column c of the 8x8 block of 32-bit elements at src.
// Rows i and i + 4 are loaded as the two 128-bit lanes of one register, so a
// 4x4 in-lane transpose (8 shuffles per half) finishes the job without the
// cross-lane permutes of the textbook version.
__attribute__((target("avx2"))) static inline void Transpose8x8Bits32(
    const uint8_t* src, size_t src_stride, __m256 out[8]) {
  for (int half = 0; half < 2; ++half) {
    __m256 x[4];
    for (int i = 0; i < 4; ++i) {
      const float* top =
          reinterpret_cast<const float*>(src + i * src_stride) + 4 * half;
      const float* bottom =
          reinterpret_cast<const float*>(src + (i + 4) * src_stride) + 4 * half;
      x[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(top)),
                                  _mm_loadu_ps(bottom), 1);
    }
    const __m256 t0 = _mm256_unpacklo_ps(x[0], x[1]);
    const __m256 t1 = _mm256_unpackhi_ps(x[0], x[1]);
    const __m256 t2 = _mm256_unpacklo_ps(x[2], x[3]);
    const __m256 t3 = _mm256_unpackhi_ps(x[2], x[3]);
    out[4 * half + 0] = _mm256_shuffle_ps(t0, t2, 0x44);
    out[4 * half + 1] = _mm256_shuffle_ps(t0, t2, 0xEE);
    out[4 * half + 2] = _mm256_shuffle_ps(t1, t3, 0x44);
    out[4 * half + 3] = _mm256_shuffle_ps(t1, t3, 0xEE);
  }
}

// out[c] = column c of the 8x8 block of 16-bit elements at src
// (unpack 16 -> 32 -> 64-bit interleaves).
__attribute__((target("avx2"))) static inline void Transpose8x8Bits16(
    const uint8_t* src, size_t src_stride, __m128i out[8]) {
  __m128i r[8];
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i * src_stride));
  }
  __m128i a[8];
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  __m128i b[8];
  for (int half = 0; half < 2; ++half) {
    const int k = 4 * half;
    b[k + 0] = _mm_unpacklo_epi32(a[k + 0], a[k + 2]);
    b[k + 1] = _mm_unpackhi_epi32(a[k + 0], a[k + 2]);
    b[k + 2] = _mm_unpacklo_epi32(a[k + 1], a[k + 3]);
    b[k + 3] = _mm_unpackhi_epi32(a[k + 1], a[k + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = _mm_unpacklo_epi64(b[i], b[i + 4]);
    out[2 * i + 1] = _mm_unpackhi_epi64(b[i], b[i + 4]);
  }
}

}  // namespace sparse_mlp::gather::internal

#endif  // SPARSE_MLP_GATHER_TRANSPOSE_8X8_H_
