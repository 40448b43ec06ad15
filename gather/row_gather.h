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

// One matrix pair of a gather job: for each copy (s, d) of the job,
// row_bytes bytes from row s of src to row d of dst.
struct RowPart {
  ConstRowsView src;
  RowsView dst;
  size_t row_bytes = 0;
};

// A gather job: one copy list applied to one or more parts, copy by copy:
// for copy k, the row of each part in order, then copy k + 1. Which parts
// share a list is the caller's statement, not something the batch infers:
// the parts of one fused source row ([gate | up | down] per neuron, one part
// each) are then read as one contiguous run per copy. Parts that are
// adjacent in both matrices are better passed as one part of the summed
// row length (fewer, longer pieces cost less per byte).
struct RowGatherJob {
  absl::Span<const RowPart> parts;
  absl::Span<const RowCopy> copies;
};

// The most jobs one batch takes (its bookkeeping lives on the stack).
inline constexpr size_t kMaxBatchJobs = 256;

// Runs several jobs as one: the bytes of all jobs are split evenly over the
// threads, so a cache update that loads rows of three matrices and moves
// rows inside them pays for one OpenMP region, not six, and so do the
// updates of many caches at once (cache/model_cache.h). Jobs are copied in
// order, each as described above. Every part is validated (as in
// GatherRows; the message names the job and the part) before anything is
// written; more than kMaxBatchJobs jobs is InvalidArgument.
absl::Status GatherRowsBatch(absl::Span<const RowGatherJob> jobs,
                             int num_threads,
                             SimdLevel level = SimdLevel::kBest);

// For each copy: row_bytes bytes from src row `src_row` to dst row
// `dst_row`. Errors (InvalidArgument, nothing written): row_bytes larger
// than either stride, a null matrix with rows to copy, a row index out of
// range (the message names the copy's position and index); copies x
// row_bytes overflowing a size_t is OutOfRange, as every size overflow in
// sparse_mlp (memory/size_math.h).
absl::Status GatherRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                        absl::Span<const RowCopy> copies, int num_threads,
                        SimdLevel level = SimdLevel::kBest);

// Rows [0, num_rows) of src to rows [0, num_rows) of dst, row_bytes each:
// a strided matrix copy (e.g. one part of interleaved rows into a
// contiguous matrix) without a copy list. The rows' bytes are split evenly
// over the threads as in GatherRows. At kScalar (the default) they are
// copied with memcpy and the destination stays in the caches, for a caller
// that reads it next; at the SIMD levels, copies of
// kStreamingGatherMinBytes or more write with streaming stores (for large
// copies nobody reads soon, e.g. weights copied at construction). Errors
// (InvalidArgument, nothing written): row_bytes larger than either stride,
// num_rows beyond either matrix, a null matrix with rows to copy; a size
// that overflows is OutOfRange. (Speed: //bench:gather, BM_CopyRows.) The
// two matrices
// must not overlap. Thread-safe for disjoint destinations; no
// allocation; O(num_rows x row_bytes).
absl::Status CopyRows(ConstRowsView src, RowsView dst, size_t row_bytes,
                      size_t num_rows, int num_threads,
                      SimdLevel level = SimdLevel::kScalar);

}  // namespace sparse_mlp::gather

#endif  // SPARSE_MLP_GATHER_ROW_GATHER_H_
