// Transpose and column gather of row-major matrices of 1-, 2-, 4- or 8-byte
// elements.
//
// Why: down_proj is stored [H, I] (PyTorch nn.Linear layout), but a neuron's
// down weights are a column of it. The weight cache turns down neuron-major
// ([I, H]) once, with Transpose, so that every later update copies rows.
// Callers that cannot afford the transposed copy gather the columns they
// need straight from [H, I] with GatherColumns (strided reads: slower per
// byte, no extra memory).
//
// Transpose walks the matrix in tiles. At the SIMD levels each tile is
// first copied row by row into a per-thread staging buffer (long DRAM read
// runs, rows spread over the L1 sets), then transposed in registers (AVX-512:
// 16x16 blocks of 4-byte and 32x32 blocks of 2-byte elements, whole 64-byte
// lines in and out; AVX2: 8x8 blocks) and written column block by column
// block, so every destination row receives long runs, with non-temporal
// stores where aligned (no read-for-ownership of lines that are only
// written); the next tile's rows are prefetched meanwhile. Ragged edges and
// 1-/8-byte elements go element by element. Output rows are split over
// num_threads OpenMP threads (one thread below 1 MiB). kScalar is the plain
// per-element path, in place.
//
// Speed: about half of a memcpy of the same bytes, ten times a naive column
// loop (//bench:gather; docs/performance.md).
//
// Thread-safe for disjoint destinations. O(rows x cols). Allocation:
// Transpose allocates one staging tile per thread per call (tile rows x
// padded tile row: 256 x 576 B = 144 KiB at the SIMD levels; freed before
// it returns; ResourceExhausted if that fails); GatherColumns allocates
// nothing.
#ifndef SPARSE_MLP_GATHER_TRANSPOSE_H_
#define SPARSE_MLP_GATHER_TRANSPOSE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gather/row_gather.h"
#include "platform/simd_level.h"

namespace sparse_mlp::gather {

struct TransposeOptions {
  int num_threads = 1;  // [1, kMaxThreads]; work split over the team started
  SimdLevel simd = SimdLevel::kBest;
};

// dst[c][r] = src[r][c] for the src.num_rows x cols matrix of elem_bytes
// elements. dst must have cols rows of at least src.num_rows elements.
// Errors (InvalidArgument, nothing written): options.num_threads outside
// [1, kMaxThreads] (platform/threads.h), elem_bytes not 1/2/4/8, a row
// that does not fit its stride, dst.num_rows != cols, null data with a
// non-empty matrix; ResourceExhausted if the staging tiles cannot be
// allocated.
absl::Status Transpose(ConstRowsView src, size_t cols, size_t elem_bytes,
                       RowsView dst, const TransposeOptions& options = {});

// dst[k][r] = src[r][columns[k]]: the listed columns of src, each written as
// a row of src.num_rows elements. Errors as Transpose, plus a column index
// >= cols (named with its position) and dst.num_rows < columns.size().
absl::Status GatherColumns(ConstRowsView src, size_t cols, size_t elem_bytes,
                           absl::Span<const uint32_t> columns, RowsView dst,
                           const TransposeOptions& options = {});

}  // namespace sparse_mlp::gather

#endif  // SPARSE_MLP_GATHER_TRANSPOSE_H_
