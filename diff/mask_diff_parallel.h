// OpenMP execution of a mask diff (internal to //diff:mask_diff). Kept apart
// from the serial logic in mask_diff.cc so the pragmas live in one file.
#ifndef SPARSE_MLP_DIFF_MASK_DIFF_PARALLEL_H_
#define SPARSE_MLP_DIFF_MASK_DIFF_PARALLEL_H_

#include <cstddef>
#include <cstdint>

#include "diff/mask_diff_types.h"
#include "platform/simd_level.h"

namespace sparse_mlp::diff::internal {

// Chunked diff of `num_words` words over an OpenMP region of `num_threads`
// threads (one chunk per thread the runtime starts), written to
// diff->added / diff->removed (resized here) in serial order.
void ParallelMaskDiff(const uint64_t* before, const uint64_t* after,
                      size_t num_words, int num_threads, SimdLevel level,
                      MaskDiff* diff);

}  // namespace sparse_mlp::diff::internal

#endif  // SPARSE_MLP_DIFF_MASK_DIFF_PARALLEL_H_
