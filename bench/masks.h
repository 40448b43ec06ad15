// Mask sequences the benchmarks replay: a random mask of a given count, and
// a step that swaps a fraction of its active neurons for inactive ones
// (the churn of a decode step, A unchanged).
#ifndef SPARSE_MLP_BENCH_MASKS_H_
#define SPARSE_MLP_BENCH_MASKS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "diff/neuron_mask.h"

namespace sparse_mlp::bench {

// A random mask of n neurons with `count` active.
inline diff::NeuronMask RandomMask(size_t n, size_t count, std::mt19937_64& rng) {
  std::vector<uint32_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = static_cast<uint32_t>(i);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(count);
  std::sort(all.begin(), all.end());
  return *diff::NeuronMask::FromIndices(n, all);
}

// `mask` with round(churn x A) active neurons swapped for inactive ones.
inline diff::NeuronMask Churn(const diff::NeuronMask& mask, double churn,
                              std::mt19937_64& rng) {
  std::vector<uint32_t> on, off;
  for (size_t i = 0; i < mask.size(); ++i) (mask.Test(i) ? on : off).push_back(i);
  std::shuffle(on.begin(), on.end(), rng);
  std::shuffle(off.begin(), off.end(), rng);
  const size_t k =
      std::min({static_cast<size_t>(churn * on.size() + 0.5), on.size(), off.size()});
  diff::NeuronMask next = mask;
  for (size_t j = 0; j < k; ++j) {
    next.Set(on[j], false);
    next.Set(off[j], true);
  }
  return next;
}

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_MASKS_H_
