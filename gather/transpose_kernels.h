// Tile kernels behind gather/transpose.h (internal to //gather:transpose).
//
// A tile kernel transposes the block src[0, rows) x [0, cols) into
// dst[0, cols) x [0, rows), strides in bytes. The scalar ones work one
// element at a time; the SIMD ones transpose blocks in registers and finish
// ragged edges with the scalar code.
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

// AVX-512 (BW) kernels: 32 x 32 (16-bit) and 16 x 16 (32-bit) blocks that
// load and store whole 64-byte lines; narrower blocks at the edges.
void TileTransposeAvx512Bits32(const uint8_t* src, size_t src_stride,
                               uint8_t* dst, size_t dst_stride, size_t rows,
                               size_t cols);
void TileTransposeAvx512Bits16(const uint8_t* src, size_t src_stride,
                               uint8_t* dst, size_t dst_stride, size_t rows,
                               size_t cols);

// Alignment of the staging tiles the SIMD kernels read from (whole lines).
inline constexpr size_t kStagingAlignment = 64;

// The SIMD kernels write with non-temporal stores where aligned: the writing
// thread calls FinishStreamingStores (platform/store_fence.h) before the
// destination is handed to another thread.

}  // namespace sparse_mlp::gather::internal

#endif  // SPARSE_MLP_GATHER_TRANSPOSE_KERNELS_H_
