// AVX-512 tile transposes with streaming stores.
//
// A transpose is bound by memory traffic, and with ordinary stores every
// destination line is first read (read-for-ownership): 3 bytes of traffic
// per byte moved instead of memcpy's 2. These kernels transpose 64-byte
// wide strips (16 rows of 32-bit or 32 rows of 16-bit elements) so that each
// destination row receives one whole cache line at a time, and write it
// with a non-temporal store that skips the read. The 8x8 register blocks
// are the AVX2 ones; the AVX-512 part is assembling full lines and
// streaming them. Tiles that are not whole strips with 64-byte aligned
// destination lines go to the AVX2 kernel. Callers must _mm_sfence() (done
// by FinishStreamingStores) before another thread reads the destination.
#include <immintrin.h>

#include <cstdint>

#include "gather/transpose_8x8.h"
#include "gather/transpose_kernels.h"

#define SPARSE_MLP_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2")))

namespace sparse_mlp::gather::internal {
namespace {

bool IsLineAligned(const uint8_t* p, size_t stride) {
  return reinterpret_cast<uintptr_t>(p) % 64 == 0 && stride % 64 == 0;
}

}  // namespace

SPARSE_MLP_AVX512 void TileTransposeAvx512Bits32(const uint8_t* src,
                                                 size_t src_stride,
                                                 uint8_t* dst,
                                                 size_t dst_stride, size_t rows,
                                                 size_t cols) {
  if (rows != kStreamingStripRows32 || !IsLineAligned(dst, dst_stride)) {
    return TileTransposeAvx2Bits32(src, src_stride, dst, dst_stride, rows, cols);
  }
  const size_t cols8 = cols / 8 * 8;
  for (size_t c = 0; c < cols8; c += 8) {
    __m256 top[8], bottom[8];
    Transpose8x8Bits32(src + c * 4, src_stride, top);
    Transpose8x8Bits32(src + 8 * src_stride + c * 4, src_stride, bottom);
    for (int i = 0; i < 8; ++i) {
      const __m512 line = _mm512_insertf32x8(_mm512_castps256_ps512(top[i]),
                                             bottom[i], 1);
      _mm512_stream_ps(reinterpret_cast<float*>(dst + (c + i) * dst_stride),
                       line);
    }
  }
  if (cols8 < cols) {
    TileTransposeScalar(src + cols8 * 4, src_stride, dst + cols8 * dst_stride,
                        dst_stride, rows, cols - cols8, 4);
  }
}

SPARSE_MLP_AVX512 void TileTransposeAvx512Bits16(const uint8_t* src,
                                                 size_t src_stride,
                                                 uint8_t* dst,
                                                 size_t dst_stride, size_t rows,
                                                 size_t cols) {
  if (rows != kStreamingStripRows16 || !IsLineAligned(dst, dst_stride)) {
    return TileTransposeAvx2Bits16(src, src_stride, dst, dst_stride, rows, cols);
  }
  const size_t cols8 = cols / 8 * 8;
  for (size_t c = 0; c < cols8; c += 8) {
    __m128i quarter[4][8];
    for (int q = 0; q < 4; ++q) {
      Transpose8x8Bits16(src + 8 * q * src_stride + c * 2, src_stride,
                         quarter[q]);
    }
    for (int i = 0; i < 8; ++i) {
      __m512i line = _mm512_castsi128_si512(quarter[0][i]);
      line = _mm512_inserti32x4(line, quarter[1][i], 1);
      line = _mm512_inserti32x4(line, quarter[2][i], 2);
      line = _mm512_inserti32x4(line, quarter[3][i], 3);
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + (c + i) * dst_stride),
                          line);
    }
  }
  if (cols8 < cols) {
    TileTransposeScalar(src + cols8 * 2, src_stride, dst + cols8 * dst_stride,
                        dst_stride, rows, cols - cols8, 2);
  }
}

void FinishStreamingStores() { _mm_sfence(); }

}  // namespace sparse_mlp::gather::internal
