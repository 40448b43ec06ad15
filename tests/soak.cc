// Soak: replays --steps random cache operations on a realistic layer shape
// and compares the cache with the plain reference model after every step
// (tests/cache_reference.h).
//
//   bazel run //tests:soak -- --steps=10000000 [--seed=N] [--intermediate=I] [--hidden=H]
//
// The steps come in episodes of --episode_steps, each on a fresh cache of a
// random configuration (SIMD level, dtype, gate or not, packed layout,
// copied or borrowed sources, down layout, 1-2 threads, tolerance) with
// fresh random weights. The operations are what a decode loop and its
// callers do: updates with realistic churn (1-25% of the active set per
// step, occasionally a fresh mask, empty or full), every mask form (bitset,
// bytes, sorted indices, a batch of token rows), catch-ups, reserves and
// tolerance changes, and malformed inputs that must be refused without a
// change. Narrow rows (default H = 16) keep the per-step reference check
// cheap; every 16th episode uses wide rows (H = 512, I = 4096) so that
// updates take the parallel, streaming copy paths. Exits 1 at the first
// difference, printing the seed, episode, step, configuration and operation.
// As a test (`bazel test //tests:soak`) it runs 1e5 steps.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "diff/neuron_mask.h"
#include "platform/simd_level.h"
#include "tests/cache_reference.h"

ABSL_FLAG(int64_t, steps, 100000, "operations to replay in all");
ABSL_FLAG(int64_t, episode_steps, 200, "operations per cache (each episode a new config)");
ABSL_FLAG(uint64_t, seed, 1, "random seed (the run is determined by it)");
ABSL_FLAG(int64_t, intermediate, 8192, "neurons I of the narrow episodes");
ABSL_FLAG(int64_t, hidden, 16, "hidden size H of the narrow episodes");

