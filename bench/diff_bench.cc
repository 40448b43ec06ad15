// diff/ kernels: time per call at real layer sizes (I = 8192 llama-3.2-3b, 14336 mistral-7b / llama-3-8b).
//
//   bazel run //bench:diff
//
// - BM_DiffNoChange / BM_DiffSmallChange: ComputeMaskDiff of two bitsets at
//   active fraction 0.5, identical or with 2% of the active set replaced.
// - BM_CountChanges: the fast-path count alone.
// - BM_PackBytes: byte mask -> bitset throughput, per SIMD level.
// - BM_Union16: a [16, I] byte matrix ORed into one bitset.
// - BM_DiffThreads: a diff of 4M neurons on 1 and 2 threads (where the
//   parallel path starts to pay).
#include <cstdint>
#include <random>
#include <vector>

#include "benchmark/benchmark.h"
#include "bench/goals.h"
#include "diff/mask_diff.h"
#include "diff/neuron_mask.h"
#include "platform/simd_level.h"

namespace sparse_mlp::bench {
namespace {

std::vector<uint8_t> RandomByteMask(size_t n, double density, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution active(density);
  std::vector<uint8_t> bytes(n);
  for (auto& b : bytes) b = active(rng);
  return bytes;
}

// `after` = `before` with `churn` of its active neurons replaced by inactive
// ones.
std::pair<diff::NeuronMask, diff::NeuronMask> MaskPair(size_t n, double churn) {
  std::vector<uint8_t> before = RandomByteMask(n, 0.5, 1);
  std::vector<uint8_t> after = before;
  std::mt19937_64 rng(2);
  std::bernoulli_distribution flip(churn);
  std::vector<size_t> on, off;
  for (size_t i = 0; i < n; ++i) (before[i] ? on : off).push_back(i);
  for (size_t k = 0; k < on.size() && k < off.size(); ++k) {
    if (flip(rng)) {
      after[on[k]] = 0;
      after[off[k]] = 1;
    }
  }
  return {*diff::NeuronMask::FromBytes(before), *diff::NeuronMask::FromBytes(after)};
}

void DiffCase(benchmark::State& state, double churn) {
  const size_t n = static_cast<size_t>(state.range(0));
  auto [before, after] = MaskPair(n, churn);
  diff::MaskDiff result;
  (void)diff::ComputeMaskDiff(before, after, &result);  // warm the capacity
  for (auto _ : state) {
    (void)diff::ComputeMaskDiff(before, after, &result);
    benchmark::DoNotOptimize(result.added.data());
  }
  state.counters["changes"] =
      static_cast<double>(result.added.size() + result.removed.size());
}

void BM_DiffNoChange(benchmark::State& state) { DiffCase(state, 0.0); }
void BM_DiffSmallChange(benchmark::State& state) { DiffCase(state, 0.02); }
BENCHMARK(BM_DiffNoChange)->ArgName("I")->Arg(8192)->Arg(14336);
BENCHMARK(BM_DiffSmallChange)->ArgName("I")->Arg(8192)->Arg(14336);
// The goal of issue #3 (the fast path of every unchanged update).
const bool kNoChangeGoal = RegisterGoal({"no-change diff of bitsets at I = 14336 < 1 us",
                                         {"BM_DiffNoChange/I:14336"}, "", false, 1000.0});

void BM_CountChanges(benchmark::State& state) {
  auto [before, after] = MaskPair(static_cast<size_t>(state.range(0)), 0.02);
  for (auto _ : state) {
    benchmark::DoNotOptimize(*diff::CountMaskChanges(before, after));
  }
}
BENCHMARK(BM_CountChanges)->ArgName("I")->Arg(14336);

void BM_PackBytes(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const SimdLevel level = static_cast<SimdLevel>(state.range(1));
  if (!IsSupported(level)) {
    state.SkipWithError("SIMD level not supported on this CPU");
    return;
  }
  const std::vector<uint8_t> bytes = RandomByteMask(n, 0.5, 3);
  diff::NeuronMask mask(n);
  for (auto _ : state) {
    (void)mask.AssignBytes(bytes, level);
    benchmark::DoNotOptimize(mask.words().data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * n));
  state.SetLabel(SimdLevelName(level));
}
BENCHMARK(BM_PackBytes)
    ->ArgNames({"I", "simd"})
    ->ArgsProduct({{14336}, {static_cast<int>(SimdLevel::kScalar),
                             static_cast<int>(SimdLevel::kAvx2),
                             static_cast<int>(SimdLevel::kAvx512)}});

void BM_Union16(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  constexpr size_t kTokens = 16;
  const std::vector<uint8_t> matrix = RandomByteMask(kTokens * n, 0.1, 4);
  diff::NeuronMask mask(n);
  for (auto _ : state) {
    (void)mask.AssignByteRowsUnion(matrix, kTokens);
    benchmark::DoNotOptimize(mask.words().data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kTokens * n));
}
BENCHMARK(BM_Union16)->ArgName("I")->Arg(8192)->Arg(14336);

void BM_DiffThreads(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  auto [before, after] = MaskPair(n, 0.1);
  diff::DiffOptions options;
  options.num_threads = static_cast<int>(state.range(1));
  options.min_words_per_thread = 1;
  diff::MaskDiff result;
  for (auto _ : state) {
    (void)diff::ComputeMaskDiff(before, after, &result, options);
    benchmark::DoNotOptimize(result.added.data());
  }
}
BENCHMARK(BM_DiffThreads)
    ->ArgNames({"I", "threads"})
    ->ArgsProduct({{14336, 1 << 17, 1 << 18, 1 << 20}, {1, 2}})
    ->UseRealTime();

}  // namespace
}  // namespace sparse_mlp::bench
