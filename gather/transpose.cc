#include "gather/transpose.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "gather/transpose_kernels.h"

namespace sparse_mlp::gather {
namespace {

// Below this many bytes a second thread costs more than it saves.
constexpr size_t kParallelTransposeMinBytes = size_t{1} << 20;

template <size_t kElemBytes>
void ScalarTile(const uint8_t* src, size_t src_stride, uint8_t* dst,
                size_t dst_stride, size_t rows, size_t cols) {
  internal::TileTransposeScalar(src, src_stride, dst, dst_stride, rows, cols,
                                kElemBytes);
}

// A tile kernel and the tile it is walked with. Each thread takes a band of
// source columns and walks it tile column by tile column, top to bottom:
// every destination row then receives tile_rows-element runs, front to back,
// while the next tile's source rows are prefetched. Shapes measured on the
// llama-3.2-3b down matrix (2 threads; 256 columns = 1 KiB fp32 rows):
//  - fp32, 8x8 AVX2 blocks + streaming stores: 64 x 256 tiles 17.6 GB/s
//    (32 x 256: 15.1, 128 x 256: 14.6, 16 x 512: 9.2);
//  - 16-bit, AVX-512 16x8 permute blocks + streaming stores: 128 x 256
//    tiles 11.8 GB/s (AVX2 8x8 blocks: 8.6);
//  - scalar: 64 x 64.
struct TileKernel {
  internal::TileTransposeFn transpose;
  size_t tile_rows;
  size_t tile_cols;
};

TileKernel SelectTileKernel(size_t elem_bytes, SimdLevel level) {
  const SimdLevel resolved = Resolve(level);
  if (resolved != SimdLevel::kScalar) {
    if (elem_bytes == 4) return {internal::TileTransposeAvx2Bits32, 64, 256};
    if (elem_bytes == 2) {
      return resolved == SimdLevel::kAvx512
                 ? TileKernel{internal::TileTransposeAvx512Bits16, 128, 256}
                 : TileKernel{internal::TileTransposeAvx2Bits16, 64, 256};
    }
  }
  switch (elem_bytes) {
    case 1:
      return {ScalarTile<1>, 64, 64};
    case 2:
      return {ScalarTile<2>, 64, 64};
    case 4:
      return {ScalarTile<4>, 64, 64};
    default:
      return {ScalarTile<8>, 64, 64};
  }
}

// Pulls the source lines of a tile toward L2 ahead of its turn: tile rows
// sit a full matrix row apart, too far for the hardware prefetchers.
void PrefetchTile(const uint8_t* src, size_t src_stride, size_t rows,
                  size_t row_bytes) {
  for (size_t r = 0; r < rows; ++r) {
    for (size_t b = 0; b < row_bytes; b += 64) {
      __builtin_prefetch(src + r * src_stride + b, 0, 2);
    }
  }
}

absl::Status ValidateMatrices(ConstRowsView src, size_t cols, size_t elem_bytes,
                              RowsView dst, size_t dst_rows_needed) {
  if (elem_bytes != 1 && elem_bytes != 2 && elem_bytes != 4 && elem_bytes != 8) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "element size %u is not supported (1, 2, 4 or 8 bytes)", elem_bytes));
  }
  size_t src_row_bytes, dst_row_bytes;
  if (__builtin_mul_overflow(cols, elem_bytes, &src_row_bytes) ||
      __builtin_mul_overflow(src.num_rows, elem_bytes, &dst_row_bytes)) {
    return absl::InvalidArgumentError("matrix row size overflows size_t");
  }
  if (src_row_bytes > src.stride_bytes && src.num_rows > 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "source rows of %u columns x %u bytes do not fit the stride of %u bytes",
        cols, elem_bytes, src.stride_bytes));
  }
  if (dst_row_bytes > dst.stride_bytes && dst_rows_needed > 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "destination rows of %u elements x %u bytes do not fit the stride of %u "
        "bytes",
        src.num_rows, elem_bytes, dst.stride_bytes));
  }
  if (dst.num_rows < dst_rows_needed) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "destination has %u rows, needs %u", dst.num_rows, dst_rows_needed));
  }
  if (src.num_rows > 0 && dst_rows_needed > 0 &&
      (src.data == nullptr || dst.data == nullptr)) {
    return absl::InvalidArgumentError("transpose of a null matrix");
  }
  return absl::OkStatus();
}

// Splits [0, n) into `parts` ranges whose boundaries are multiples of 8
// (whole 8x8 register blocks per thread).
size_t BandBegin(size_t n, size_t parts, size_t p) {
  if (p >= parts) return n;
  const size_t blocks = (n + 7) / 8;
  return std::min(n, blocks * p / parts * 8);
}

int ThreadsFor(size_t bytes, int num_threads) {
  return bytes < kParallelTransposeMinBytes || num_threads < 1 ? 1 : num_threads;
}

