// Row gather/scatter between row-major matrices: the building block of every
// cache update.
//
// A matrix is described by RowsView (gather/row_types.h: base pointer, row
// count, stride in bytes); a copy is a list of (source row, destination row)
// pairs. Rows are raw bytes: the element type only matters through
// row_bytes (4-byte fp32, 2-byte bf16/fp16, anything else).
//
// Execution: the copies' total bytes are split evenly over the threads of
// one OpenMP region of num_threads threads (over the team the runtime
// actually starts, which OMP_THREAD_LIMIT or OMP_DYNAMIC may make smaller),
// on cache-line boundaries (gather/partition.h), so a list of
// one huge row and a list of thousands of small ones both use every thread.
// Each thread copies its share row by row, touching each 4 KiB page of the
// row two ahead with one prefetch so its TLB walk and DRAM page opening
// overlap the current copy. Gathers of kStreamingGatherMinBytes or more
// write with non-temporal stores at the AVX2 / AVX-512 levels
// (gather/stream_copy.h; no read-for-ownership of scattered destination
// lines) and prefetch the source one line per line copied, 6 KiB ahead
// across row boundaries, so a row's first lines do not wait on a
// restarting hardware prefetcher (docs/design.md, "Page touches and
// read-ahead"); smaller ones, and the kScalar level, copy with memcpy.
// Gathers smaller than kParallelMinBytes run on the calling thread
// (gather/partition.h).
//
// Preconditions the caller keeps (not checked, they cost O(n log n)): no two
// copies write the same destination row, and no destination row is also a
// source row of the same call (the copies of a call may run in any order).
// Everything else is validated first; on error nothing is written. Every
// entry point refuses a num_threads outside [1, kMaxThreads]
// (platform/threads.h) with InvalidArgument.
//
// Thread-safe for disjoint destinations. No allocation. O(copies x
// row_bytes).
#ifndef SPARSE_MLP_GATHER_ROW_GATHER_H_
#define SPARSE_MLP_GATHER_ROW_GATHER_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "gather/partition.h"
#include "gather/row_types.h"
#include "platform/simd_level.h"

namespace sparse_mlp::gather {

// Streaming stores only pay for gathers larger than the caches; below, the
// rows would just have to be fetched back by the caller.
inline constexpr size_t kStreamingGatherMinBytes = size_t{1} << 20;

// One matrix-to-matrix gather of a batch.
struct RowGatherJob {
  ConstRowsView src;
  RowsView dst;
  size_t row_bytes = 0;
  absl::Span<const RowCopy> copies;
};

// Runs several gathers as one: the bytes of all jobs are split evenly over
// the threads, so a cache update that copies rows of three matrices (and
// moves rows inside them) pays for one OpenMP region, not six. Consecutive
// jobs that share one copy list (the same span: same data pointer and size)
// are copied copy by copy, row k of each job in turn: jobs that read the
// parts of one fused source row ([gate | up | down] per neuron) then read
// it as one contiguous run; when such a job also writes the bytes right
// after the previous job's in every destination row (same strides), the two
// are copied as one job with longer rows. Other jobs are copied in order,
// row by row.
// Every job is validated (as in GatherRows) before anything is written; at
// most 16 jobs.
absl::Status GatherRowsBatch(absl::Span<const RowGatherJob> jobs,
                             int num_threads,
                             SimdLevel level = SimdLevel::kBest);

// For each copy: row_bytes bytes from src row `src_row` to dst row
// `dst_row`. Errors (InvalidArgument, nothing written): row_bytes larger
// than either stride, a null matrix with rows to copy, a row index out of
// range (the message names the copy's position and index).
absl::Status GatherRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                        absl::Span<const RowCopy> copies, int num_threads,
                        SimdLevel level = SimdLevel::kBest);

// Rows [0, num_rows) of src to rows [0, num_rows) of dst, row_bytes each:
// a strided matrix copy (e.g. one part of interleaved rows into a
// contiguous matrix) without a copy list. The rows' bytes are split evenly
// over the threads as in GatherRows and copied with memcpy (the destination
// is usually read next, so it is left in the caches). Errors
// (InvalidArgument, nothing written): row_bytes larger than either stride,
// num_rows beyond either matrix, a null matrix with rows to copy, a size
// that overflows. (Speed: //bench:gather, BM_CopyRows.) The two matrices
// must not overlap. Thread-safe for disjoint destinations; no
// allocation; O(num_rows x row_bytes).
absl::Status CopyRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                      size_t num_rows, int num_threads);

}  // namespace sparse_mlp::gather

#endif  // SPARSE_MLP_GATHER_ROW_GATHER_H_
