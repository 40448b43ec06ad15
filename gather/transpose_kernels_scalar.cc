// Element-by-element tile transpose: the portable path and the SIMD
// kernels' edge handler.
#include <cstring>

#include "gather/transpose_kernels.h"

namespace sparse_mlp::gather::internal {
namespace {

template <size_t kElemBytes>
void TileTransposeTyped(const uint8_t* src, size_t src_stride, uint8_t* dst,
                        size_t dst_stride, size_t rows, size_t cols) {
  for (size_t c = 0; c < cols; ++c) {
    uint8_t* out = dst + c * dst_stride;
    const uint8_t* in = src + c * kElemBytes;
    for (size_t r = 0; r < rows; ++r) {
      std::memcpy(out + r * kElemBytes, in + r * src_stride, kElemBytes);
    }
  }
}

}  // namespace

void TileTransposeScalar(const uint8_t* src, size_t src_stride, uint8_t* dst,
                         size_t dst_stride, size_t rows, size_t cols,
                         size_t elem_bytes) {
  switch (elem_bytes) {
    case 1:
      return TileTransposeTyped<1>(src, src_stride, dst, dst_stride, rows, cols);
    case 2:
      return TileTransposeTyped<2>(src, src_stride, dst, dst_stride, rows, cols);
    case 4:
      return TileTransposeTyped<4>(src, src_stride, dst, dst_stride, rows, cols);
    case 8:
      return TileTransposeTyped<8>(src, src_stride, dst, dst_stride, rows, cols);
  }
}

}  // namespace sparse_mlp::gather::internal
