// The flash tier: flash/residency.h against a plain reference policy, and
// flash::FlashModelCache + step::FlashLayerStep against the in-DRAM forward
// (ForwardIndexed over the full weights) over random mask sequences, windows,
// budgets, engines; determinism; injected faults and a file corrupted or
// truncated during a run; budgets and masks refused. Fixed seeds; failures
// name the step.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "flash/flash_cache.h"
#include "flash/residency.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mlp/mlp_forward.h"
#include "platform/float16.h"
#include "step/flash_step.h"
#include "step/mask_step.h"
#include "store/bundle_writer.h"
#include "tests/faulty_io_engine.h"

namespace sparse_mlp {
namespace {

using ::testing::HasSubstr;

std::string TempDir() {
  const char* t = std::getenv("TEST_TMPDIR");
  return t != nullptr ? t : "/tmp";
}

std::vector<uint32_t> RandomMask(size_t n, size_t k, std::mt19937_64& rng) {
  std::vector<uint32_t> all(n);
  for (size_t j = 0; j < n; ++j) all[j] = static_cast<uint32_t>(j);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(k);
  std::sort(all.begin(), all.end());
  return all;
}

// A mask that keeps most of `prev` (a sliding, flickering activity).
std::vector<uint32_t> NextMask(const std::vector<uint32_t>& prev, size_t n, size_t k,
                               double churn, std::mt19937_64& rng) {
  std::set<uint32_t> s;
  for (uint32_t j : prev) {
    if (std::uniform_real_distribution<double>(0, 1)(rng) > churn && s.size() < k) s.insert(j);
  }
  while (s.size() < k) s.insert(static_cast<uint32_t>(rng() % n));
  return std::vector<uint32_t>(s.begin(), s.end());
}

// ---- the residency policy --------------------------------------------------

// The policy stated plainly: last activity per neuron, a resident set.
struct ReferencePolicy {
  size_t capacity = 0, window = 1;
  uint64_t t = 0;
  std::map<uint32_t, uint64_t> last;
  std::set<uint32_t> resident;
  void Step(const std::vector<uint32_t>& mask) {
    ++t;
    std::set<uint32_t> in(mask.begin(), mask.end());
    for (uint32_t j : mask) last[j] = t;
    for (auto it = resident.begin(); it != resident.end();) {
      if (!in.count(*it) && last[*it] + window <= t) {
        it = resident.erase(it);
      } else {
        ++it;
      }
    }
    std::set<uint32_t> all = resident;
    all.insert(mask.begin(), mask.end());
    while (all.size() > capacity) {
      uint32_t victim = UINT32_MAX;
      for (uint32_t j : all) {
        if (in.count(j)) continue;
        if (victim == UINT32_MAX || last[j] < last[victim] ||
            (last[j] == last[victim] && j < victim)) {
          victim = j;
        }
      }
      all.erase(victim);
    }
    resident = all;
  }
};

TEST(Residency, MatchesTheReferencePolicy) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 60; ++trial) {
    const size_t n = 20 + rng() % 200, k = 1 + rng() % (n / 2);
    const size_t capacity = k + rng() % (n - k + 1), window = 1 + rng() % 8;
    flash::ResidencyPlanner p(n, capacity, window);
    ReferencePolicy ref;
    ref.capacity = capacity;
    ref.window = window;
    std::vector<uint32_t> mask = RandomMask(n, k, rng);
    for (int step = 0; step < 40; ++step) {
      const std::string where = absl::StrFormat("trial %d (I=%d C=%d window=%d) step %d", trial,
                                                n, capacity, window, step);
      const size_t kk = std::max<size_t>(1, k - rng() % 3);
      mask = NextMask(mask, n, kk, 0.3, rng);
      std::set<uint32_t> before;
      for (uint32_t j = 0; j < n; ++j) {
        if (p.slot_of(j) != flash::kNoSlot) before.insert(j);
      }
      flash::ResidencyPlan plan;
      ASSERT_TRUE(p.Plan(mask, &plan).ok()) << where;
      ref.Step(mask);
      std::set<uint32_t> now;
      std::set<uint32_t> slots;
      for (uint32_t j = 0; j < n; ++j) {
        if (p.slot_of(j) == flash::kNoSlot) continue;
        now.insert(j);
        ASSERT_EQ(p.neuron_of(p.slot_of(j)), j) << where;
        ASSERT_TRUE(slots.insert(p.slot_of(j)).second) << where << ": slot shared";
      }
      ASSERT_EQ(now, ref.resident) << where;
      // Entering = the mask minus what was resident; hits the rest.
      std::vector<uint32_t> entering;
      for (uint32_t j : mask) {
        if (!before.count(j)) entering.push_back(j);
      }
      ASSERT_EQ(std::vector<uint32_t>(plan.entering.begin(), plan.entering.end()), entering)
          << where;
      ASSERT_EQ(plan.hit_slots.size() + plan.entering.size(), mask.size()) << where;
      ASSERT_TRUE(std::is_sorted(plan.hit_slots.begin(), plan.hit_slots.end())) << where;
      ASSERT_TRUE(std::is_sorted(plan.entering_slots.begin(), plan.entering_slots.end()))
          << where;
      // Entering neurons take the lowest free slots.
      if (!plan.entering_slots.empty()) {
        for (uint32_t s = 0; s < plan.entering_slots.back(); ++s) {
          const uint32_t j = p.neuron_of(s);
          ASSERT_TRUE(j != flash::kNoSlot) << where << ": slot " << s << " left free";
        }
      }
    }
  }
}

// A guess (speculative gate-first) is not a token: nothing expires, the
// count stays, its neurons are kept like the latest token's, it evicts no
// neuron of the latest token, and what does not fit is left out.
TEST(Residency, GuessesAreNotTokens) {
  flash::ResidencyPlanner p(16, 6, 2);
  flash::ResidencyPlan plan;
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{0, 1, 2}, &plan).ok());
  ASSERT_TRUE(p.PlanGuess(std::vector<uint32_t>{2, 3, 4, 5, 6}, &plan).ok());
  EXPECT_EQ(p.tokens(), 1u);
  EXPECT_EQ(plan.hit_slots.size(), 1u);                              // 2
  EXPECT_EQ(plan.entering, (std::vector<uint32_t>{3, 4, 5}));        // 6 does not fit
  EXPECT_EQ(plan.evicted, 0u);                                       // 0, 1 kept
  EXPECT_EQ(p.slot_of(6), flash::kNoSlot);
  // The next token finds the guessed neurons resident (reported apart: a
  // caller may still be reading them); room for 7 comes from the latest
  // token's neurons before the guess's (the same age; a guessed read may
  // be in flight).
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{3, 4, 7}, &plan).ok());
  EXPECT_EQ(p.tokens(), 2u);
  EXPECT_EQ(plan.hit_slots.size(), 0u);
  EXPECT_EQ(plan.guessed_hit_slots.size(), 2u);
  EXPECT_TRUE(std::is_sorted(plan.guessed_hit_slots.begin(), plan.guessed_hit_slots.end()));
  EXPECT_EQ(plan.entering, (std::vector<uint32_t>{7}));
  EXPECT_EQ(plan.evicted, 1u);
  EXPECT_EQ(p.slot_of(0), flash::kNoSlot);  // token 1's, not the guessed 5
  EXPECT_NE(p.slot_of(5), flash::kNoSlot);
  EXPECT_NE(p.slot_of(3), flash::kNoSlot);
  EXPECT_NE(p.slot_of(4), flash::kNoSlot);
  // Answered by a token: the guessed neurons are hits like any other now.
  ASSERT_TRUE(p.PlanGuess(std::vector<uint32_t>{}, &plan).ok());
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{3, 7}, &plan).ok());
  EXPECT_EQ(plan.hit_slots.size(), 2u);
  EXPECT_EQ(plan.guessed_hit_slots.size(), 0u);
  EXPECT_EQ(p.tokens(), 3u);
  // Window 2: token 1's neurons (and the guess kept with them) expired at
  // token 3.
  EXPECT_EQ(p.slot_of(1), flash::kNoSlot);
  EXPECT_EQ(p.slot_of(5), flash::kNoSlot);
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{8}, &plan).ok());
  EXPECT_NE(p.slot_of(7), flash::kNoSlot);
}

