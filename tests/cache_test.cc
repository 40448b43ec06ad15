// cache/: the weight cache against a reference model (plain loops gathering
// the mask's rows) after every step of thousands of random update sequences
// over every configuration; the planner's invariants; one test per error
// class. Fixed seeds; a failure prints the configuration, step and neuron.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cache/update_plan.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "memory/arena.h"
#include "tests/cache_reference.h"
#include "platform/simd_level.h"
#include "platform/threads.h"

namespace sparse_mlp::cache {

namespace {

using ::testing::HasSubstr;

using Weights = testing::ReferenceWeights;
using Config = testing::CacheConfig;

Weights RandomWeights(std::mt19937_64& rng, size_t h, size_t i, size_t elem) {
  return testing::RandomReferenceWeights(rng, h, i, elem);
}

// Reference check (tests/cache_reference.h): every slot holds exactly its
// neuron's rows, the slots hold exactly the mask's neurons, the views
// describe that, and the cache's own Verify() agrees.
void ExpectMatches(const WeightCache& cache, const Weights& w,
                   const diff::NeuronMask& mask, const std::string& where) {
  ASSERT_EQ(testing::CompareWithReference(cache, w, mask), "") << where;
}

WeightCacheOptions ShapeOptions(size_t hidden, size_t intermediate) {
  WeightCacheOptions options;
  options.hidden_size = hidden;
  options.intermediate_size = intermediate;
  return options;
}

// Next mask of a random sequence: the kinds every cache must survive.
diff::NeuronMask NextMask(std::mt19937_64& rng, const diff::NeuronMask& current) {
  const size_t n = current.size();
  diff::NeuronMask next = current;
  switch (rng() % 8) {
    case 0:  // empty
      next.Clear();
      break;
    case 1:  // full
      for (size_t i = 0; i < n; ++i) next.Set(i, true);
      break;
    case 2:  // identical
      break;
    case 3: {  // grow: turn on a random fraction of the inactive neurons
      const double p = (rng() % 100) / 100.0;
      for (size_t i = 0; i < n; ++i) {
        if (!next.Test(i) && (rng() % 1000) < p * 1000) next.Set(i, true);
      }
      break;
    }
    case 4: {  // shrink
      const double p = (rng() % 100) / 100.0;
      for (size_t i = 0; i < n; ++i) {
        if (next.Test(i) && (rng() % 1000) < p * 1000) next.Set(i, false);
      }
      break;
    }
    case 5: {  // a few flips (typical decode step)
      for (size_t k = 0; k < 1 + rng() % 4 && n > 0; ++k) {
        const size_t i = rng() % n;
        next.Set(i, !next.Test(i));
      }
      break;
    }
    default: {  // fresh random mask of random density
      const size_t density = rng() % 101;
      for (size_t i = 0; i < n; ++i) next.Set(i, rng() % 100 < density);
    }
  }
  return next;
}

class WeightCacheSequenceTest : public ::testing::TestWithParam<Config> {};

TEST_P(WeightCacheSequenceTest, MatchesReferenceAfterEveryStep) {
  const Config config = GetParam();
  std::mt19937_64 rng(std::hash<std::string>()(config.Describe()) & 0xFFFF);
  static constexpr size_t kShapes[][2] = {{1, 1}, {3, 7}, {16, 64}, {17, 130}, {40, 257}};
  int sequences = 0;
  for (const auto& shape : kShapes) {
    for (int seq = 0; seq < 20; ++seq, ++sequences) {
      const size_t h = shape[0], i = shape[1];
      const Weights w = RandomWeights(rng, h, i, DTypeSize(config.dtype));
      // Start small so later steps grow far beyond the first mask.
      diff::NeuronMask mask(i);
      for (size_t k = 0; k < i; ++k) mask.Set(k, rng() % 20 == 0);
      WeightCacheOptions options = ShapeOptions(h, i);
      options.dtype = config.dtype;
      options.has_gate = config.has_gate;
      options.layout = config.layout;
      options.ownership = config.ownership;
      options.down_layout = config.down_layout;
      options.num_threads = config.threads;
      options.tolerance = config.tolerance;
      options.simd = config.simd;
      options.concat_gate_up = config.concat;
      absl::StatusOr<WeightCache> cache =
          WeightCache::Create(options, w.View(config.has_gate, config.down_layout), mask);
      ASSERT_TRUE(cache.ok()) << cache.status();
      diff::NeuronMask applied = mask;
      ExpectMatches(*cache, w, applied, config.Describe() + " after Create");
      for (int step = 0; step < 40; ++step) {
        const std::string where = absl::StrFormat("%s, shape H=%d I=%d, sequence %d, step %d",
                                                  config.Describe(), h, i, seq, step);
        mask = NextMask(rng, mask);
        ASSERT_TRUE(cache->Update(mask).ok()) << where;
        const size_t changes = *diff::CountMaskChanges(applied, mask);
        diff::MaskDiff d;
        ASSERT_TRUE(diff::ComputeMaskDiff(applied, mask, &d).ok());
        if (changes != 0 && changes < config.tolerance) {
          ASSERT_TRUE(cache->last_update().skipped) << where;
          ASSERT_EQ(cache->lag(), changes) << where;
          ExpectMatches(*cache, w, applied, where + " (skipped)");
          if (step % 3 == 0) {
            ASSERT_TRUE(cache->CatchUp().ok()) << where;
            applied = mask;
            ASSERT_EQ(cache->lag(), 0u) << where;
          }
        } else {
          applied = mask;
          ASSERT_EQ(cache->lag(), 0u) << where;
          if (!cache->last_update().repacked) {
            // At most max(|added|, |removed|) row writes per matrix.
            ASSERT_LE(cache->last_update().rows_loaded + cache->last_update().rows_moved,
                      std::max(d.added.size(), d.removed.size()))
                << where;
          }
        }
        ExpectMatches(*cache, w, applied, where);
      }
    }
  }
  EXPECT_EQ(sequences, 100);
}

std::vector<Config> AllConfigs() {
  std::vector<Config> configs;
  for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    for (bool has_gate : {true, false}) {
      for (PackedLayout layout : {PackedLayout::kSplit, PackedLayout::kInterleavedGateUp,
                                  PackedLayout::kFusedRows}) {
        if (!has_gate && layout == PackedLayout::kInterleavedGateUp) continue;
        for (int threads : {1, 2}) {
          for (size_t tolerance : {size_t{0}, size_t{3}}) {
            const bool alt = (threads + tolerance + static_cast<int>(dtype)) % 2 == 0;
            // Every fast path against the scalar one: the configurations
            // alternate between the best SIMD level and the portable code.
            const SimdLevel simd = (configs.size() % 3 == 0) ? SimdLevel::kScalar
                                                             : SimdLevel::kBest;
            // Half the gated configurations also keep the concatenation.
            const bool concat = has_gate && (configs.size() / 2) % 2 == 0;
            configs.push_back({simd, dtype, has_gate, layout,
                               alt ? SourceOwnership::kBorrow : SourceOwnership::kCopy,
                               alt ? DownLayout::kNeuronMajor : DownLayout::kHiddenMajor,
                               threads, tolerance, concat});
          }
        }
      }
    }
  }
  return configs;
}

INSTANTIATE_TEST_SUITE_P(AllConfigurations, WeightCacheSequenceTest,
                         ::testing::ValuesIn(AllConfigs()));

// Shapes large enough that every copy runs in parallel and the transpose
// takes the SIMD tiles, with odd sizes; 8 threads is more than this
// machine's cores and, in this suite's OMP_THREAD_LIMIT / OMP_DYNAMIC
// variants (tests/BUILD.bazel), more than the runtime starts: construction
// and updates must cover every row with whatever team they get.
TEST(WeightCacheTest, LargeShapesOnSeveralThreads) {
  std::mt19937_64 rng(77);
  for (int threads : {2, 8}) {
    for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
      for (PackedLayout layout : {PackedLayout::kSplit, PackedLayout::kFusedRows}) {
        const size_t h = 520, i = 1031;
        const Weights w = RandomWeights(rng, h, i, DTypeSize(dtype));
        diff::NeuronMask mask(i);
        for (size_t k = 0; k < i; k += 2) mask.Set(k, true);
        WeightCacheOptions options = ShapeOptions(h, i);
        options.dtype = dtype;
        options.layout = layout;
        options.num_threads = threads;
        WeightCache cache = *WeightCache::Create(options, w.Gated(), mask);
        const std::string config = absl::StrFormat("%s %s %d threads", DTypeName(dtype),
                                                   PackedLayoutName(layout), threads);
        ExpectMatches(cache, w, mask, config + " after Create");
        for (int step = 0; step < 12; ++step) {
          mask = NextMask(rng, mask);
          ASSERT_TRUE(cache.Update(mask).ok());
          ExpectMatches(cache, w, mask, absl::StrFormat("%s step %d", config, step));
        }
        std::vector<uint8_t> concatenated(2 * cache.num_active() * h * DTypeSize(dtype));
        ASSERT_TRUE(cache.CopyConcatenatedGateUp(absl::MakeSpan(concatenated)).ok());
        const absl::Span<const uint32_t> slots = cache.active_indices();
        const size_t rb = h * DTypeSize(dtype);
        for (size_t s = 0; s < slots.size(); ++s) {
          ASSERT_EQ(0, std::memcmp(&concatenated[s * rb], &w.gate[slots[s] * rb], rb))
              << config << ": concatenated gate row " << s;
          ASSERT_EQ(0, std::memcmp(&concatenated[(slots.size() + s) * rb],
                                   &w.up[slots[s] * rb], rb))
              << config << ": concatenated up row " << s;
        }
      }
    }
  }
}

