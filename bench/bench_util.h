// Shared helpers of the C++ benchmarks: random row selections and a timer
// that measures an operation and its memcpy floor interleaved in one loop,
// so the ratio between them is taken under the same machine conditions.
#ifndef SPARSE_MLP_BENCH_BENCH_UTIL_H_
#define SPARSE_MLP_BENCH_BENCH_UTIL_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "bench/cache_eviction.h"
#include "bench/timing.h"

namespace sparse_mlp::bench {

// `count` distinct indices from [0, n), ascending, from a fixed seed.
inline std::vector<uint32_t> RandomSortedIndices(size_t n, size_t count,
                                                 uint64_t seed) {
  std::vector<uint32_t> all(n);
  std::iota(all.begin(), all.end(), 0u);
  std::mt19937_64 rng(seed);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(count);
  std::sort(all.begin(), all.end());
  return all;
}

// Runs `op` as the timed operation of `state` (UseManualTime) and, in the
// same iteration, `floor` (a memcpy of the same bytes); after each, untimed,
// `evict_op` / `evict_floor` (EvictFromCaches on what it touched), so each
// starts from cold, clean caches. Reports GB/s of op, GB/s of the floor and
// op's bandwidth as a fraction of the floor's.
template <typename Op, typename Floor, typename EvictOp, typename EvictFloor>
void TimeAgainstFloor(benchmark::State& state, size_t bytes, Op op, Floor floor,
                      EvictOp evict_op, EvictFloor evict_floor) {
  std::vector<double> op_times, floor_times;
  for (auto _ : state) {
    const double t = SecondsOf(op);
    state.SetIterationTime(t);
    op_times.push_back(t);
    state.PauseTiming();
    evict_op();
    floor_times.push_back(SecondsOf(floor));
    evict_floor();
    state.ResumeTiming();
  }
  const double op_median = Median(op_times);
  const double floor_median = Median(floor_times);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(bytes));
  state.counters["floor_GBps"] = bytes / floor_median / 1e9;
  state.counters["op_GBps"] = bytes / op_median / 1e9;
  state.counters["vs_memcpy"] = floor_median / op_median;
}

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_BENCH_UTIL_H_
