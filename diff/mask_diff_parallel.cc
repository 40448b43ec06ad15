#include "diff/mask_diff_parallel.h"

#include <omp.h>

#include <vector>

#include "diff/mask_kernels.h"

namespace sparse_mlp::diff::internal {

void ParallelMaskDiff(const uint64_t* before, const uint64_t* after,
                      size_t num_words, int num_threads, SimdLevel level,
                      MaskDiff* diff) {
  // Counts per chunk, then exclusive prefix sums = each chunk's offset.
  // Sized for the threads asked for; the team may be smaller.
  std::vector<size_t> added_offset(static_cast<size_t>(num_threads) + 1, 0);
  std::vector<size_t> removed_offset(static_cast<size_t>(num_threads) + 1, 0);

#pragma omp parallel num_threads(num_threads)
  {
    // One chunk per thread of the team actually started (OMP_THREAD_LIMIT
    // or OMP_DYNAMIC may start fewer than num_threads).
    const size_t chunks = static_cast<size_t>(omp_get_num_threads());
    auto chunk_begin = [&](size_t c) { return num_words * c / chunks; };
    const size_t c = static_cast<size_t>(omp_get_thread_num());
    const size_t begin = chunk_begin(c);
    const size_t words = chunk_begin(c + 1) - begin;
    // |after & ~before| and |before & ~after| from three popcounts:
    // added - removed = |after| - |before|, added + removed = |after ^ before|.
    const size_t changed =
        CountDifferentBits(before + begin, after + begin, words, level);
    const size_t grown = CountSetBits(after + begin, words, level);
    const size_t shrunk = CountSetBits(before + begin, words, level);
    added_offset[c + 1] = (changed + grown - shrunk) / 2;
    removed_offset[c + 1] = (changed + shrunk - grown) / 2;
#pragma omp barrier
#pragma omp single
    {
      for (size_t k = 0; k < chunks; ++k) {
        added_offset[k + 1] += added_offset[k];
        removed_offset[k + 1] += removed_offset[k];
      }
      diff->added.resize(added_offset[chunks]);
      diff->removed.resize(removed_offset[chunks]);
    }  // implicit barrier: sizes and offsets are visible to every thread
    const uint32_t first = static_cast<uint32_t>(begin * 64);
    ExtractAndNotBits(after + begin, before + begin, words, first,
                      diff->added.data() + added_offset[c], level);
    ExtractAndNotBits(before + begin, after + begin, words, first,
                      diff->removed.data() + removed_offset[c], level);
  }
}

}  // namespace sparse_mlp::diff::internal