// Two threads updating one cache (a caller bug the class detects): every
// call either applies or is refused with FailedPrecondition, and the cache
// is exact for the mask it reports applied, whichever calls won.
TEST(WeightCacheTest, ConcurrentUpdatesOnOneCacheNeverCorruptIt) {
  std::mt19937_64 rng(85);
  const size_t h = 64, i = 2048;
  const Weights w = RandomWeights(rng, h, i, 4);
  WeightCacheOptions options = ShapeOptions(h, i);
  WeightCache cache = *WeightCache::Create(options, w.Gated(), diff::NeuronMask(i));
  std::atomic<int> refused{0}, other_errors{0};
  auto hammer = [&](uint64_t seed) {
    std::mt19937_64 local(seed);
    diff::NeuronMask mask(i);
    for (int step = 0; step < 300; ++step) {
      mask = NextMask(local, mask);
      const absl::Status s = step % 5 == 0 ? cache.Reserve(local() % i) : cache.Update(mask);
      if (s.code() == absl::StatusCode::kFailedPrecondition) {
        ++refused;
      } else if (!s.ok()) {
        ++other_errors;
      }
    }
  };
  std::thread a(hammer, 1), b(hammer, 2);
  a.join();
  b.join();
  EXPECT_EQ(other_errors.load(), 0);
  ExpectMatches(cache, w, cache.applied_mask(), "after concurrent updates");
  std::printf("concurrent updates: %d calls refused\n", refused.load());
}