// A guess takes the free slots and, of the older neurons', at most as many
// as the latest token let in (wrong guesses must not evict what the window
// keeps); its rank says which enter when not all fit; a rank that is not an
// order of the guess is refused with nothing changed.
TEST(Residency, GuessesFitTheLatestTokensChurnInRankOrder) {
  for (bool ranked : {false, true}) {
    flash::ResidencyPlanner p(32, 8, 4);
    flash::ResidencyPlan plan;
    ASSERT_TRUE(p.Plan(std::vector<uint32_t>{0, 1, 2, 3, 4, 5}, &plan).ok());
    ASSERT_TRUE(p.Plan(std::vector<uint32_t>{0, 1, 2, 3, 4, 6}, &plan).ok());  // 6 entered
    EXPECT_EQ(p.resident(), 7u);
    const std::vector<uint32_t> guess{7, 8, 9}, rank{9, 7, 8};
    EXPECT_EQ(p.PlanGuess(guess, &plan, std::vector<uint32_t>{9, 7}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(p.PlanGuess(guess, &plan, std::vector<uint32_t>{9, 7, 7}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(p.PlanGuess(guess, &plan, std::vector<uint32_t>{9, 7, 10}).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(p.resident(), 7u);
    EXPECT_EQ(p.tokens(), 2u);
    // One free slot, and one older neuron (5) for the latest token's one
    // entering neuron: two of the three guessed neurons fit.
    ASSERT_TRUE(
        p.PlanGuess(guess, &plan, ranked ? absl::MakeConstSpan(rank) : absl::Span<const uint32_t>())
            .ok());
    EXPECT_EQ(plan.entering,
              ranked ? (std::vector<uint32_t>{7, 9}) : (std::vector<uint32_t>{7, 8}));
    EXPECT_EQ(plan.evicted, 1u);
    EXPECT_EQ(p.slot_of(5), flash::kNoSlot);
    for (uint32_t j = 0; j <= 4; ++j) EXPECT_NE(p.slot_of(j), flash::kNoSlot) << j;
    EXPECT_NE(p.slot_of(6), flash::kNoSlot);
  }
}

// Pinned neurons, once loaded, never expire or leave for room; a mask that
// does not fit beside the pinned neurons outside it is refused with nothing
// changed; bad pins are refused.
TEST(Residency, PinnedNeuronsStay) {
  flash::ResidencyPlanner p(20, 5, 1);
  flash::ResidencyPlan plan;
  EXPECT_EQ(p.Pin(std::vector<uint32_t>{3, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.Pin(std::vector<uint32_t>{1, 20}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.Pin(std::vector<uint32_t>{0, 1, 2, 3, 4}).code(),
            absl::StatusCode::kInvalidArgument);  // no slot left
  ASSERT_TRUE(p.Pin(std::vector<uint32_t>{1, 2}).ok());
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{1, 2, 3}, &plan).ok());
  // Window 1: 3 expires at once; 1 and 2 stay though inactive.
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{4, 5, 6}, &plan).ok());
  EXPECT_EQ(plan.entering, (std::vector<uint32_t>{4, 5, 6}));
  EXPECT_EQ(p.slot_of(3), flash::kNoSlot);
  EXPECT_NE(p.slot_of(1), flash::kNoSlot);
  EXPECT_NE(p.slot_of(2), flash::kNoSlot);
  // Four neurons beside the two pinned: refused, nothing changed.
  const absl::Status s = p.Plan(std::vector<uint32_t>{7, 8, 9, 10}, &plan);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("pinned"));
  EXPECT_EQ(p.tokens(), 2u);
  EXPECT_EQ(p.resident(), 5u);
  // With a pinned neuron inside the mask it fits; the pinned stay.
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{1, 7, 8, 9}, &plan).ok());
  EXPECT_NE(p.slot_of(2), flash::kNoSlot);
  EXPECT_EQ(plan.hit_slots.size(), 1u);
  // Unpinned (new pins replace old ones): 2 may leave now.
  ASSERT_TRUE(p.Pin({}).ok());
  ASSERT_TRUE(p.Plan(std::vector<uint32_t>{10, 11, 12, 13, 14}, &plan).ok());
  EXPECT_EQ(p.slot_of(2), flash::kNoSlot);
}

TEST(Residency, RefusesWithoutChange) {
  flash::ResidencyPlanner p(10, 3, 2);
  flash::ResidencyPlan plan;
  ASSERT_TRUE(p.Plan({1, 2}, &plan).ok());
  EXPECT_THAT(std::string(p.Plan({1, 2, 3, 4}, &plan).message()), HasSubstr("3 slots"));
  EXPECT_FALSE(p.Plan({4, 2}, &plan).ok());
  EXPECT_FALSE(p.Plan({10}, &plan).ok());
  EXPECT_EQ(p.tokens(), 1u);
  EXPECT_EQ(p.resident(), 2u);
  p.Unload(2);
  EXPECT_EQ(p.slot_of(2), flash::kNoSlot);
  EXPECT_EQ(p.resident(), 1u);
}

// ---- the flash cache and step ----------------------------------------------

struct Model {
  DType dtype;
  size_t h, i, layers;
  bool gated;
  std::vector<std::vector<uint8_t>> gate, up, down_rows;  // neuron-major
};

Model MakeModel(DType dtype, size_t h, size_t i, size_t layers, bool gated, uint64_t seed) {
  Model m{dtype, h, i, layers, gated, {}, {}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0, 0.5f);
  auto fill = [&](std::vector<uint8_t>& v) {
    v.resize(h * i * DTypeSize(dtype));
    for (size_t k = 0; k < h * i; ++k) {
      const float x = normal(rng);
      if (dtype == DType::kFloat32) {
        std::memcpy(&v[4 * k], &x, 4);
      } else {
        const uint16_t b = dtype == DType::kBFloat16 ? FloatToBFloat16(x) : FloatToFloat16(x);
        std::memcpy(&v[2 * k], &b, 2);
      }
    }
  };
  m.gate.resize(layers), m.up.resize(layers), m.down_rows.resize(layers);
  for (size_t l = 0; l < layers; ++l) {
    if (gated) fill(m.gate[l]);
    fill(m.up[l]);
    fill(m.down_rows[l]);
  }
  return m;
}

// The same model without gate rows (a gate-first file: up and down only).
Model GateLess(const Model& gated) {
  Model m = gated;
  m.gated = false;
  m.gate.assign(m.layers, {});
  return m;
}

std::string WriteModel(const Model& m, const std::string& name, size_t alignment = 4096) {
  const std::string path = TempDir() + "/" + name;
  store::WriterOptions o;
  o.alignment = alignment;
  auto w = store::BundleWriter::Create(
      path, {m.dtype, m.h, m.i, m.layers, m.gated, 0, 0, std::nullopt}, o);
  EXPECT_TRUE(w.ok()) << w.status();
  for (size_t l = 0; l < m.layers; ++l) {
    EXPECT_TRUE((*w)->AppendLayer({m.gated ? m.gate[l].data() : nullptr, m.up[l].data(),
                                   m.down_rows[l].data(), true})
                    .ok());
  }
  EXPECT_TRUE((*w)->Finish().ok());
  return path;
}

// The in-DRAM forward over the same neurons.
std::vector<float> Reference(const Model& m, size_t l, const std::vector<uint32_t>& mask,
                             const std::vector<float>& x, size_t tokens, int threads) {
  const mlp::NeuronRows rows{m.dtype, m.h, m.i, m.gated ? m.gate[l].data() : nullptr, m.h,
                             m.up[l].data(), m.h, m.down_rows[l].data(), m.h};
  std::vector<float> y(tokens * m.h);
  mlp::ForwardOptions o;
  o.num_threads = threads;
  mlp::Workspace ws;
  EXPECT_TRUE(mlp::ForwardIndexed(rows, mask, {x.data(), tokens, m.h, DType::kFloat32},
                                  {y.data(), tokens, m.h, DType::kFloat32}, o, &ws)
                  .ok());
  return y;
}

double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    num += (double(a[k]) - b[k]) * (double(a[k]) - b[k]);
    den += double(b[k]) * b[k];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// The smallest budget giving `capacity` slots per layer with options `o`.
size_t BudgetFor(const std::string& path, size_t capacity, flash::FlashCacheOptions o = {}) {
  o.budget_bytes = 1;
  absl::Status s = flash::FlashModelCache::Open(path, o).status();
  size_t budget = 0;
  // "below the minimum N": parse N.
  const std::string msg(s.message());
  const size_t at = msg.find("minimum ");
  budget = std::stoull(msg.substr(at + 8));
  auto capacity_at = [&](size_t b) {
    o.budget_bytes = b;
    auto c = flash::FlashModelCache::Open(path, o);
    return c.ok() ? (*c)->capacity() : 0;
  };
  size_t step = 4096;
  while (capacity_at(budget + step) < capacity) step *= 2;
  size_t lo = budget, hi = budget + step;  // capacity_at(hi) >= capacity
  while (lo + 1 < hi) {
    const size_t mid = lo + (hi - lo) / 2;
    (capacity_at(mid) >= capacity ? hi : lo) = mid;
  }
  return hi;
}

struct FlashCase {
  DType dtype;
  bool gated;
  store::IoEngineKind engine;
  store::DirectIo direct;
};

class FlashSequences : public ::testing::TestWithParam<FlashCase> {};

// Every layer's output equals the in-DRAM forward over the same mask, over
// random sequences, windows 1-8 and budgets from just enough to everything;
// every resident slot is exact; the footprint stays within the budget.
TEST_P(FlashSequences, EqualsInDramForward) {
  const FlashCase c = GetParam();
  std::mt19937_64 rng(11);
  const Model m = MakeModel(c.dtype, 72, 96, 3, c.gated, 5);
  const std::string path = WriteModel(m, absl::StrFormat("flash_%s_%d.spmlb",
                                                         DTypeName(c.dtype), c.gated));
  store::ReaderOptions reader;
  reader.engine = c.engine;
  reader.direct_io = c.direct;
  reader.queue_depth = 4;
  const double tolerance = c.dtype == DType::kFloat32 ? 1e-5 : 2e-2;
  for (int trial = 0; trial < 6; ++trial) {
    const size_t k = 10 + rng() % 30;
    const size_t capacity = trial % 3 == 0 ? k : k + rng() % (m.i - k + 1);
    flash::FlashCacheOptions o;
    o.reader = reader;
    o.window = 1 + rng() % 8;
    o.chunk_neurons = 1 + rng() % 16;
    o.budget_bytes = BudgetFor(path, capacity, o);
    auto opened = flash::FlashModelCache::Open(path, o);
    ASSERT_TRUE(opened.ok()) << opened.status();
    flash::FlashModelCache& fc = **opened;
    ASSERT_GE(fc.capacity(), capacity);
    mlp::Workspace ws;
    mlp::ForwardOptions fo;
    fo.num_threads = 1 + trial % 2;
    std::vector<std::vector<uint32_t>> masks(m.layers, RandomMask(m.i, k, rng));
    for (int step = 0; step < 25; ++step) {
      for (size_t l = 0; l < m.layers; ++l) {
        const std::string where =
            absl::StrFormat("%s gated=%d %s trial %d (window %d, capacity %d, chunk %d) step %d "
                            "layer %d",
                            DTypeName(c.dtype), c.gated, store::IoEngineName(c.engine), trial,
                            o.window, fc.capacity(), o.chunk_neurons, step, l);
        masks[l] = NextMask(masks[l], m.i, std::max<size_t>(1, k - rng() % 4), 0.3, rng);
        const size_t tokens = 1 + rng() % 3;
        std::vector<float> x(tokens * m.h), y(tokens * m.h, -7.0f);
        for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
        if (step % 5 == 4 && l + 1 < m.layers) {
          // A look-ahead: prefetch the next layer's next mask now.
          masks[l + 1] = NextMask(masks[l + 1], m.i, masks[l + 1].size(), 0.3, rng);
          ASSERT_TRUE(fc.Prefetch(l + 1, masks[l + 1]).ok()) << where;
        }
        ASSERT_TRUE(step::FlashLayerStep(&fc, l, masks[l], {x.data(), tokens, m.h, DType::kFloat32},
                                         {y.data(), tokens, m.h, DType::kFloat32}, fo, &ws)
                        .ok())
            << where;
        const std::vector<float> want = Reference(m, l, masks[l], x, tokens, fo.num_threads);
        ASSERT_LE(RelativeError(y, want), tolerance) << where;
        const std::vector<uint32_t> resident = fc.resident_neurons(l);
        for (uint32_t j : masks[l]) {
          ASSERT_TRUE(std::binary_search(resident.begin(), resident.end(), j)) << where;
        }
        if (step % 6 == 0) {
          ASSERT_TRUE(fc.Verify(l).ok()) << where;
        }
      }
    }
    const flash::FlashFootprint f = fc.footprint();
    EXPECT_LE(f.total_bytes(), o.budget_bytes);
    EXPECT_EQ(fc.layer_stats(0).failed_loads, 0u);
  }
  ::unlink(path.c_str());
}

// Gate-first over the flash tier: the gate in DRAM, up and down from a
// gate-less file; the same neurons as gate-first in DRAM (GateFirst::Step on
// a gate-less WeightCache) and the same outputs, over random sequences.
TEST(Flash, GateFirstLoadsOnlyUpAndDown) {
  for (DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    std::mt19937_64 rng(21);
    const Model gated = MakeModel(dtype, 64, 120, 2, true, 9);
    const Model updown = GateLess(gated);
    const std::string path =
        WriteModel(updown, absl::StrFormat("gate_first_%s.spmlb", DTypeName(dtype)), 512);
    const std::string gated_path =
        WriteModel(gated, absl::StrFormat("gate_first_gated_%s.spmlb", DTypeName(dtype)), 512);
    const size_t k = 30;
    flash::FlashCacheOptions o;
    o.window = 2;
    o.chunk_neurons = 8;
    o.reader.queue_depth = 4;
    o.budget_bytes = BudgetFor(path, 3 * k, o);
    auto opened = flash::FlashModelCache::Open(path, o);
    ASSERT_TRUE(opened.ok()) << opened.status();
    flash::FlashModelCache& fc = **opened;
    EXPECT_EQ(fc.layout().bundle_bytes(), 2 * gated.h * DTypeSize(dtype));  // no gate row
    mlp::Workspace ws;
    mlp::ForwardOptions fo;
    step::Selection sel;
    sel.k = k;
    for (size_t l = 0; l < gated.layers; ++l) {
      step::GateFirst flash =
          *step::GateFirst::Create(dtype, gated.h, gated.i, gated.gate[l].data(), gated.h);
      step::GateFirst dram =
          *step::GateFirst::Create(dtype, gated.h, gated.i, gated.gate[l].data(), gated.h);
      cache::WeightCacheOptions co;
      co.hidden_size = gated.h;
      co.intermediate_size = gated.i;
      co.dtype = dtype;
      co.has_gate = false;
      co.down_layout = cache::DownLayout::kNeuronMajor;
      cache::WeightCache wc = *cache::WeightCache::Create(
          co, {nullptr, gated.up[l].data(), gated.down_rows[l].data()},
          diff::NeuronMask(gated.i));
      for (int step = 0; step < 12; ++step) {
        const size_t tokens = 1 + step % 2;  // the union of 2 tokens' top k fits 3k slots
        std::vector<float> x(tokens * gated.h), y(tokens * gated.h), want(tokens * gated.h);
        for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
        const mlp::ConstTokens in{x.data(), tokens, gated.h, DType::kFloat32};
        const std::string where = absl::StrFormat("%s layer %d step %d", DTypeName(dtype), l, step);
        ASSERT_TRUE(flash.FlashStep(&fc, l, sel, in, {y.data(), tokens, gated.h, DType::kFloat32},
                                    fo, &ws)
                        .ok())
            << where;
        ASSERT_TRUE(
            dram.Step(&wc, sel, in, {want.data(), tokens, gated.h, DType::kFloat32}, fo, &ws).ok());
        ASSERT_TRUE(flash.mask() == dram.mask()) << where;
        ASSERT_LE(RelativeError(y, want), dtype == DType::kFloat32 ? 1e-6 : 1e-5) << where;
      }
      ASSERT_TRUE(fc.Verify(l).ok());
    }
    // A gated file is refused, naming why; nothing changes.
    auto gated_cache = flash::FlashModelCache::Open(gated_path, o);
    ASSERT_TRUE(gated_cache.ok());
    step::GateFirst g =
        *step::GateFirst::Create(dtype, gated.h, gated.i, gated.gate[0].data(), gated.h);
    std::vector<float> x(gated.h, 0.5f), y(gated.h, 3.0f);
    const absl::Status s = g.FlashStep(gated_cache->get(), 0, sel, {x.data(), 1, gated.h},
                                       {y.data(), 1, gated.h}, fo, &ws);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(s.message()).find("gate-less"), std::string::npos) << s;
    EXPECT_EQ(y[0], 3.0f);
    EXPECT_EQ(g.FlashStep(&fc, 7, sel, {x.data(), 1, gated.h}, {y.data(), 1, gated.h}, fo, &ws)
                  .code(),
              absl::StatusCode::kInvalidArgument);
    ::unlink(path.c_str());
    ::unlink(gated_path.c_str());
  }
}

