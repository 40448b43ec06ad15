// Mask diffing: which neurons entered and which left between two masks.
//
// The weight cache calls this once per token: its cost is the floor of an
// update that moves nothing, so it works on packed bitsets (XOR + popcount,
// then index extraction of only the changed words, SIMD per DiffOptions).
//
// Parallelism: with num_threads > 1 and at least 2 * min_words_per_thread
// words, the words are split into one contiguous chunk per thread; each
// thread counts its chunk's changes, a prefix sum gives each chunk its
// output offset, and each thread writes its chunk's indices there (an
// ordered merge: the output is identical to the serial one). A parallel
// region costs more than a real layer's whole diff (I <= ~32k neurons diff
// in microseconds on one thread), so the default threshold keeps them
// serial and only masks of 256k+ neurons go parallel (//bench:diff;
// docs/performance.md).
//
// Thread-compatible: concurrent calls on distinct outputs are fine. The
// output vectors are resized, reusing their capacity: a caller that keeps
// one MaskDiff across calls allocates only when a diff is larger than any
// before.
#ifndef SPARSE_MLP_DIFF_MASK_DIFF_H_
#define SPARSE_MLP_DIFF_MASK_DIFF_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "diff/mask_diff_types.h"
#include "diff/neuron_mask.h"
#include "platform/simd_level.h"

namespace sparse_mlp::diff {


struct DiffOptions {
  // 2048 words = 128k neurons per thread (see the header comment).
  static constexpr size_t kDefaultMinWordsPerThread = 2048;

  int num_threads = 1;  // [1, kMaxThreads] (platform/threads.h); 1: calling thread
  SimdLevel simd = SimdLevel::kBest;
  size_t min_words_per_thread = kDefaultMinWordsPerThread;
};

// Fills *diff with before -> after. InvalidArgument (and *diff unchanged)
// when the masks have different sizes or options.num_threads is outside
// [1, kMaxThreads]. O(I / 64 + changes).
absl::Status ComputeMaskDiff(const NeuronMask& before, const NeuronMask& after,
                             MaskDiff* diff, const DiffOptions& options = {});

// |added| + |removed| without building the lists (a fast-path decision):
// one XOR + popcount pass. InvalidArgument when sizes differ.
absl::StatusOr<size_t> CountMaskChanges(const NeuronMask& before,
                                        const NeuronMask& after,
                                        SimdLevel level = SimdLevel::kBest);

}  // namespace sparse_mlp::diff

#endif  // SPARSE_MLP_DIFF_MASK_DIFF_H_