// The enum names (platform/enum_names.h) round-trip, and a wrong name is
// refused with the choices listed.
TEST(EnumNamesTest, NamesRoundTripAndBadNamesListTheChoices) {
  for (DType d : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    EXPECT_EQ(*ParseDType(DTypeName(d)), d);
  }
  for (PackedLayout l : {PackedLayout::kSplit, PackedLayout::kInterleavedGateUp,
                         PackedLayout::kFusedRows}) {
    EXPECT_EQ(*ParsePackedLayout(PackedLayoutName(l)), l);
  }
  for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512,
                          SimdLevel::kBest}) {
    EXPECT_EQ(*ParseSimdLevel(SimdLevelName(level)), level);
  }
  EXPECT_THAT(ParseDType("float64").status().message(),
              HasSubstr("dtype must be one of float32, bfloat16, float16; got 'float64'"));
  EXPECT_THAT(ParsePackedLayout("Split").status().message(),
              HasSubstr("layout must be one of split, interleaved, fused; got 'Split'"));
  EXPECT_EQ(ParseSimdLevel("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_STREQ(DTypeName(static_cast<DType>(9)), "unknown");
}

TEST(WeightCacheTest, VerifyFindsRowsWrittenThroughAView) {
  std::mt19937_64 rng(86);
  const Weights w = RandomWeights(rng, 8, 64, 4);
  for (PackedLayout layout : {PackedLayout::kSplit, PackedLayout::kInterleavedGateUp,
                              PackedLayout::kFusedRows}) {
    for (SourceOwnership ownership : {SourceOwnership::kCopy, SourceOwnership::kBorrow}) {
      WeightCacheOptions options = ShapeOptions(8, 64);
      options.layout = layout;
      options.ownership = ownership;
      WeightCache cache =
          *WeightCache::Create(options, w.Gated(), *diff::NeuronMask::FromIndices(64, {3, 9}));
      ASSERT_TRUE(cache.Verify().ok());
      // Slot 1's down row, element 5, changed the way a caller writing into
      // a view would.
      const MatrixView down = cache.down_rows();
      // (A flipped bit: the weights are random bytes, and NaN + 1 is NaN.)
      auto* p = static_cast<uint8_t*>(const_cast<void*>(down.data)) +
                (down.row_stride + 5) * sizeof(float);
      *p ^= 0x10;
      const absl::Status s = cache.Verify();
      ASSERT_EQ(s.code(), absl::StatusCode::kDataLoss) << PackedLayoutName(layout);
      EXPECT_THAT(s.message(), HasSubstr("down row of slot 1"));
      EXPECT_THAT(s.message(), HasSubstr("neuron 9"));
      *p ^= 0x10;
      EXPECT_TRUE(cache.Verify().ok());
    }
  }
}

TEST(WeightCacheTest, EveryMaskFormGivesTheSameCache) {
  std::mt19937_64 rng(78);
  const Weights w = RandomWeights(rng, 8, 100, 4);
  WeightCacheOptions options = ShapeOptions(8, 100);
  WeightCache cache = *WeightCache::Create(options, w.Gated(),
                                           diff::NeuronMask(100));
  std::vector<uint8_t> bytes(100, 0);
  bytes[3] = 1;
  bytes[50] = 7;
  ASSERT_TRUE(cache.Update(cache::MaskInput::Bytes(bytes)).ok());
  ExpectMatches(cache, w, *diff::NeuronMask::FromIndices(100, {3, 50}), "bytes");
  ASSERT_TRUE(cache.Update(cache::MaskInput::Indices({1, 2, 99})).ok());
  ExpectMatches(cache, w, *diff::NeuronMask::FromIndices(100, {1, 2, 99}), "indices");
  std::vector<uint8_t> matrix(300, 0);
  matrix[5] = 1;
  matrix[100 + 6] = 1;
  matrix[200 + 5] = 1;
  ASSERT_TRUE(cache.Update(cache::MaskInput::ByteRows(matrix, 3)).ok());
  ExpectMatches(cache, w, *diff::NeuronMask::FromIndices(100, {5, 6}), "union of rows");
}

TEST(WeightCacheTest, NoChangeUpdateCopiesNothing) {
  std::mt19937_64 rng(79);
  const Weights w = RandomWeights(rng, 8, 64, 4);
  WeightCacheOptions options = ShapeOptions(8, 64);
  const diff::NeuronMask mask = *diff::NeuronMask::FromIndices(64, {1, 5, 9});
  WeightCache cache = *WeightCache::Create(options, w.Gated(), mask);
  const uint64_t version = cache.version();
  ASSERT_TRUE(cache.Update(mask).ok());
  EXPECT_EQ(cache.last_update().bytes_copied, 0u);
  EXPECT_EQ(cache.version(), version);
}

TEST(WeightCacheTest, ReservePreventsGrowthOnTheHotPath) {
  std::mt19937_64 rng(80);
  const Weights w = RandomWeights(rng, 8, 200, 4);
  WeightCacheOptions options = ShapeOptions(8, 200);
  WeightCache cache = *WeightCache::Create(options, w.Gated(),
                                           *diff::NeuronMask::FromIndices(200, {0}));
  ASSERT_TRUE(cache.Reserve(200).ok());
  EXPECT_EQ(cache.capacity(), 200u);
  diff::NeuronMask full(200);
  for (size_t k = 0; k < 200; ++k) full.Set(k, true);
  ASSERT_TRUE(cache.Update(full).ok());
  EXPECT_FALSE(cache.last_update().grew);
  ExpectMatches(cache, w, full, "full after reserve");
}

TEST(WeightCacheTest, ConcatenatedGateUpAndInterleavedViewAgree) {
  std::mt19937_64 rng(81);
  const size_t h = 5, i = 40;
  const Weights w = RandomWeights(rng, h, i, 2);
  const diff::NeuronMask mask = *diff::NeuronMask::FromIndices(i, {2, 7, 30, 39});
  for (PackedLayout layout : {PackedLayout::kSplit, PackedLayout::kInterleavedGateUp,
                              PackedLayout::kFusedRows}) {
    WeightCacheOptions options = ShapeOptions(h, i);
    options.dtype = DType::kBFloat16;
    options.layout = layout;
    WeightCache cache = *WeightCache::Create(options, w.Gated(), mask);
    std::vector<uint8_t> concat(2 * 4 * h * 2);
    ASSERT_TRUE(cache.CopyConcatenatedGateUp(absl::MakeSpan(concat)).ok());
    for (size_t s = 0; s < 4; ++s) {
      const uint32_t n = cache.active_indices()[s];
      EXPECT_EQ(0, std::memcmp(&concat[s * h * 2], &w.gate[n * h * 2], h * 2));
      EXPECT_EQ(0, std::memcmp(&concat[(4 + s) * h * 2], &w.up[n * h * 2], h * 2));
    }
    absl::StatusOr<MatrixView> fused = cache.gate_up_interleaved();
    if (layout == PackedLayout::kSplit) {
      EXPECT_EQ(fused.status().code(), absl::StatusCode::kFailedPrecondition);
      continue;
    }
    ASSERT_TRUE(fused.ok());
    EXPECT_EQ(fused->cols, 2 * h);
    EXPECT_EQ(fused->row_stride, (layout == PackedLayout::kFusedRows ? 3 : 2) * h);
    for (size_t s = 0; s < 4; ++s) {
      const uint32_t n = cache.active_indices()[s];
      const uint8_t* row = static_cast<const uint8_t*>(fused->data) + s * fused->row_stride * 2;
      EXPECT_EQ(0, std::memcmp(row, &w.gate[n * h * 2], h * 2));
      EXPECT_EQ(0, std::memcmp(row + h * 2, &w.up[n * h * 2], h * 2));
    }
  }
}

TEST(WeightCacheTest, ArenaBackedCacheAndFootprint) {
  std::mt19937_64 rng(82);
  const Weights w = RandomWeights(rng, 16, 128, 4);
  std::unique_ptr<memory::Arena> arena = *memory::Arena::Create(1 << 20);
  WeightCacheOptions options = ShapeOptions(16, 128);
  options.arena = arena.get();
  options.ownership = SourceOwnership::kBorrow;
  {
    const diff::NeuronMask mask = *diff::NeuronMask::FromIndices(128, {0, 1, 2});
    WeightCache cache = *WeightCache::Create(options, w.Gated(), mask);
    EXPECT_GT(arena->bytes_in_use(), 128u * 16 * 4);  // the transposed down at least
    EXPECT_GE(cache.memory_bytes(), arena->bytes_in_use());
    ExpectMatches(cache, w, mask, "arena");
  }
  EXPECT_EQ(arena->bytes_in_use(), 0u) << "the cache gave its regions back";
}

// The fused layout keeps all three parts in one array: its footprint is the
// split layout's (each buffer counted once), and its views are strided.
TEST(WeightCacheTest, FusedRowsShareOneArray) {
  std::mt19937_64 rng(86);
  const size_t h = 12, i = 96;
  const Weights w = RandomWeights(rng, h, i, 4);
  const diff::NeuronMask mask = *diff::NeuronMask::FromIndices(i, {1, 5, 50, 95});
  for (bool has_gate : {true, false}) {
    WeightCacheOptions options = ShapeOptions(h, i);
    options.has_gate = has_gate;
    const MlpWeights sources =
        has_gate ? w.Gated() : w.View(false, DownLayout::kHiddenMajor);
    WeightCache split = *WeightCache::Create(options, sources, mask);
    options.layout = PackedLayout::kFusedRows;
    WeightCache fused = *WeightCache::Create(options, sources, mask);
    EXPECT_EQ(fused.memory_bytes(), split.memory_bytes()) << "gate=" << has_gate;
    const size_t parts = has_gate ? 3 : 2;
    EXPECT_EQ(fused.up().row_stride, parts * h);
    EXPECT_EQ(fused.down_rows().row_stride, parts * h);
    EXPECT_EQ(fused.down_hidden_major().col_stride, parts * h);
    EXPECT_EQ(static_cast<const uint8_t*>(fused.down_rows().data) -
                  static_cast<const uint8_t*>(fused.up().data),
              static_cast<ptrdiff_t>(h * 4));
    ExpectMatches(fused, w, mask, has_gate ? "fused" : "fused, no gate");
  }
}

TEST(WeightCacheTest, RetainedStorageOutlivesGrowthAndTheCache) {
  std::mt19937_64 rng(85);
  const Weights w = RandomWeights(rng, 8, 300, 4);
  WeightCacheOptions options = ShapeOptions(8, 300);
  std::shared_ptr<const void> keep;
  MatrixView old_up;
  std::vector<uint8_t> old_bytes;
  {
    WeightCache cache = *WeightCache::Create(options, w.Gated(),
                                             *diff::NeuronMask::FromIndices(300, {7, 9}));
    old_up = cache.up();
    keep = cache.RetainStorage();
    const auto* p = static_cast<const uint8_t*>(old_up.data);
    old_bytes.assign(p, p + 2 * 8 * 4);
    diff::NeuronMask full(300);
    for (size_t k = 0; k < 300; ++k) full.Set(k, true);
    ASSERT_TRUE(cache.Update(full).ok());
    ASSERT_TRUE(cache.last_update().grew);
    EXPECT_NE(cache.up().data, old_up.data);
  }
  // The cache is gone; the retained buffer is not (ASan checks the read).
  const auto* p = static_cast<const uint8_t*>(old_up.data);
  EXPECT_EQ(std::vector<uint8_t>(p, p + 2 * 8 * 4), old_bytes);
}

// ---- Planner invariants (pure logic, no copying).

TEST(UpdatePlanTest, RowWritesMeetTheLowerBoundAndCopiesAreDisjoint) {
  std::mt19937_64 rng(83);
  for (int trial = 0; trial < 600; ++trial) {
    const size_t n = 1 + rng() % 300;
    diff::NeuronMask before(n);
    for (size_t k = 0; k < n; ++k) before.Set(k, rng() % 3 == 0);
    SlotMap map;
    map.neuron_to_slot.assign(n, kNoSlot);
    UpdatePlan plan;  // reused by every step: its scratch must come back clean
    PlanRepack(before.ToIndices(), &map, &plan);
    for (int step = 0; step < 5; ++step) {
      // Densities from empty to full, so steps grow, shrink and pair.
      const int density = static_cast<int>(rng() % 5);
      diff::NeuronMask after(n);
      for (size_t k = 0; k < n; ++k) after.Set(k, static_cast<int>(rng() % 4) < density);
      diff::MaskDiff d;
      ASSERT_TRUE(diff::ComputeMaskDiff(before, after, &d).ok());
      PlanDifferentialUpdate(d.added, d.removed, &map, &plan);
      const std::string where = absl::StrFormat("trial %d step %d (n %d): +%d -%d", trial,
                                                step, n, d.added.size(), d.removed.size());
      // Every added neuron is loaded once; removals in the tail need no move,
      // so the writes are at most max(|added|, |removed|).
      ASSERT_EQ(plan.loads.size(), d.added.size()) << where;
      ASSERT_LE(plan.loads.size() + plan.moves.size(),
                std::max(d.added.size(), d.removed.size()))
          << where;
      std::vector<uint32_t> slots = map.slot_to_neuron;
      std::sort(slots.begin(), slots.end());
      ASSERT_EQ(slots, after.ToIndices()) << where;
      for (size_t s = 0; s < map.slot_to_neuron.size(); ++s) {
        ASSERT_EQ(map.neuron_to_slot[map.slot_to_neuron[s]], s) << where;
      }
      // No copy writes a slot another copy reads, and all stay below A'.
      std::vector<int> written(n, 0);
      for (const auto& c : plan.loads) {
        ASSERT_LT(c.dst_row, map.slot_to_neuron.size()) << where;
        ASSERT_EQ(written[c.dst_row]++, 0) << where;
      }
      for (const auto& c : plan.moves) {
        ASSERT_LT(c.dst_row, map.slot_to_neuron.size()) << where;
        ASSERT_GE(c.src_row, map.slot_to_neuron.size()) << where;
        ASSERT_EQ(written[c.dst_row]++, 0) << where;
      }
      // Sources and destinations both advance through memory.
      for (size_t k = 1; k < plan.loads.size(); ++k) {
        ASSERT_LT(plan.loads[k - 1].src_row, plan.loads[k].src_row) << where << " load " << k;
        ASSERT_LT(plan.loads[k - 1].dst_row, plan.loads[k].dst_row) << where << " load " << k;
      }
      for (size_t k = 1; k < plan.moves.size(); ++k) {
        ASSERT_LT(plan.moves[k - 1].src_row, plan.moves[k].src_row) << where << " move " << k;
        ASSERT_LT(plan.moves[k - 1].dst_row, plan.moves[k].dst_row) << where << " move " << k;
      }
      for (size_t w = 0; w < plan.freed.size(); ++w) {
        ASSERT_EQ(plan.freed[w], 0u) << where << " freed-slot word " << w;
      }
      before = after;
    }
  }
}

// ---- One test per error class; the cache is unchanged after each.

class WeightCacheErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(84);
    w_ = RandomWeights(rng, 8, 64, 4);
    options_.hidden_size = 8;
    options_.intermediate_size = 64;
    mask_ = *diff::NeuronMask::FromIndices(64, {4, 8, 15});
  }
  void ExpectUnchanged(const WeightCache& cache) {
    ExpectMatches(cache, w_, mask_, "after a failed call");
  }
  Weights w_;
  WeightCacheOptions options_;
  diff::NeuronMask mask_;
};