// Speculative gate-first: the speculated set is read ahead from an early
// input; the exact step then selects by the same rule (the same mask as a
// step without speculation), reads only what was not fetched, and gives
// the same output; reads failing during speculation leave every slot
// exact and are read again if selected; a failure of that read names the
// layer and neuron.
TEST(Flash, SpeculativeGateFirstEqualsTheExactStep) {
  std::mt19937_64 rng(31);
  const Model gated = MakeModel(DType::kFloat32, 64, 120, 2, true, 19);
  const Model updown = GateLess(gated);
  const std::string path = WriteModel(updown, "speculate.spmlb", 512);
  const size_t k = 24;
  // Bundle offsets whose next read fails (once), and whose reads always
  // fail while `always` is set. Decided per read as it completes, so the
  // outcome does not depend on when the speculative reads land.
  std::mutex fault_mu;
  std::set<uint64_t> fail_once, failing;
  bool always = false;
  const auto fault = [&](uint64_t offset, size_t, int64_t result) -> int64_t {
    std::lock_guard<std::mutex> lock(fault_mu);
    if (fail_once.erase(offset) != 0) return -EIO;
    return always && failing.count(offset) != 0 ? -EIO : result;
  };
  flash::FlashCacheOptions o;
  o.window = 4;
  o.chunk_neurons = 8;
  o.reader.max_request_bytes = 1;  // one bundle per read: faults hit one neuron
  o.budget_bytes = BudgetFor(path, 4 * k, o);
  auto spec_cache = flash::FlashModelCache::Open(path, o, test_util::FaultyEngines(fault));
  auto plain_cache = flash::FlashModelCache::Open(path, o);
  ASSERT_TRUE(spec_cache.ok() && plain_cache.ok());
  flash::FlashModelCache& sc = **spec_cache;
  flash::FlashModelCache& pc = **plain_cache;
  const store::BundleLayout& layout = sc.layout();
  mlp::Workspace ws;
  mlp::ForwardOptions fo;
  step::Selection sel;
  sel.k = k;
  for (size_t l = 0; l < gated.layers; ++l) {
    step::GateFirst spec =
        *step::GateFirst::Create(DType::kFloat32, gated.h, gated.i, gated.gate[l].data(), gated.h);
    step::GateFirst plain =
        *step::GateFirst::Create(DType::kFloat32, gated.h, gated.i, gated.gate[l].data(), gated.h);
    size_t fetched = 0, selected = 0, hits = 0, failed_speculative_loads = 0;
    for (int step = 0; step < 16; ++step) {
      // The early input: the real one plus noise (attention's change).
      std::vector<float> x(gated.h), early(gated.h), y(gated.h, -7.0f), want(gated.h);
      for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
      for (size_t c = 0; c < gated.h; ++c) {
        early[c] = x[c] + std::normal_distribution<float>(0, 0.3f)(rng);
      }
      const std::string where = absl::StrFormat("layer %d step %d", l, step);
      if (step % 4 == 3) {
        // Every fourth speculation loses a third of its reads: the set it
        // will fetch (the top 3k/2 of |act(gate early)|), every third.
        std::vector<float> act(gated.i);
        ASSERT_TRUE(
            spec.Activations({early.data(), 1, gated.h}, fo, &ws, absl::MakeSpan(act)).ok());
        std::vector<uint32_t> order(gated.i);
        for (uint32_t n = 0; n < gated.i; ++n) order[n] = n;
        std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
          return std::fabs(act[a]) > std::fabs(act[b]);
        });
        std::lock_guard<std::mutex> lock(fault_mu);
        for (size_t q = 0; q < 3 * k / 2; q += 3) {
          fail_once.insert(layout.bundle_offset(l, order[q]));
        }
      }
      const uint64_t failed_before = sc.layer_stats(l).failed_loads;
      ASSERT_TRUE(spec.Speculate(&sc, l, {early.data(), 1, gated.h}, 3 * k / 2, fo, &ws).ok())
          << where;
      const std::vector<uint32_t> speculated(spec.speculation().begin(), spec.speculation().end());
      EXPECT_EQ(speculated.size(), 3 * k / 2) << where;
      absl::Status s =
          spec.FlashStep(&sc, l, sel, {x.data(), 1, gated.h}, {y.data(), 1, gated.h}, fo, &ws);
      ASSERT_TRUE(s.ok()) << where << ": " << s;
      {
        std::lock_guard<std::mutex> lock(fault_mu);
        fail_once.clear();  // offsets never read stay armed otherwise
      }
      if (step % 4 == 3) {
        failed_speculative_loads += sc.layer_stats(l).failed_loads - failed_before;
      }
      ASSERT_TRUE(
          plain.FlashStep(&pc, l, sel, {x.data(), 1, gated.h}, {want.data(), 1, gated.h}, fo, &ws)
              .ok());
      ASSERT_TRUE(spec.mask() == plain.mask()) << where;
      ASSERT_LE(RelativeError(y, want), 1e-6) << where;
      ASSERT_TRUE(sc.Verify(l).ok()) << where;
      const std::vector<uint32_t> chosen = spec.mask().ToIndices();
      selected += chosen.size();
      fetched += speculated.size();
      for (uint32_t n : chosen) hits += std::binary_search(speculated.begin(), speculated.end(), n);
    }
    EXPECT_GT(failed_speculative_loads, 0u) << "no speculative read failed: the test tests nothing";
    // The early input's set holds most of the exact one.
    EXPECT_GT(static_cast<double>(hits) / selected, 0.6) << "layer " << l;
    EXPECT_GT(fetched, 0u);
  }
  // A read that fails in the speculation and again in the exact step fails
  // the step, naming the layer and neuron; y untouched; slots exact.
  step::GateFirst g =
      *step::GateFirst::Create(DType::kFloat32, gated.h, gated.i, gated.gate[0].data(), gated.h);
  std::vector<float> x(gated.h, 0.0f), y(gated.h, -7.0f);
  x[3] = 2.0f;
  x[17] = -1.5f;
  ASSERT_TRUE(g.Speculate(&sc, 0, {x.data(), 1, gated.h}, k, fo, &ws).ok());
  // Every neuron the exact step reads fails.
  {
    std::lock_guard<std::mutex> lock(fault_mu);
    for (size_t n = 0; n < gated.i; ++n) failing.insert(layout.bundle_offset(0, n));
    always = true;
  }
  std::vector<float> x2(gated.h, 0.0f);
  x2[40] = 3.0f;  // another input: other neurons than the speculated ones
  const absl::Status s =
      g.FlashStep(&sc, 0, sel, {x2.data(), 1, gated.h}, {y.data(), 1, gated.h}, fo, &ws);
  {
    std::lock_guard<std::mutex> lock(fault_mu);
    always = false;
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("layer 0 neuron")) << s;
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v == -7.0f; }));
  EXPECT_TRUE(sc.Verify(0).ok());
  // Bad input: the gate's checks, before any read; the cache's own calls
  // name the layer.
  EXPECT_EQ(g.Speculate(&sc, 9, {x.data(), 1, gated.h}, k, fo, &ws).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(sc.PrefetchGuess(9, std::vector<uint32_t>{1}).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(sc.WaitReads(9).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(sc.PrefetchGuess(0, std::vector<uint32_t>{3, 2}).code(),
            absl::StatusCode::kInvalidArgument);  // not ascending: nothing planned
  EXPECT_TRUE(sc.Verify(0).ok());
  ::unlink(path.c_str());
}

// The same across element types, windows and budgets (a tight one: the
// guess, the window and the mask compete for the slots), with every
// second speculation losing some reads: the exact step selects the same
// mask as a step without speculation, its output equals that step's, and
// every resident slot equals the file.
TEST(Flash, SpeculativeStepEqualsTheExactOneAcrossTypesWindowsBudgets) {
  uint64_t faults = 0;  // guessed reads that failed (how many: timing's)
  for (DType dtype : {DType::kBFloat16, DType::kFloat16, DType::kFloat32}) {
    const Model gated = MakeModel(dtype, 64, 120, 2, true, 29);
    const Model updown = GateLess(gated);
    const std::string path = WriteModel(updown, "speculate_all.spmlb", 512);
    const size_t k = 20;
    std::mutex fault_mu;
    std::set<uint64_t> fail_once;
    const auto fault = [&](uint64_t offset, size_t, int64_t result) -> int64_t {
      std::lock_guard<std::mutex> lock(fault_mu);
      return fail_once.erase(offset) != 0 ? -EIO : result;
    };
    for (size_t window : {size_t{1}, size_t{4}}) {
      for (size_t slots : {2 * k, 4 * k}) {
        flash::FlashCacheOptions o;
        o.window = window;
        o.chunk_neurons = 8;
        o.reader.max_request_bytes = 1;
        o.budget_bytes = BudgetFor(path, slots, o);
        auto spec_cache = flash::FlashModelCache::Open(path, o, test_util::FaultyEngines(fault));
        auto plain_cache = flash::FlashModelCache::Open(path, o);
        ASSERT_TRUE(spec_cache.ok() && plain_cache.ok());
        flash::FlashModelCache& sc = **spec_cache;
        flash::FlashModelCache& pc = **plain_cache;
        std::mt19937_64 rng(window * 100 + slots);
        mlp::Workspace ws;
        mlp::ForwardOptions fo;
        step::Selection sel;
        sel.k = k;
        for (size_t l = 0; l < gated.layers; ++l) {
          step::GateFirst spec =
              *step::GateFirst::Create(dtype, gated.h, gated.i, gated.gate[l].data(), gated.h);
          step::GateFirst plain =
              *step::GateFirst::Create(dtype, gated.h, gated.i, gated.gate[l].data(), gated.h);
          for (int step = 0; step < 10; ++step) {
            const std::string where = absl::StrFormat("%s window %d slots %d layer %d step %d",
                                                      DTypeName(dtype), window, slots, l, step);
            std::vector<float> x(gated.h), early(gated.h);
            for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
            for (size_t c = 0; c < gated.h; ++c) {
              early[c] = x[c] + std::normal_distribution<float>(0, 0.3f)(rng);
            }
            const std::vector<uint32_t> before = sc.resident_neurons(l);
            ASSERT_TRUE(spec.Speculate(&sc, l, {early.data(), 1, gated.h}, 3 * k / 2, fo, &ws).ok())
                << where;
            if (step % 2 == 1) {
              // Every other neuron the guess loads fails its read, if it
              // has not landed yet (only the guess reads them: the step's
              // own reads are of neurons not resident).
              std::lock_guard<std::mutex> lock(fault_mu);
              size_t q = 0;
              for (uint32_t j : sc.resident_neurons(l)) {
                if (!std::binary_search(before.begin(), before.end(), j) && q++ % 2 == 0) {
                  fail_once.insert(sc.layout().bundle_offset(l, j));
                }
              }
            }
            std::vector<float> y(gated.h), want(gated.h);
            const absl::Status s = spec.FlashStep(&sc, l, sel, {x.data(), 1, gated.h},
                                                  {y.data(), 1, gated.h}, fo, &ws);
            {
              std::lock_guard<std::mutex> lock(fault_mu);
              fail_once.clear();
            }
            ASSERT_TRUE(s.ok()) << where << ": " << s;
            ASSERT_TRUE(plain
                            .FlashStep(&pc, l, sel, {x.data(), 1, gated.h},
                                       {want.data(), 1, gated.h}, fo, &ws)
                            .ok());
            ASSERT_TRUE(spec.mask() == plain.mask()) << where;
            ASSERT_LE(RelativeError(y, want), 1e-5) << where;
            ASSERT_TRUE(sc.Verify(l).ok()) << where;
          }
        }
        faults += sc.io_stats().errors;
      }
    }
    ::unlink(path.c_str());
  }
  std::printf("speculative reads that failed: %llu\n", static_cast<unsigned long long>(faults));
}

// The exact step plans over a guess whose reads are still in flight: it
// returns from BeginStep while a guessed read is held back, waits for the
// guessed neurons it selected chunk by chunk, and its plan (so its output,
// to the bit) is the same as when the guess had landed first. A plan that
// takes the slot of a guessed neuron still being read waits for the guess.
TEST(Flash, StepPlansOverAGuessInFlight) {
  const Model m = MakeModel(DType::kFloat32, 64, 96, 1, true, 41);
  const std::string path = WriteModel(m, "overguess.spmlb", 512);
  const store::BundleLayout layout =
      *store::BundleLayout::Create({m.dtype, m.h, m.i, m.layers, m.gated, 0, 0, std::nullopt}, 512);
  // The completion of `held_offset` waits until released (10 s at most).
  std::mutex mu;
  std::condition_variable cv;
  uint64_t held_offset = ~uint64_t{0};
  bool held = false, released = false, timed_out = false;
  const auto fault = [&](uint64_t offset, size_t, int64_t result) -> int64_t {
    std::unique_lock<std::mutex> lock(mu);
    if (offset == held_offset) {
      held = true;
      cv.notify_all();
      // A step that waited for the whole guess would wait here till then.
      if (!cv.wait_for(lock, std::chrono::seconds(10), [&] { return released; })) {
        timed_out = true;
      }
    }
    return result;
  };
  flash::FlashCacheOptions o;
  o.window = 2;
  o.chunk_neurons = 4;
  o.reader.max_request_bytes = 1;  // one bundle per read
  o.reader.queue_depth = 8;
  o.budget_bytes = BudgetFor(path, 48, o);
  mlp::Workspace ws;
  mlp::ForwardOptions fo;
  std::vector<std::vector<float>> outputs[2];
  for (int waited = 0; waited < 2; ++waited) {
    auto opened = flash::FlashModelCache::Open(path, o, test_util::FaultyEngines(fault));
    ASSERT_TRUE(opened.ok()) << opened.status();
    flash::FlashModelCache& fc = **opened;
    std::mt19937_64 rng(5);
    std::vector<uint32_t> mask = RandomMask(m.i, 24, rng);
    for (int token = 0; token < 12; ++token) {
      const std::vector<uint32_t> next = NextMask(mask, m.i, 24, 0.5, rng);
      // The guess: most of the next mask and some others.
      std::vector<uint32_t> guess;
      for (uint32_t j = 0; j < m.i; ++j) {
        const bool in = std::binary_search(next.begin(), next.end(), j);
        if ((in && rng() % 10 < 8) || (!in && rng() % 10 < 1)) guess.push_back(j);
      }
      mask = next;
      const std::string where = absl::StrFormat("waited %d token %d", waited, token);
      // Hold back one guessed neuron's read that the step selects (a miss
      // before the guess).
      const std::vector<uint32_t> resident = fc.resident_neurons(0);
      uint32_t hold = flash::kNoSlot;
      for (uint32_t j : guess) {
        if (std::binary_search(mask.begin(), mask.end(), j) &&
            !std::binary_search(resident.begin(), resident.end(), j)) {
          hold = j;
          break;
        }
      }
      {
        std::lock_guard<std::mutex> lock(mu);
        held = released = false;
        held_offset =
            waited || hold == flash::kNoSlot ? ~uint64_t{0} : layout.bundle_offset(0, hold);
      }
      ASSERT_TRUE(fc.PrefetchGuess(0, guess).ok()) << where;
      if (waited) {
        ASSERT_TRUE(fc.WaitReads(0).ok());
      }
      if (!waited && hold != flash::kNoSlot) {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return held; });
      }
      flash::FlashStepPlan plan;
      ASSERT_TRUE(fc.BeginStep(0, mask, &plan).ok()) << where;
      {
        std::lock_guard<std::mutex> lock(mu);
        EXPECT_FALSE(timed_out) << where;  // planned while the read was held
        EXPECT_EQ(held, !waited && hold != flash::kNoSlot) << where;
        released = true;
        held_offset = ~uint64_t{0};
        cv.notify_all();
      }
      // Every selected neuron once: ready, or waited for (ascending per chunk).
      std::vector<uint32_t> planned;
      for (uint32_t s : plan.hit_slots) planned.push_back(fc.slot_neurons(0)[s]);
      for (size_t c = 0; c < plan.chunks(); ++c) {
        const size_t b = c * plan.chunk_neurons,
                     e = std::min(plan.entering_slots.size(), b + plan.chunk_neurons);
        EXPECT_TRUE(
            std::is_sorted(plan.entering_slots.begin() + b, plan.entering_slots.begin() + e))
            << where;
        for (size_t k = b; k < e; ++k)
          planned.push_back(fc.slot_neurons(0)[plan.entering_slots[k]]);
        ASSERT_TRUE(fc.WaitChunk(0, c).ok()) << where;
      }
      std::sort(planned.begin(), planned.end());
      EXPECT_EQ(planned, mask) << where;
      ASSERT_TRUE(fc.FinishStep(0).ok()) << where;
      ASSERT_TRUE(fc.Verify(0).ok()) << where;
      // The step's output over this plan (a second step of the same mask
      // finds every neuron resident: the output of the plan's slots).
      std::vector<float> x(m.h), y(m.h);
      for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
      ASSERT_TRUE(fc.PrefetchGuess(0, guess).ok());
      ASSERT_TRUE(step::FlashLayerStep(&fc, 0, mask, {x.data(), 1, m.h, DType::kFloat32},
                                       {y.data(), 1, m.h, DType::kFloat32}, fo, &ws)
                      .ok())
          << where;
      ASSERT_LE(RelativeError(y, Reference(m, 0, mask, x, 1, 1)), 1e-5) << where;
      outputs[waited].push_back(y);
    }
  }
  for (size_t t = 0; t < outputs[0].size(); ++t) {
    ASSERT_EQ(std::memcmp(outputs[0][t].data(), outputs[1][t].data(), m.h * 4), 0)
        << "token " << t << ": the plan depended on when the guess landed";
  }
  // Write after write: 4 slots hold token 1's {0, 1} and the guessed {2, 3}
  // (2's read held back); token 2 selects {0, 1, 5}: the slot of 2 (the
  // lower of the guessed, unselected neurons) is 5's, once 2's read is done.
  o.budget_bytes = BudgetFor(path, 4, o);
  auto opened = flash::FlashModelCache::Open(path, o, test_util::FaultyEngines(fault));
  ASSERT_TRUE(opened.ok());
  flash::FlashModelCache& fc = **opened;
  ASSERT_EQ(fc.capacity(), 4u);
  std::vector<float> x(m.h), y(m.h);
  for (size_t c = 0; c < m.h; ++c) x[c] = std::sin(0.3 * c);
  ASSERT_TRUE(step::FlashLayerStep(&fc, 0, {0, 1}, {x.data(), 1, m.h, DType::kFloat32},
                                   {y.data(), 1, m.h, DType::kFloat32}, fo, &ws)
                  .ok());
  {
    std::lock_guard<std::mutex> lock(mu);
    held = released = false;
    held_offset = layout.bundle_offset(0, 2);
  }
  ASSERT_TRUE(fc.PrefetchGuess(0, std::vector<uint32_t>{2, 3}).ok());
  std::thread release([&] {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return held; });
    released = true;  // (BeginStep may be waiting for it already)
    cv.notify_all();
  });
  const std::vector<uint32_t> mask{0, 1, 5};
  ASSERT_TRUE(step::FlashLayerStep(&fc, 0, mask, {x.data(), 1, m.h, DType::kFloat32},
                                   {y.data(), 1, m.h, DType::kFloat32}, fo, &ws)
                  .ok());
  release.join();
  EXPECT_LE(RelativeError(y, Reference(m, 0, mask, x, 1, 1)), 1e-5);
  EXPECT_EQ(fc.resident_neurons(0), (std::vector<uint32_t>{0, 1, 3, 5}));
  EXPECT_TRUE(fc.Verify(0).ok());
  ::unlink(path.c_str());
}

