#include "gather/transpose.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>

#include "absl/strings/str_format.h"
#include "gather/partition.h"
#include "gather/transpose_kernels.h"
#include "memory/size_math.h"
#include "platform/store_fence.h"
#include "platform/threads.h"

namespace sparse_mlp::gather {
namespace {

// Below this many bytes a second thread costs more than it saves.

template <size_t kElemBytes>
void ScalarTile(const uint8_t* src, size_t src_stride, uint8_t* dst,
                size_t dst_stride, size_t rows, size_t cols) {
  internal::TileTransposeScalar(src, src_stride, dst, dst_stride, rows, cols,
                                kElemBytes);
}

// A tile kernel and the tile it is walked with.
//
// Why staging: a transpose reads one matrix along rows and writes the other
// along columns, and DRAM rewards long runs on both sides (measured here,
// one thread: strided reads of 512-byte runs 14 GB/s, 2 KiB runs 19 GB/s;
// streaming writes of 64-byte runs 5 GB/s, >= 512-byte runs 35 GB/s).
// Reading source rows straight into the register blocks also finds the
// rows, a power-of-two stride apart, fighting over the same L1 sets, so a
// line read in pieces is fetched again for every piece. So a SIMD tile is
// first copied row by row (long read runs) into a small per-thread staging
// buffer whose padded stride spreads rows over the L1 sets, then transposed
// block column by block column: each destination row receives a run of
// tile_rows elements in whole-line streaming stores. Tiles of 128 KiB leave
// L2 room for the next tile, whose rows are prefetched while this one is
// written. Measured on the llama-3.2-3b down matrix, 1 thread: fp32 8.5 ->
// 12 GB/s, bf16 5 -> 10 GB/s against the unstaged kernels.
struct TileKernel {
  internal::TileTransposeFn transpose;
  size_t tile_rows;
  size_t tile_cols;
  bool staged;
};

// Staging rows are padded by a line so consecutive rows start in
// different L1 sets.
constexpr size_t kStagingPadBytes = 64;

struct StagingDeleter {
  void operator()(uint8_t* p) const {
    ::operator delete[](p, std::align_val_t{internal::kStagingAlignment});
  }
};

size_t StagingStride(const TileKernel& kernel, size_t elem_bytes) {
  return kernel.tile_cols * elem_bytes + kStagingPadBytes;
}

// The SIMD kernels stage their tiles (see above); tile shapes measured on
// the llama-3.2-3b down matrix, 2 threads, in minutes when memcpy ran at
// 35-39 GB/s (//bench:gather, x memcpy): fp32 256 x 128 (512-byte read
// runs, 1 KiB write runs) 0.54 against 0.47 for 128 x 256 and 0.49-0.56
// for 512 x 64-128; 16-bit 256 x 256 (512-byte runs both ways) 0.46-0.49,
// 512 x 128-256 as good, 128 x 1024 and 256 x 512 0.40-0.44. Longer write
// runs pay more than longer read runs. When memcpy runs at ~20 GB/s all
// shapes are within a few percent. The scalar reference walks 64 x 64 tiles
// in place.
TileKernel SelectTileKernel(size_t elem_bytes, SimdLevel level) {
  const SimdLevel resolved = Resolve(level);
#if SPARSE_MLP_X86
  if (resolved != SimdLevel::kScalar) {
    const bool avx512 = resolved == SimdLevel::kAvx512;
    if (elem_bytes == 4) {
      return {avx512 ? internal::TileTransposeAvx512Bits32
                     : internal::TileTransposeAvx2Bits32,
              256, 128, true};
    }
    if (elem_bytes == 2) {
      return {avx512 ? internal::TileTransposeAvx512Bits16
                     : internal::TileTransposeAvx2Bits16,
              256, 256, true};
    }
  }
#else
  (void)resolved;  // only the scalar kernels exist off x86
#endif
  switch (elem_bytes) {
    case 1:
      return {ScalarTile<1>, 64, 64, false};
    case 2:
      return {ScalarTile<2>, 64, 64, false};
    case 4:
      return {ScalarTile<4>, 64, 64, false};
    default:
      return {ScalarTile<8>, 64, 64, false};
  }
}

// Pulls the source lines of the next tile toward L2 while this one is
// written: tile rows sit a full matrix row apart, too far for the hardware
// prefetchers.
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
  const absl::StatusOr<size_t> src_row = memory::CheckedMul(cols, elem_bytes);
  if (!src_row.ok()) return src_row.status();
  const absl::StatusOr<size_t> dst_row = memory::CheckedMul(src.num_rows, elem_bytes);
  if (!dst_row.ok()) return dst_row.status();
  const size_t src_row_bytes = *src_row, dst_row_bytes = *dst_row;
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

// Precondition: num_threads validated (ValidateNumThreads).
int ThreadsFor(size_t bytes, int num_threads) {
  return bytes < kParallelMinBytes ? 1 : num_threads;
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
  if (absl::Status s = ValidateNumThreads(options.num_threads); !s.ok()) return s;
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

  // One staging tile per thread, allocated per call (144 KiB each): the
  // transpose runs once per weight matrix, and a buffer owned by the call
  // keeps the function reentrant.
  const size_t staging_stride = StagingStride(kernel, elem_bytes);
  const size_t staging_bytes = kernel.staged ? kernel.tile_rows * staging_stride : 0;
  std::unique_ptr<uint8_t[], StagingDeleter> staging;
  if (kernel.staged) {
    staging.reset(static_cast<uint8_t*>(::operator new[](
        staging_bytes * static_cast<size_t>(threads),
        std::align_val_t{internal::kStagingAlignment}, std::nothrow)));
    if (staging == nullptr) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cannot allocate the %u-byte transpose staging buffers",
          staging_bytes * static_cast<size_t>(threads)));
    }
  }

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const size_t parts = static_cast<size_t>(omp_get_num_threads());
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    uint8_t* stage = kernel.staged ? staging.get() + t * staging_bytes : nullptr;
    const size_t c_end = BandBegin(cols, parts, t + 1);
    for (size_t c0 = BandBegin(cols, parts, t); c0 < c_end;
         c0 += kernel.tile_cols) {
      const size_t tile_cols = std::min(kernel.tile_cols, c_end - c0);
      const size_t tile_bytes = tile_cols * elem_bytes;
      for (size_t r0 = 0; r0 < rows; r0 += kernel.tile_rows) {
        const size_t tile_rows = std::min(kernel.tile_rows, rows - r0);
        const uint8_t* tile = in + r0 * src.stride_bytes + c0 * elem_bytes;
        uint8_t* tile_out = out + c0 * dst.stride_bytes + r0 * elem_bytes;
        if (!kernel.staged) {
          kernel.transpose(tile, src.stride_bytes, tile_out, dst.stride_bytes,
                           tile_rows, tile_cols);
          continue;
        }
        for (size_t r = 0; r < tile_rows; ++r) {
          std::memcpy(stage + r * staging_stride, tile + r * src.stride_bytes,
                      tile_bytes);
        }
        const size_t next = r0 + kernel.tile_rows;
        if (next < rows) {
          PrefetchTile(in + next * src.stride_bytes + c0 * elem_bytes,
                       src.stride_bytes, std::min(kernel.tile_rows, rows - next),
                       tile_bytes);
        }
        kernel.transpose(stage, staging_stride, tile_out, dst.stride_bytes,
                         tile_rows, tile_cols);
      }
    }
    FinishStreamingStores();
  }
  return absl::OkStatus();
}

absl::Status GatherColumns(ConstRowsView src, size_t cols, size_t elem_bytes,
                           absl::Span<const uint32_t> columns, RowsView dst,
                           const TransposeOptions& options) {
  if (absl::Status s = ValidateNumThreads(options.num_threads); !s.ok()) return s;
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
