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
// ordered merge: the output is identical to the serial one). Masks of real
// layers (I <= ~32k neurons = 512 words) diff in well under a microsecond on
// one thread, less than waking a second one, so the default threshold keeps
// them serial (measured: //bench:diff).
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
#include "diff/neuron_mask.h"
#include "platform/simd_level.h"

namespace sparse_mlp::diff {

struct MaskDiff {
  std::vector<uint32_t> added;    // active after, not before; ascending
  std::vector<uint32_t> removed;  // active before, not after; ascending
};

struct DiffOptions {
  // Default threshold: 64k words (4M neurons) per thread, far above any
  // layer, because below it the serial diff beats an OpenMP fork.
  static constexpr size_t kDefaultMinWordsPerThread = size_t{1} << 16;

  int num_threads = 1;  // <= 1: the calling thread only
  SimdLevel simd = SimdLevel::kBest;
  size_t min_words_per_thread = kDefaultMinWordsPerThread;
};

// Fills *diff with before -> after. InvalidArgument (and *diff unchanged)
// when the masks have different sizes. O(I / 64 + changes).
absl::Status ComputeMaskDiff(const NeuronMask& before, const NeuronMask& after,
                             MaskDiff* diff, const DiffOptions& options = {});

// |added| + |removed| without building the lists (a fast-path decision):
// one XOR + popcount pass. InvalidArgument when sizes differ.
absl::StatusOr<size_t> CountMaskChanges(const NeuronMask& before,
                                        const NeuronMask& after,
                                        SimdLevel level = SimdLevel::kBest);

}  // namespace sparse_mlp::diff

#endif  // SPARSE_MLP_DIFF_MASK_DIFF_H_
