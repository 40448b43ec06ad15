// Wall-clock timing helpers shared by every benchmark binary (no Google
// Benchmark dependency, so the main job can use them too).
#ifndef SPARSE_MLP_BENCH_TIMING_H_
#define SPARSE_MLP_BENCH_TIMING_H_

#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace sparse_mlp::bench {

// Seconds `fn` took (steady clock).
inline double SecondsOf(const std::function<void()>& fn) {
  const auto start = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// The median of `samples` (mean of the middle two for an even count; 0 for
// none). Medians, not means: this shared VM has slow minutes.
inline double Median(std::vector<double> samples) {
  if (samples.empty()) return 0;
  std::sort(samples.begin(), samples.end());
  const size_t n = samples.size();
  return n % 2 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
}

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_TIMING_H_