TEST_F(WeightCacheErrorTest, MaskLengthMismatch) {
  WeightCache cache = *WeightCache::Create(options_, w_.Gated(), mask_);
  absl::Status s = cache.Update(diff::NeuronMask(65));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("65 neurons"));
  s = cache.Update(cache::MaskInput::Bytes(std::vector<uint8_t>(63, 1)));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("63 entries, expected 64"));
  s = cache.Update(cache::MaskInput::Indices({3, 64}));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = cache.Update(cache::MaskInput::ByteRows(std::vector<uint8_t>(100, 1), 2));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  ExpectUnchanged(cache);
}

TEST_F(WeightCacheErrorTest, ZeroSizes) {
  options_.hidden_size = 0;
  absl::StatusOr<WeightCache> cache =
      WeightCache::Create(options_, w_.Gated(), mask_);
  ASSERT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cache.status().message(), HasSubstr("hidden_size must be positive"));
  options_.hidden_size = 8;
  options_.intermediate_size = 0;
  cache = WeightCache::Create(options_, w_.Gated(), mask_);
  EXPECT_THAT(cache.status().message(), HasSubstr("intermediate_size must be positive"));
}

TEST_F(WeightCacheErrorTest, ShapeMismatchBetweenMaskAndWeights) {
  absl::StatusOr<WeightCache> cache = WeightCache::Create(
      options_, w_.Gated(), diff::NeuronMask(63));
  ASSERT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cache.status().message(), HasSubstr("63 neurons, intermediate_size is 64"));
}