namespace sparse_mlp::cache::testing {
namespace {

CacheConfig RandomConfig(std::mt19937_64& rng) {
  const std::vector<SimdLevel> levels = SupportedSimdLevels();
  CacheConfig c;
  c.simd = levels[rng() % levels.size()];
  c.dtype = static_cast<DType>(rng() % 3);
  c.has_gate = rng() % 4 != 0;
  do {
    c.layout = static_cast<PackedLayout>(rng() % 3);
  } while (!c.has_gate && c.layout == PackedLayout::kInterleavedGateUp);
  c.ownership = rng() % 2 ? SourceOwnership::kCopy : SourceOwnership::kBorrow;
  c.down_layout = rng() % 2 ? DownLayout::kHiddenMajor : DownLayout::kNeuronMajor;
  c.threads = 1 + static_cast<int>(rng() % 2);
  static constexpr size_t kTolerances[] = {0, 0, 0, 3, 40};
  c.tolerance = kTolerances[rng() % 5];
  c.concat = c.has_gate && rng() % 2 == 0;
  return c;
}

diff::NeuronMask RandomDensityMask(std::mt19937_64& rng, size_t n, double density) {
  diff::NeuronMask mask(n);
  std::bernoulli_distribution on(density);
  for (size_t k = 0; k < n; ++k) mask.Set(k, on(rng));
  return mask;
}

// A decode step: `fraction` of the active set leaves and as many others
// enter (at least one of each when possible).
diff::NeuronMask Churn(std::mt19937_64& rng, const diff::NeuronMask& current,
                       double fraction) {
  diff::NeuronMask next = current;
  const size_t n = current.size();
  const size_t active = current.CountActive();
  const size_t swaps = std::max<size_t>(1, static_cast<size_t>(fraction * active));
  for (size_t k = 0; k < swaps && active > 0 && active < n; ++k) {
    size_t off, on;
    do off = rng() % n; while (!next.Test(off));
    do on = rng() % n; while (next.Test(on));
    next.Set(off, false);
    next.Set(on, true);
  }
  return next;
}

CacheOp RandomOp(std::mt19937_64& rng, const diff::NeuronMask& current) {
  const size_t n = current.size();
  CacheOp op;
  const unsigned roll = rng() % 100;
  static constexpr double kChurn[] = {0.01, 0.02, 0.05, 0.10, 0.25};
  if (roll < 62) {
    op.mask = Churn(rng, current, kChurn[rng() % 5]);
  } else if (roll < 66) {
    op.mask = RandomDensityMask(rng, n, (rng() % 101) / 100.0);
  } else if (roll < 68) {
    op.mask = diff::NeuronMask(n);  // empty
  } else if (roll < 70) {
    op.mask = RandomDensityMask(rng, n, 1.0);  // full
  } else if (roll < 72) {
    op.mask = current;  // unchanged
  } else if (roll < 78) {
    op.kind = CacheOp::kUpdateFromIndices;
    op.indices = Churn(rng, current, kChurn[rng() % 5]).ToIndices();
    if (rng() % 20 == 0 && op.indices.size() >= 2) {
      std::swap(op.indices[0], op.indices[1]);  // unsorted: refused
    }
  } else if (roll < 84) {
    op.kind = CacheOp::kUpdateFromBytes;
    op.bytes.resize(rng() % 30 == 0 ? n - 1 : n);  // wrong length: refused
    const diff::NeuronMask next = Churn(rng, current, kChurn[rng() % 5]);
    for (size_t k = 0; k < op.bytes.size(); ++k) {
      op.bytes[k] = next.Test(k) ? static_cast<uint8_t>(1 + rng() % 255) : 0;
    }
  } else if (roll < 90) {
    op.kind = CacheOp::kUpdateFromByteRows;
    op.rows = rng() % 25 == 0 ? 0 : 1 + rng() % 4;  // zero rows: refused
    op.bytes.assign(op.rows * n, 0);
    for (size_t r = 0; r < op.rows; ++r) {
      const diff::NeuronMask row = Churn(rng, current, 0.05);
      for (size_t k = 0; k < n; ++k) op.bytes[r * n + k] = row.Test(k) && rng() % 2;
    }
  } else if (roll < 94) {
    op.kind = CacheOp::kCatchUp;
  } else if (roll < 97) {
    op.kind = CacheOp::kReserve;
    op.value = rng() % (n + 2);  // up to I + 1: beyond the layer is refused
  } else {
    op.kind = CacheOp::kSetTolerance;
    static constexpr size_t kTolerances[] = {0, 1, 5, 50};
    op.value = kTolerances[rng() % 4];
  }
  return op;
}

int Run() {
  const int64_t steps = absl::GetFlag(FLAGS_steps);
  const int64_t episode_steps = std::max<int64_t>(1, absl::GetFlag(FLAGS_episode_steps));
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  const size_t narrow_i = static_cast<size_t>(absl::GetFlag(FLAGS_intermediate));
  const size_t narrow_h = static_cast<size_t>(absl::GetFlag(FLAGS_hidden));
  std::mt19937_64 rng(seed);
  const auto start = std::chrono::steady_clock::now();
  int64_t done = 0, episode = 0, refused = 0;
  while (done < steps) {
    const bool wide = episode % 16 == 15;
    const size_t h = wide ? 512 : narrow_h, i = wide ? 4096 : narrow_i;
    const CacheConfig config = RandomConfig(rng);
    const ReferenceWeights weights = RandomReferenceWeights(rng, h, i, DTypeSize(config.dtype));
    absl::StatusOr<CheckedCache> checked =
        CheckedCache::Create(config, &weights, RandomDensityMask(rng, i, 0.1 + (rng() % 50) / 100.0));
    auto fail = [&](int64_t step, const std::string& what) {
      std::fprintf(stderr,
                   "soak: MISMATCH (seed %llu, episode %lld, step %lld of it, step %lld in all)\n"
                   "  config: %s, H=%zu I=%zu\n  %s\n",
                   static_cast<unsigned long long>(seed), static_cast<long long>(episode),
                   static_cast<long long>(step), static_cast<long long>(done),
                   config.Describe().c_str(), h, i, what.c_str());
      return 1;
    };
    if (!checked.ok()) return fail(0, "Create failed: " + checked.status().ToString());
    if (const std::string d = CompareWithReference(checked->cache(), weights, checked->applied());
        !d.empty()) {
      return fail(0, "after Create: " + d);
    }
    const int64_t n = std::min(wide ? episode_steps / 8 + 1 : episode_steps, steps - done);
    for (int64_t step = 0; step < n; ++step, ++done) {
      const CacheOp op = RandomOp(rng, checked->applied());
      const uint64_t version = checked->cache().version();
      if (const std::string d = checked->Apply(op); !d.empty()) return fail(step, d);
      refused += checked->cache().version() == version;
    }
    ++episode;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf(
      "soak: %lld steps in %.1f s (%lld episodes, seed %llu; %lld steps changed no rows): "
      "every step matched the reference\n",
      static_cast<long long>(done), seconds, static_cast<long long>(episode),
      static_cast<unsigned long long>(seed), static_cast<long long>(refused));
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::cache::testing

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return sparse_mlp::cache::testing::Run();
}
