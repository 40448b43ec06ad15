// Tile kernels behind gather/transpose.h (internal to //gather:transpose).
//
// A tile kernel transposes the block src[0, rows) x [0, cols) into
// dst[0, cols) x [0, rows), strides in bytes. The scalar ones work one
// element at a time; the AVX2 ones transpose 8x8 blocks in registers and
// finish ragged edges with the scalar code.
#ifndef SPARSE_MLP_GATHER_TRANSPOSE_KERNELS_H_
#define SPARSE_MLP_GATHER_TRANSPOSE_KERNELS_H_

#include <cstddef>
#include <cstdint>

namespace sparse_mlp::gather::internal {

using TileTransposeFn = void (*)(const uint8_t* src, size_t src_stride,
                                 uint8_t* dst, size_t dst_stride, size_t rows,
                                 size_t cols);

// Element-by-element tile transpose for any supported element size: the
// reference, and the edge handler of the SIMD kernels.
void TileTransposeScalar(const uint8_t* src, size_t src_stride, uint8_t* dst,
                         size_t dst_stride, size_t rows, size_t cols,
                         size_t elem_bytes);

void TileTransposeAvx2Bits32(const uint8_t* src, size_t src_stride,
                             uint8_t* dst, size_t dst_stride, size_t rows,
                             size_t cols);
void TileTransposeAvx2Bits16(const uint8_t* src, size_t src_stride,
                             uint8_t* dst, size_t dst_stride, size_t rows,
                             size_t cols);

// Streaming-store kernels (AVX-512 level): a tile of exactly
// kStreamingStripRows32 (32-bit) / kStreamingStripRows16 (16-bit) rows with
// 64-byte aligned destination lines is written one whole line per
// destination row with non-temporal stores; any other tile falls back to
// the AVX2 kernel. FinishStreamingStores orders those stores before the
// caller hands the destination to another thread.
inline constexpr size_t kStreamingStripRows32 = 16;
inline constexpr size_t kStreamingStripRows16 = 32;
void TileTransposeAvx512Bits32(const uint8_t* src, size_t src_stride,
                               uint8_t* dst, size_t dst_stride, size_t rows,
                               size_t cols);
void TileTransposeAvx512Bits16(const uint8_t* src, size_t src_stride,
                               uint8_t* dst, size_t dst_stride, size_t rows,
                               size_t cols);
void FinishStreamingStores();

}  // namespace sparse_mlp::gather::internal

#endif  // SPARSE_MLP_GATHER_TRANSPOSE_KERNELS_H_