TEST_F(WeightCacheErrorTest, MissingWeights) {
  absl::StatusOr<WeightCache> cache =
      WeightCache::Create(options_, w_.View(false, DownLayout::kHiddenMajor), mask_);
  ASSERT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cache.status().message(), HasSubstr("gate weight is null"));
  options_.has_gate = false;
  options_.layout = PackedLayout::kInterleavedGateUp;
  cache = WeightCache::Create(options_, w_.View(false, DownLayout::kHiddenMajor), mask_);
  EXPECT_THAT(cache.status().message(), HasSubstr("needs a gate"));
}

TEST_F(WeightCacheErrorTest, UnsupportedType) {
  options_.dtype = static_cast<DType>(7);
  absl::StatusOr<WeightCache> cache =
      WeightCache::Create(options_, w_.Gated(), mask_);
  ASSERT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cache.status().message(), HasSubstr("unsupported element type 7"));
}

TEST_F(WeightCacheErrorTest, BadThreadCountAndRepackFraction) {
  for (int threads : {0, kMaxThreads + 1, 1000000, 2147483647}) {
    options_.num_threads = threads;
    EXPECT_THAT(WeightCache::Create(options_, w_.Gated(), mask_).status().message(),
                HasSubstr(absl::StrFormat("num_threads must be in [1, %d], got %d",
                                          kMaxThreads, threads)));
  }
  options_.num_threads = 1;
  options_.repack_fraction = 0;
  EXPECT_THAT(WeightCache::Create(options_, w_.Gated(), mask_)
                  .status()
                  .message(),
              HasSubstr("repack_fraction"));
  options_.repack_fraction = 0.5;
  WeightCache cache = *WeightCache::Create(options_, w_.Gated(), mask_);
  EXPECT_EQ(cache.set_num_threads(-1).code(), absl::StatusCode::kInvalidArgument);
  const absl::Status s = cache.set_num_threads(1000000);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("num_threads must be in [1, 1024], got 1000000"));
  EXPECT_EQ(cache.num_threads(), 1);
  ExpectUnchanged(cache);
}