template <size_t kElemBytes>
void GatherColumnsTyped(const uint8_t* src, size_t src_stride, size_t rows,
                        const uint32_t* columns, size_t k_begin, size_t k_end,
                        uint8_t* dst, size_t dst_stride) {
  // A block of rows whose elements fill one destination cache line; its
  // source rows (block x row length) stay in L2 while every column is read.
  constexpr size_t kRowBlock = 64 / kElemBytes;
  for (size_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const size_t r1 = std::min(rows, r0 + kRowBlock);
    for (size_t k = k_begin; k < k_end; ++k) {
      const uint8_t* in = src + r0 * src_stride + size_t{columns[k]} * kElemBytes;
      uint8_t* out = dst + k * dst_stride + r0 * kElemBytes;
      for (size_t r = 0; r < r1 - r0; ++r) {
        std::memcpy(out + r * kElemBytes, in + r * src_stride, kElemBytes);
      }
    }
  }
}

using GatherColumnsFn = void (*)(const uint8_t*, size_t, size_t,
                                 const uint32_t*, size_t, size_t, uint8_t*,
                                 size_t);

GatherColumnsFn SelectGatherColumns(size_t elem_bytes) {
  switch (elem_bytes) {
    case 1:
      return GatherColumnsTyped<1>;
    case 2:
      return GatherColumnsTyped<2>;
    case 4:
      return GatherColumnsTyped<4>;
    default:
      return GatherColumnsTyped<8>;
  }
}

}  // namespace

absl::Status Transpose(ConstRowsView src, size_t cols, size_t elem_bytes,
                       RowsView dst, const TransposeOptions& options) {
  if (dst.num_rows != cols) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "transpose of a matrix with %u columns needs %u destination rows, got %u",
        cols, cols, dst.num_rows));
  }
  if (absl::Status s = ValidateMatrices(src, cols, elem_bytes, dst, cols); !s.ok()) {
    return s;
  }
  const size_t rows = src.num_rows;
  if (rows == 0 || cols == 0) return absl::OkStatus();
  const TileKernel kernel = SelectTileKernel(elem_bytes, options.simd);
  const auto* in = static_cast<const uint8_t*>(src.data);
  auto* out = static_cast<uint8_t*>(dst.data);
  const int threads = ThreadsFor(rows * cols * elem_bytes, options.num_threads);

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const size_t parts = static_cast<size_t>(omp_get_num_threads());
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    const size_t c_end = BandBegin(cols, parts, t + 1);
    for (size_t c0 = BandBegin(cols, parts, t); c0 < c_end;
         c0 += kernel.tile_cols) {
      const size_t tile_cols = std::min(kernel.tile_cols, c_end - c0);
      for (size_t r0 = 0; r0 < rows; r0 += kernel.tile_rows) {
        const size_t next = r0 + kernel.tile_rows;
        if (next < rows) {
          PrefetchTile(in + next * src.stride_bytes + c0 * elem_bytes,
                       src.stride_bytes, std::min(kernel.tile_rows, rows - next),
                       tile_cols * elem_bytes);
        }
        kernel.transpose(in + r0 * src.stride_bytes + c0 * elem_bytes,
                         src.stride_bytes,
                         out + c0 * dst.stride_bytes + r0 * elem_bytes,
                         dst.stride_bytes, std::min(kernel.tile_rows, rows - r0),
                         tile_cols);
      }
    }
    internal::FinishStreamingStores();
  }
  return absl::OkStatus();
}

absl::Status GatherColumns(ConstRowsView src, size_t cols, size_t elem_bytes,
                           absl::Span<const uint32_t> columns, RowsView dst,
                           const TransposeOptions& options) {
  if (absl::Status s =
          ValidateMatrices(src, cols, elem_bytes, dst, columns.size());
      !s.ok()) {
    return s;
  }
  for (size_t k = 0; k < columns.size(); ++k) {
    if (columns[k] >= cols) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "column index %u at position %u is out of range for %u columns",
          columns[k], k, cols));
    }
  }
  const size_t rows = src.num_rows;
  if (rows == 0 || columns.empty()) return absl::OkStatus();
  const GatherColumnsFn gather = SelectGatherColumns(elem_bytes);
  const auto* in = static_cast<const uint8_t*>(src.data);
  auto* out = static_cast<uint8_t*>(dst.data);
  const int threads =
      ThreadsFor(rows * columns.size() * elem_bytes, options.num_threads);

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const size_t parts = static_cast<size_t>(omp_get_num_threads());
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    const size_t n = columns.size();
    gather(in, src.stride_bytes, rows, columns.data(), n * t / parts,
           n * (t + 1) / parts, out, dst.stride_bytes);
  }
  return absl::OkStatus();
}

}  // namespace sparse_mlp::gather
