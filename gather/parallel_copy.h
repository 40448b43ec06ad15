// Parallel contiguous copy: the seed design's "parallel memcpy in chunks".
//
// Copies `bytes` bytes from `src` to `dst` (non-overlapping) with up to
// `num_threads` OpenMP threads. Each thread copies one contiguous,
// cache-line aligned share with the C library's memcpy (already the best
// SIMD copy for the CPU), so the result is byte-identical to one memcpy.
// Copies shorter than kParallelMinBytes (gather/partition.h) run on the
// calling thread.
//
// Threading: num_threads == 1 copies on the calling thread; otherwise an
// OpenMP parallel region of that many threads, the bytes split over the team
// the runtime actually starts (OMP_THREAD_LIMIT / OMP_DYNAMIC may give
// fewer). Errors (InvalidArgument, nothing copied): num_threads outside
// [1, kMaxThreads] (platform/threads.h). Safe to call concurrently on
// disjoint buffers. No allocation. O(bytes).
#ifndef SPARSE_MLP_GATHER_PARALLEL_COPY_H_
#define SPARSE_MLP_GATHER_PARALLEL_COPY_H_

#include <cstddef>

#include "absl/status/status.h"
#include "gather/partition.h"

namespace sparse_mlp::gather {

absl::Status ParallelCopy(void* dst, const void* src, size_t bytes, int num_threads);

}  // namespace sparse_mlp::gather

#endif  // SPARSE_MLP_GATHER_PARALLEL_COPY_H_