// A mutating call while another one runs on the same cache: refused with
// FailedPrecondition, nothing changed. (The flag is held through the test
// peer, as a call running on another thread would hold it.)
TEST_F(WeightCacheErrorTest, MutationWhileAnotherRunsIsRefused) {
  WeightCache cache = *WeightCache::Create(options_, w_.Gated(), mask_);
  const diff::NeuronMask other = *diff::NeuronMask::FromIndices(64, {1, 2, 3});
  ASSERT_TRUE(WeightCacheTestPeer::HoldMutationFlag(cache));
  const std::vector<uint8_t> bytes(64, 1);
  const std::vector<uint32_t> indices = {5};
  const absl::Status statuses[] = {
      cache.Update(other),
      cache.Update(cache::MaskInput::Bytes(bytes)),
      cache.Update(cache::MaskInput::Indices(indices)),
      cache.Update(cache::MaskInput::ByteRows(bytes, 1)),
      cache.CatchUp(),
      cache.Reserve(64),
      cache.set_num_threads(2),
      cache.set_tolerance(5),
  };
  for (const absl::Status& s : statuses) {
    ASSERT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(s.message(), HasSubstr("another call is mutating the same cache"));
  }
  EXPECT_EQ(cache.num_threads(), 1);
  EXPECT_EQ(cache.tolerance(), 0u);
  EXPECT_EQ(cache.requested_mask(), mask_);
  ExpectUnchanged(cache);
  WeightCacheTestPeer::ReleaseMutationFlag(cache);
  ASSERT_TRUE(cache.Update(other).ok());
  ExpectMatches(cache, w_, other, "after the flag is released");
}