// Pinned neurons stay resident through masks without them (the window
// would let them go); steps stay exact; bad pins are refused by name.
TEST(Flash, PinnedNeuronsStayResident) {
  const Model m = MakeModel(DType::kFloat32, 64, 96, 2, true, 43);
  const std::string path = WriteModel(m, "pinned.spmlb", 512);
  flash::FlashCacheOptions o;
  o.window = 1;
  o.budget_bytes = BudgetFor(path, 40, o);
  auto opened = flash::FlashModelCache::Open(path, o);
  ASSERT_TRUE(opened.ok());
  flash::FlashModelCache& fc = **opened;
  const std::vector<uint32_t> pins{0, 1, 2, 3};
  ASSERT_TRUE(fc.Pin(1, pins).ok());
  mlp::Workspace ws;
  mlp::ForwardOptions fo;
  std::mt19937_64 rng(8);
  for (int token = 0; token < 10; ++token) {
    std::vector<uint32_t> mask = token == 0 ? pins : std::vector<uint32_t>{};
    for (uint32_t j = 4 + 9 * (token % 9); j < 4 + 9 * (token % 9) + 20 && j < m.i; ++j) {
      mask.push_back(j);
    }
    std::vector<float> x(m.h), y(m.h);
    for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
    ASSERT_TRUE(step::FlashLayerStep(&fc, 1, mask, {x.data(), 1, m.h, DType::kFloat32},
                                     {y.data(), 1, m.h, DType::kFloat32}, fo, &ws)
                    .ok());
    ASSERT_LE(RelativeError(y, Reference(m, 1, mask, x, 1, 1)), 1e-5) << token;
    const std::vector<uint32_t> resident = fc.resident_neurons(1);
    for (uint32_t j : pins) {
      EXPECT_TRUE(std::binary_search(resident.begin(), resident.end(), j)) << token << " " << j;
    }
  }
  EXPECT_TRUE(fc.Verify(1).ok());
  const absl::Status bad = fc.Pin(1, std::vector<uint32_t>{5, 2});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("layer 1"));
  EXPECT_EQ(fc.Pin(2, pins).code(), absl::StatusCode::kOutOfRange);
  flash::FlashStepPlan plan;
  ASSERT_TRUE(fc.BeginStep(0, pins, &plan).ok());
  EXPECT_EQ(fc.Pin(0, pins).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(fc.FinishStep(0).ok());
  ::unlink(path.c_str());
}

