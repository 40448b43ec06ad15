// AVX2 tile transposes: 8x8 blocks of 32-bit or 16-bit elements transposed
// in registers (transpose_8x8.h), ragged edges by the scalar kernel.
//
// The fp32 destination is written with non-temporal stores when its rows are
// aligned for them: a transposed copy of a weight matrix is far larger than
// the caches, so ordinary stores would first read every destination line
// (read-for-ownership) only to evict it again. Walking a tile column-block by
// column-block, each destination row receives consecutive 32-byte (fp32) or
// 16-byte (16-bit) pieces that the write-combining buffers merge into whole
// lines. Compiled per function with a target attribute and only reached
// after the runtime check in transpose.cc; callers sfence
// (FinishStreamingStores, platform/store_fence.h) before another thread
// reads the destination.
#include "platform/simd_level.h"  // SPARSE_MLP_X86

#if SPARSE_MLP_X86
#include <immintrin.h>

#include "gather/transpose_8x8.h"
#include "gather/transpose_kernels.h"

#define SPARSE_MLP_AVX2 __attribute__((target("avx2")))

namespace sparse_mlp::gather::internal {
namespace {

template <bool kStream>
SPARSE_MLP_AVX2 inline void Block32(const uint8_t* src, size_t src_stride,
                                    uint8_t* dst, size_t dst_stride) {
  __m256 columns[8];
  Transpose8x8Bits32(src, src_stride, columns);
  for (int i = 0; i < 8; ++i) {
    float* out = reinterpret_cast<float*>(dst + i * dst_stride);
    if (kStream) {
      _mm256_stream_ps(out, columns[i]);
    } else {
      _mm256_storeu_ps(out, columns[i]);
    }
  }
}

// Ordinary stores: 16-byte streaming pieces need four blocks to fill a
// line, and the partly written lines get evicted from the write-combining
// buffers first (measured: the bf16 construction took 2.5x as long).
SPARSE_MLP_AVX2 inline void Block16(const uint8_t* src, size_t src_stride,
                                    uint8_t* dst, size_t dst_stride) {
  __m128i columns[8];
  Transpose8x8Bits16(src, src_stride, columns);
  for (int i = 0; i < 8; ++i) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i * dst_stride), columns[i]);
  }
}

template <size_t kElemBytes, void (*kBlock)(const uint8_t*, size_t, uint8_t*,
                                            size_t)>
SPARSE_MLP_AVX2 inline void TileTransposeBlocks(const uint8_t* src,
                                                size_t src_stride, uint8_t* dst,
                                                size_t dst_stride, size_t rows,
                                                size_t cols) {
  const size_t rows8 = rows / 8 * 8;
  const size_t cols8 = cols / 8 * 8;
  for (size_t c = 0; c < cols8; c += 8) {
    for (size_t r = 0; r < rows8; r += 8) {
      kBlock(src + r * src_stride + c * kElemBytes, src_stride,
             dst + c * dst_stride + r * kElemBytes, dst_stride);
    }
  }
  // Right edge (columns past cols8, all rows) and bottom edge (rows past
  // rows8, the columns the blocks covered).
  if (cols8 < cols) {
    TileTransposeScalar(src + cols8 * kElemBytes, src_stride,
                        dst + cols8 * dst_stride, dst_stride, rows, cols - cols8,
                        kElemBytes);
  }
  if (rows8 < rows) {
    TileTransposeScalar(src + rows8 * src_stride, src_stride,
                        dst + rows8 * kElemBytes, dst_stride, rows - rows8, cols8,
                        kElemBytes);
  }
}

// Streaming stores need every 8-element destination piece aligned to its
// size: the destination tile start and the row stride.
bool StreamAligned(const uint8_t* dst, size_t dst_stride, size_t piece_bytes) {
  return (reinterpret_cast<uintptr_t>(dst) | dst_stride) % piece_bytes == 0;
}

}  // namespace

SPARSE_MLP_AVX2 void TileTransposeAvx2Bits32(const uint8_t* src,
                                             size_t src_stride, uint8_t* dst,
                                             size_t dst_stride, size_t rows,
                                             size_t cols) {
  if (StreamAligned(dst, dst_stride, 32)) {
    TileTransposeBlocks<4, Block32<true>>(src, src_stride, dst, dst_stride, rows, cols);
  } else {
    TileTransposeBlocks<4, Block32<false>>(src, src_stride, dst, dst_stride, rows, cols);
  }
}

SPARSE_MLP_AVX2 void TileTransposeAvx2Bits16(const uint8_t* src,
                                             size_t src_stride, uint8_t* dst,
                                             size_t dst_stride, size_t rows,
                                             size_t cols) {
  TileTransposeBlocks<2, Block16>(src, src_stride, dst, dst_stride, rows, cols);
}


}  // namespace sparse_mlp::gather::internal

#endif  // SPARSE_MLP_X86