TEST_F(WeightCacheErrorTest, ReserveBeyondTheLayer) {
  WeightCache cache = *WeightCache::Create(options_, w_.Gated(), mask_);
  const absl::Status s = cache.Reserve(65);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("cannot reserve 65"));
  ExpectUnchanged(cache);
}

TEST_F(WeightCacheErrorTest, AllocationFailureLeavesTheCacheUnchanged) {
  // An arena just big enough for the transposed down and the first packing.
  std::unique_ptr<memory::Arena> arena = *memory::Arena::Create(64 * 8 * 4 + 3 * 4 * 8 * 4 + 3 * 64);
  options_.arena = arena.get();
  options_.ownership = SourceOwnership::kBorrow;
  {
    WeightCache cache =
        *WeightCache::Create(options_, w_.Gated(), mask_);
    diff::NeuronMask full(64);
    for (size_t k = 0; k < 64; ++k) full.Set(k, true);
    const absl::Status s = cache.Update(full);
    ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    EXPECT_THAT(s.message(), HasSubstr("arena cannot hold"));
    ExpectUnchanged(cache);
    EXPECT_EQ(cache.requested_mask(), mask_);
    EXPECT_EQ(cache.Reserve(64).code(), absl::StatusCode::kResourceExhausted);
    ExpectUnchanged(cache);
  }
}

