#include "diff/mask_diff.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "diff/mask_diff_parallel.h"
#include "diff/mask_kernels.h"
#include "platform/threads.h"

namespace sparse_mlp::diff {
namespace {

absl::Status CheckSameSize(const NeuronMask& before, const NeuronMask& after) {
  if (before.size() != after.size()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cannot diff masks of %u and %u neurons", before.size(),
                        after.size()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ComputeMaskDiff(const NeuronMask& before, const NeuronMask& after,
                             MaskDiff* diff, const DiffOptions& options) {
  if (absl::Status s = ValidateNumThreads(options.num_threads); !s.ok()) return s;
  if (absl::Status s = CheckSameSize(before, after); !s.ok()) return s;
  const uint64_t* old_words = before.words().data();
  const uint64_t* new_words = after.words().data();
  const size_t num_words = before.words().size();
  const SimdLevel level = Resolve(options.simd);

  // As many threads as asked for, but none with fewer words than the
  // threshold.
  const size_t threads = std::min(
      num_words / std::max<size_t>(1, options.min_words_per_thread),
      static_cast<size_t>(options.num_threads));
  if (threads >= 2) {
    internal::ParallelMaskDiff(old_words, new_words, num_words,
                               static_cast<int>(threads), level, diff);
    return absl::OkStatus();
  }

  const size_t changed = CountDifferentBits(old_words, new_words, num_words, level);
  if (changed == 0) {
    diff->added.clear();
    diff->removed.clear();
    return absl::OkStatus();
  }
  const size_t grown = CountSetBits(new_words, num_words, level);
  const size_t shrunk = CountSetBits(old_words, num_words, level);
  diff->added.resize((changed + grown - shrunk) / 2);
  diff->removed.resize((changed + shrunk - grown) / 2);
  ExtractAndNotBits(new_words, old_words, num_words, 0, diff->added.data(),
                    level);
  ExtractAndNotBits(old_words, new_words, num_words, 0, diff->removed.data(),
                    level);
  return absl::OkStatus();
}

absl::StatusOr<size_t> CountMaskChanges(const NeuronMask& before,
                                        const NeuronMask& after,
                                        SimdLevel level) {
  if (absl::Status s = CheckSameSize(before, after); !s.ok()) return s;
  return CountDifferentBits(before.words().data(), after.words().data(),
                            before.words().size(), level);
}

}  // namespace sparse_mlp::diff