// One continuous reader queue: every later layer's reads join the batch in
// flight (prefetched while a layer computes), so a token's layers take
// fewer reader batches than jobs; whatever the order reads complete in,
// every step equals the reference and every slot the file.
TEST(Flash, LaterLayersJoinTheBatchInFlight) {
  const Model m = MakeModel(DType::kFloat32, 64, 96, 4, true, 23);
  const std::string path = WriteModel(m, "continuous.spmlb", 512);
  for (size_t lanes : {size_t{1}, size_t{2}}) {
    flash::FlashCacheOptions o;
    o.window = 2;
    o.chunk_neurons = 4;
    o.io_lanes = lanes;
    o.reader.queue_depth = 4;
    o.budget_bytes = BudgetFor(path, 60, o);
    auto opened = flash::FlashModelCache::Open(path, o);
    ASSERT_TRUE(opened.ok()) << opened.status();
    flash::FlashModelCache& fc = **opened;
    std::mt19937_64 rng(7 + lanes);
    mlp::Workspace ws;
    mlp::ForwardOptions fo;
    size_t jobs = 0;
    for (int token = 0; token < 8; ++token) {
      std::vector<std::vector<uint32_t>> masks(m.layers);
      for (auto& mask : masks) {
        for (uint32_t j = 0; j < m.i; ++j) {
          if (rng() % 100 < 35) mask.push_back(j);
        }
        mask.resize(std::min<size_t>(mask.size(), 40));
      }
      // Every layer's reads queued at once, then the steps in order.
      for (size_t l = 0; l < m.layers; ++l) {
        const uint64_t loads = fc.layer_stats(l).loads;
        ASSERT_TRUE(fc.Prefetch(l, masks[l]).ok());
        jobs += fc.layer_stats(l).loads > loads;
      }
      for (size_t l = 0; l < m.layers; ++l) {
        std::vector<float> x(m.h), y(m.h);
        for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
        ASSERT_TRUE(step::FlashLayerStep(&fc, l, masks[l], {x.data(), 1, m.h, DType::kFloat32},
                                         {y.data(), 1, m.h, DType::kFloat32}, fo, &ws)
                        .ok());
        ASSERT_LE(RelativeError(y, Reference(m, l, masks[l], x, 1, 1)), 1e-5)
            << "lanes " << lanes << " token " << token << " layer " << l;
      }
    }
    for (size_t l = 0; l < m.layers; ++l) ASSERT_TRUE(fc.Verify(l).ok());
    EXPECT_LT(fc.io_stats().batches, jobs) << "lanes " << lanes << ": no job joined a batch";
  }
  ::unlink(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, FlashSequences,
    ::testing::Values(
        FlashCase{DType::kFloat32, true, store::IoEngineKind::kIoUring, store::DirectIo::kAuto},
        FlashCase{DType::kBFloat16, true, store::IoEngineKind::kIoUring, store::DirectIo::kAuto},
        FlashCase{DType::kFloat16, false, store::IoEngineKind::kPread, store::DirectIo::kAuto},
        FlashCase{DType::kBFloat16, true, store::IoEngineKind::kPread, store::DirectIo::kNever}),
    [](const ::testing::TestParamInfo<FlashCase>& info) {
      return absl::StrFormat("%s_%s_%s_%s", DTypeName(info.param.dtype),
                             info.param.gated ? "gated" : "gateless",
                             store::IoEngineName(info.param.engine),
                             info.param.direct == store::DirectIo::kNever ? "buffered" : "direct");
    });

// Same masks, same threads: the same bits, whatever the engine and the
// number of I/O lanes (and so the order reads complete in).
TEST(Flash, DeterministicAcrossEnginesAndCompletionOrder) {
  const Model m = MakeModel(DType::kBFloat16, 64, 128, 2, true, 9);
  const std::string path = WriteModel(m, "determinism.spmlb");
  std::vector<std::vector<float>> outputs[2];
  for (int e = 0; e < 2; ++e) {
    std::mt19937_64 rng(3);
    flash::FlashCacheOptions o;
    o.reader.engine = e == 0 ? store::IoEngineKind::kIoUring : store::IoEngineKind::kPread;
    o.reader.io_threads = 3;
    o.io_lanes = e == 0 ? 2 : 1;  // one layer's reads overlapping the next's, or not
    o.reader.max_request_bytes = 1;  // one bundle per request: many completions
    o.window = 3;
    o.budget_bytes = BudgetFor(path, 60, o);
    auto fc = flash::FlashModelCache::Open(path, o);
    ASSERT_TRUE(fc.ok());
    mlp::Workspace ws;
    mlp::ForwardOptions fo;
    fo.num_threads = 2;
    std::vector<uint32_t> mask = RandomMask(m.i, 50, rng);
    for (int step = 0; step < 20; ++step) {
      mask = NextMask(mask, m.i, 50, 0.4, rng);
      std::vector<float> x(m.h), y(m.h);
      for (float& v : x) v = std::normal_distribution<float>(0, 1)(rng);
      ASSERT_TRUE(step::FlashLayerStep(fc->get(), step % 2, mask,
                                       {x.data(), 1, m.h, DType::kFloat32},
                                       {y.data(), 1, m.h, DType::kFloat32}, fo, &ws)
                      .ok());
      outputs[e].push_back(y);
    }
  }
  for (size_t s = 0; s < outputs[0].size(); ++s) {
    ASSERT_EQ(std::memcmp(outputs[0][s].data(), outputs[1][s].data(), m.h * 4), 0) << "step " << s;
  }
  ::unlink(path.c_str());
}

void FlipByte(const std::string& path, uint64_t offset) {
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  uint8_t b;
  ASSERT_EQ(::pread(fd, &b, 1, offset), 1);
  b ^= 0xFF;
  ASSERT_EQ(::pwrite(fd, &b, 1, offset), 1);
  ::fsync(fd);
  ::close(fd);
}

// A failed read fails the step (named), leaves y and every slot exact, and
// the next step succeeds; so do a corrupted and a truncated file, repaired.
TEST(Flash, FaultsLoseNothing) {
  const Model m = MakeModel(DType::kFloat32, 64, 64, 2, true, 13);
  const std::string path = WriteModel(m, "faults.spmlb");
  const store::BundleLayout layout =
      store::BundleLayout::Create({DType::kFloat32, 64, 64, 2, true, 0, 0, std::nullopt}).value();
  bool inject = false;
  const uint64_t bad = layout.bundle_offset(1, 7);
  flash::FlashCacheOptions o;
  o.reader.max_request_bytes = 1;
  const auto fault = [&](uint64_t offset, size_t, int64_t result) -> int64_t {
    return inject && offset == bad ? -EIO : result;
  };
  o.window = 2;
  o.budget_bytes = BudgetFor(path, 64, o);
  auto opened = flash::FlashModelCache::Open(path, o, test_util::FaultyEngines(fault));
  ASSERT_TRUE(opened.ok());
  flash::FlashModelCache& fc = **opened;
  mlp::Workspace ws;
  mlp::ForwardOptions fo;
  std::vector<float> x(m.h, 0.25f), y(m.h, -7.0f);
  auto step = [&](size_t l, const std::vector<uint32_t>& mask) {
    std::fill(y.begin(), y.end(), -7.0f);
    return step::FlashLayerStep(&fc, l, mask, {x.data(), 1, m.h, DType::kFloat32},
                                {y.data(), 1, m.h, DType::kFloat32}, fo, &ws);
  };
  const std::vector<uint32_t> mask = {1, 5, 7, 8, 30};
  inject = true;
  absl::Status s = step(1, mask);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("layer 1 neuron 7"));
  EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrFormat("offset %d", bad)));
  EXPECT_TRUE(std::all_of(y.begin(), y.end(), [](float v) { return v == -7.0f; }))
      << "y written by a failed step";
  const std::vector<uint32_t> resident = fc.resident_neurons(1);
  EXPECT_EQ(resident, (std::vector<uint32_t>{1, 5, 8, 30})) << "a failed load left resident";
  EXPECT_TRUE(fc.Verify(1).ok());
  EXPECT_EQ(fc.layer_stats(1).failed_loads, 1u);
  inject = false;
  ASSERT_TRUE(step(1, mask).ok());
  EXPECT_LE(RelativeError(y, Reference(m, 1, mask, x, 1, 1)), 1e-5);

  // A bundle corrupted on disk during the run: its checksum fails; repaired,
  // the next step loads it.
  const std::vector<uint32_t> mask2 = {2, 40, 41};
  FlipByte(path, layout.bundle_offset(0, 40) + 9);
  s = step(0, mask2);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("layer 0 neuron 40"));
  EXPECT_TRUE(fc.Verify(0).ok());
  FlipByte(path, layout.bundle_offset(0, 40) + 9);
  ASSERT_TRUE(step(0, mask2).ok());
  EXPECT_LE(RelativeError(y, Reference(m, 0, mask2, x, 1, 1)), 1e-5);

  // Truncated during the run, then restored (the same file: the cache keeps
  // its descriptor).
  std::vector<uint8_t> original(layout.file_bytes());
  {
    const int fd = ::open(path.c_str(), O_RDONLY);
    ASSERT_EQ(::pread(fd, original.data(), original.size(), 0),
              static_cast<ssize_t>(original.size()));
    ::close(fd);
  }
  ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(layout.layer_offset(1) + 4096)), 0);
  const std::vector<uint32_t> mask3 = {50, 60};
  s = step(1, mask3);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("short read"));
  {
    const int fd = ::open(path.c_str(), O_WRONLY);
    ASSERT_EQ(::pwrite(fd, original.data(), original.size(), 0),
              static_cast<ssize_t>(original.size()));
    ::fsync(fd);
    ::close(fd);
  }
  ASSERT_TRUE(step(1, mask3).ok());
  EXPECT_LE(RelativeError(y, Reference(m, 1, mask3, x, 1, 1)), 1e-5);
  ::unlink(path.c_str());
}