TEST_F(WeightCacheErrorTest, ConcatenationPreconditions) {
  WeightCache cache = *WeightCache::Create(options_, w_.Gated(), mask_);
  std::vector<uint8_t> wrong(10);
  EXPECT_THAT(cache.CopyConcatenatedGateUp(absl::MakeSpan(wrong)).message(),
              HasSubstr("output has 10 bytes"));
  options_.has_gate = false;
  WeightCache gateless =
      *WeightCache::Create(options_, w_.View(false, DownLayout::kHiddenMajor), mask_);
  EXPECT_EQ(gateless.CopyConcatenatedGateUp(absl::MakeSpan(wrong)).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(gateless.gate().data, nullptr);
  // The kept concatenation: only when asked for, and only with a gate.
  EXPECT_THAT(cache.concatenated_gate_up().status().message(),
              HasSubstr("needs WeightCacheOptions::concat_gate_up"));
  options_.concat_gate_up = true;
  EXPECT_THAT(WeightCache::Create(options_, w_.View(false, DownLayout::kHiddenMajor), mask_)
                  .status()
                  .message(),
              HasSubstr("concat_gate_up needs a gate projection"));
}

// With A constant (top-k style masks), a view of the concatenation taken
// before an update shows the new rows: the update rewrote them in place.
TEST(WeightCacheTest, ConcatenationViewIsLiveWhileTheCountStaysTheSame) {
  std::mt19937_64 rng(41);
  const size_t h = 16, i = 64;
  const testing::ReferenceWeights w = testing::RandomReferenceWeights(rng, h, i, 4);
  WeightCacheOptions options;
  options.hidden_size = h;
  options.intermediate_size = i;
  options.concat_gate_up = true;
  diff::NeuronMask mask(i);
  for (size_t k = 0; k < 20; ++k) mask.Set(k, true);
  WeightCache cache = *WeightCache::Create(options, w.Gated(), mask);
  const MatrixView before = *cache.concatenated_gate_up();
  diff::NeuronMask next = mask;
  next.Set(3, false);
  next.Set(40, true);  // one replaced neuron, A stays 20
  ASSERT_TRUE(cache.Update(next).ok());
  EXPECT_EQ(cache.last_update().rows_loaded, 1u);
  const MatrixView after = *cache.concatenated_gate_up();
  EXPECT_EQ(after.data, before.data);
  EXPECT_EQ(testing::CompareWithReference(cache, w, next), "");
  std::vector<uint8_t> copy(2 * 20 * h * 4);
  ASSERT_TRUE(cache.CopyConcatenatedGateUp(absl::MakeSpan(copy)).ok());
  EXPECT_EQ(std::memcmp(before.data, copy.data(), copy.size()), 0);
}

}  // namespace
}  // namespace sparse_mlp::cache