TEST(Flash, BudgetAndMaskErrors) {
  const Model m = MakeModel(DType::kBFloat16, 32, 40, 2, true, 17);
  const std::string path = WriteModel(m, "budget.spmlb");
  flash::FlashCacheOptions o;
  o.budget_bytes = 1000;
  absl::Status s = flash::FlashModelCache::Open(path, o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("budget_bytes 1000 is below the minimum"));
  o.window = 0;
  o.budget_bytes = size_t{1} << 30;
  EXPECT_THAT(std::string(flash::FlashModelCache::Open(path, o).status().message()),
              HasSubstr("window"));
  o.window = 1;
  o.io_lanes = 9;
  EXPECT_THAT(std::string(flash::FlashModelCache::Open(path, o).status().message()),
              HasSubstr("io_lanes must be in [1, 8], got 9"));
  o.io_lanes = 2;
  o.budget_bytes = BudgetFor(path, 5, o);
  auto fc = flash::FlashModelCache::Open(path, o);
  ASSERT_TRUE(fc.ok());
  const size_t cap = (*fc)->capacity();
  std::vector<uint32_t> big;
  for (uint32_t j = 0; j <= cap; ++j) big.push_back(j);
  std::vector<float> x(m.h, 1.0f), y(m.h);
  mlp::Workspace ws;
  s = step::FlashLayerStep(fc->get(), 0, big, {x.data(), 1, m.h, DType::kFloat32},
                           {y.data(), 1, m.h, DType::kFloat32}, {}, &ws);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()),
              HasSubstr(absl::StrFormat("%d neurons but the budget gives this layer %d slots",
                                        cap + 1, cap)));
  EXPECT_EQ((*fc)->layer_stats(0).steps, 0u);
  EXPECT_EQ(step::FlashLayerStep(fc->get(), 2, {1}, {x.data(), 1, m.h, DType::kFloat32},
                                 {y.data(), 1, m.h, DType::kFloat32}, {}, &ws)
                .code(),
            absl::StatusCode::kOutOfRange);
  big.resize(cap);
  ASSERT_TRUE(step::FlashLayerStep(fc->get(), 0, big, {x.data(), 1, m.h, DType::kFloat32},
                                   {y.data(), 1, m.h, DType::kFloat32}, {}, &ws)
                  .ok());
  ::unlink(path.c_str());
}

}  // namespace
}  // namespace sparse_mlp
