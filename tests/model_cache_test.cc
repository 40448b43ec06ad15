// ModelCache (cache/model_cache.h) and WeightCache::UpdateMany: every layer
// exact after random per-layer sequences (against the plain reference of
// tests/cache_reference), UpdateMany equal to the same updates one by one,
// one pool, the footprint, and errors that leave every layer unchanged.
#include "cache/model_cache.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "memory/arena.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache_reference.h"

namespace sparse_mlp::cache {

namespace {

using ::testing::HasSubstr;
using Weights = testing::ReferenceWeights;

diff::NeuronMask RandomMask(std::mt19937_64& rng, size_t n, double fraction) {
  diff::NeuronMask m(n);
  std::bernoulli_distribution on(fraction);
  for (size_t i = 0; i < n; ++i) m.Set(i, on(rng));
  return m;
}

// The model's layers' weights, as a caller holds them.
struct ModelWeights {
  std::vector<Weights> layers;
  std::vector<MlpWeights> views;
};

ModelWeights RandomModel(std::mt19937_64& rng, size_t num_layers, size_t h, size_t i,
                         size_t elem, bool has_gate, DownLayout down_layout) {
  ModelWeights m;
  for (size_t l = 0; l < num_layers; ++l) {
    m.layers.push_back(testing::RandomReferenceWeights(rng, h, i, elem));
  }
  for (const Weights& w : m.layers) m.views.push_back(w.View(has_gate, down_layout));
  return m;
}

// A layer configuration (tests/cache_reference.h), sources borrowed as the
// model's default, and the model's options from it.
struct ModelConfig : testing::CacheConfig {
  ModelConfig() { ownership = SourceOwnership::kBorrow; }
  ModelCacheOptions Options(size_t num_layers, size_t h, size_t i) const {
    ModelCacheOptions o;
    o.num_layers = num_layers;
    o.layer = CacheConfig::Options(h, i);
    o.expected_active_fraction = 0.3;
    return o;
  }
};

std::vector<ModelConfig> Configs() {
  std::vector<ModelConfig> configs;
  for (PackedLayout layout :
       {PackedLayout::kSplit, PackedLayout::kInterleavedGateUp, PackedLayout::kFusedRows}) {
    for (SourceOwnership ownership : {SourceOwnership::kBorrow, SourceOwnership::kCopy}) {
      for (int threads : {1, 3}) {
        ModelConfig c;
        c.layout = layout;
        c.ownership = ownership;
        c.threads = threads;
        configs.push_back(c);
      }
    }
  }
  ModelConfig c;
  c.dtype = DType::kBFloat16;
  c.has_gate = false;
  c.layout = PackedLayout::kFusedRows;
  c.down_layout = DownLayout::kNeuronMajor;
  c.threads = 2;
  configs.push_back(c);
  c = ModelConfig();
  c.tolerance = 6;
  c.threads = 2;
  configs.push_back(c);
  return configs;
}

// What each layer must hold: the applied mask, given the tolerance rule
// (an update changing fewer than `tolerance` neurons is skipped).
struct Expected {
  std::vector<diff::NeuronMask> applied;
  size_t tolerance = 0;
  void Apply(size_t l, const diff::NeuronMask& mask) {
    size_t changed = 0;
    for (size_t i = 0; i < mask.size(); ++i) changed += mask.Test(i) != applied[l].Test(i);
    if (changed == 0 || changed < tolerance) return;
    applied[l] = mask;
  }
};

std::string CompareModel(const ModelCache& model, const ModelWeights& w,
                         const Expected& expected) {
  for (size_t l = 0; l < model.num_layers(); ++l) {
    const std::string d =
        testing::CompareWithReference(**model.layer(l), w.layers[l], expected.applied[l]);
    if (!d.empty()) return absl::StrFormat("layer %u: %s", l, d);
  }
  return "";
}

// Random per-layer sequences through Update, UpdateMany of random subsets
// (in random order) and the layer's own update forms; masks from 5% to 70%
// active, so layers outgrow the expected 30% and the pool grows. Fixed
// seed; the failing step is printed.
TEST(ModelCacheTest, EveryLayerMatchesTheReferenceAfterRandomSequences) {
  constexpr size_t kLayers = 6, kH = 24, kI = 150;
  for (const ModelConfig& config : Configs()) {
    SCOPED_TRACE(config.Describe());
    std::mt19937_64 rng(2026120202);
    const size_t elem = DTypeSize(config.dtype);
    const ModelWeights w =
        RandomModel(rng, kLayers, kH, kI, elem, config.has_gate, config.down_layout);
    std::vector<diff::NeuronMask> initial;
    for (size_t l = 0; l < kLayers; ++l) initial.push_back(RandomMask(rng, kI, 0.2));
    absl::StatusOr<std::unique_ptr<ModelCache>> model =
        ModelCache::Create(config.Options(kLayers, kH, kI), w.views, initial);
    ASSERT_TRUE(model.ok()) << model.status();
    Expected expected{initial, config.tolerance};
    ASSERT_EQ(CompareModel(**model, w, expected), "");
    EXPECT_EQ((*model)->footprint().pool_blocks, 1u);
    for (int step = 0; step < 60; ++step) {
      const double fraction = std::uniform_real_distribution<double>(0.05, 0.7)(rng);
      const int kind = static_cast<int>(rng() % 3);
      std::string what;
      if (kind == 0) {  // one layer
        const size_t l = rng() % kLayers;
        const diff::NeuronMask mask = RandomMask(rng, kI, fraction);
        ASSERT_TRUE((*model)->Update(l, mask).ok()) << "step " << step;
        expected.Apply(l, mask);
        what = absl::StrFormat("Update(%u)", l);
      } else if (kind == 1) {  // a random subset, in random order
        std::vector<size_t> layers(kLayers);
        for (size_t l = 0; l < kLayers; ++l) layers[l] = l;
        std::shuffle(layers.begin(), layers.end(), rng);
        layers.resize(1 + rng() % kLayers);
        std::vector<diff::NeuronMask> masks;
        for (size_t k = 0; k < layers.size(); ++k) {
          // Sometimes the mask it holds already (an unchanged layer).
          masks.push_back(rng() % 5 == 0 ? expected.applied[layers[k]]
                                         : RandomMask(rng, kI, fraction));
        }
        std::vector<LayerMask> batch;
        for (size_t k = 0; k < layers.size(); ++k) batch.push_back({layers[k], &masks[k]});
        const absl::Status s = (*model)->UpdateMany(batch);
        ASSERT_TRUE(s.ok()) << "step " << step << ": " << s;
        for (size_t k = 0; k < layers.size(); ++k) expected.Apply(layers[k], masks[k]);
        what = absl::StrFormat("UpdateMany of %u layers", layers.size());
      } else {  // the layer's own byte form
        const size_t l = rng() % kLayers;
        const diff::NeuronMask mask = RandomMask(rng, kI, fraction);
        std::vector<uint8_t> bytes(kI);
        for (size_t i = 0; i < kI; ++i) bytes[i] = mask.Test(i) ? 1 : 0;
        ASSERT_TRUE((*(*model)->layer(l))->Update(cache::MaskInput::Bytes(bytes)).ok())
            << "step " << step;
        expected.Apply(l, mask);
        what = absl::StrFormat("layer(%u)->UpdateFromBytes", l);
      }
      ASSERT_EQ(CompareModel(**model, w, expected), "") << "step " << step << ": " << what;
    }
    // Masks up to 70% active outgrew the expected 30%.
    EXPECT_GT((*model)->totals().growths, 0u);
    EXPECT_GT((*model)->footprint().pool_blocks, 1u);
  }
}

// The same updates through UpdateMany and one by one on a twin model: same
// slots, same rows, same stats (per update and in total).
TEST(ModelCacheTest, UpdateManyEqualsSequentialUpdates) {
  constexpr size_t kLayers = 40, kH = 16, kI = 130;  // > 32 layers: the heap path too
  for (int threads : {1, 2, 4}) {
    for (size_t tolerance : {size_t{0}, size_t{10}}) {
      SCOPED_TRACE(absl::StrFormat("threads %d tolerance %u", threads, tolerance));
      std::mt19937_64 rng(77 + threads);
      const ModelWeights w =
          RandomModel(rng, kLayers, kH, kI, 4, true, DownLayout::kHiddenMajor);
      ModelConfig config;
      config.threads = threads;
      config.tolerance = tolerance;
      config.layout = PackedLayout::kFusedRows;
      std::unique_ptr<ModelCache> batched =
          *ModelCache::Create(config.Options(kLayers, kH, kI), w.views);
      std::unique_ptr<ModelCache> sequential =
          *ModelCache::Create(config.Options(kLayers, kH, kI), w.views);
      Expected expected{std::vector<diff::NeuronMask>(kLayers, diff::NeuronMask(kI)),
                        tolerance};
      std::vector<diff::NeuronMask> masks(kLayers, diff::NeuronMask(kI));
      for (int step = 0; step < 12; ++step) {
        std::vector<LayerMask> batch;
        for (size_t l = 0; l < kLayers; ++l) {
          // Early layers change little, late ones a lot.
          const double flip = 0.02 + 0.3 * static_cast<double>(l) / kLayers;
          std::bernoulli_distribution flips(flip), on(0.4);
          if (step == 0) {
            masks[l] = RandomMask(rng, kI, 0.4);
          } else {
            for (size_t i = 0; i < kI; ++i) {
              if (flips(rng)) masks[l].Set(i, on(rng));
            }
          }
          batch.push_back({l, &masks[l]});
        }
        ASSERT_TRUE(batched->UpdateMany(batch).ok()) << "step " << step;
        for (size_t l = 0; l < kLayers; ++l) {
          ASSERT_TRUE(sequential->Update(l, masks[l]).ok());
          expected.Apply(l, masks[l]);
        }
        ASSERT_EQ(CompareModel(*batched, w, expected), "") << "step " << step;
        for (size_t l = 0; l < kLayers; ++l) {
          const WeightCache& a = **batched->layer(l);
          const WeightCache& b = **sequential->layer(l);
          ASSERT_EQ(std::vector<uint32_t>(a.active_indices().begin(), a.active_indices().end()),
                    std::vector<uint32_t>(b.active_indices().begin(), b.active_indices().end()))
              << "step " << step << " layer " << l;
          EXPECT_EQ(a.last_update().rows_loaded, b.last_update().rows_loaded);
          EXPECT_EQ(a.last_update().rows_moved, b.last_update().rows_moved);
          EXPECT_EQ(a.last_update().skipped, b.last_update().skipped);
          EXPECT_EQ(a.lag(), b.lag());
        }
      }
      EXPECT_EQ(batched->totals().bytes_copied, sequential->totals().bytes_copied);
      EXPECT_EQ(batched->totals().updates, sequential->totals().updates);
      EXPECT_EQ(batched->totals().updates, 12u * kLayers);  // Create's packing not counted
    }
  }
}

TEST(ModelCacheTest, FootprintWithBorrowedAndCopiedSources) {
  constexpr size_t kLayers = 4, kH = 64, kI = 512;
  std::mt19937_64 rng(5);
  const ModelWeights w = RandomModel(rng, kLayers, kH, kI, 2, true, DownLayout::kNeuronMajor);
  std::vector<diff::NeuronMask> masks;
  for (size_t l = 0; l < kLayers; ++l) masks.push_back(RandomMask(rng, kI, 0.25));
  ModelConfig config;
  config.dtype = DType::kBFloat16;
  config.down_layout = DownLayout::kNeuronMajor;
  config.layout = PackedLayout::kFusedRows;
  ModelCacheOptions options = config.Options(kLayers, kH, kI);
  options.expected_active_fraction = 0.3;
  std::unique_ptr<ModelCache> borrowed = *ModelCache::Create(options, w.views, masks);
  const ModelFootprint b = borrowed->footprint();
  const size_t weights = kLayers * 3 * kI * kH * 2;
  EXPECT_EQ(b.weight_bytes, weights);
  EXPECT_EQ(b.pool_blocks, 1u);
  // ceil(0.3 x 512) = 154 slots of 3 rows per layer, all from the pool.
  EXPECT_EQ(b.packed_bytes, kLayers * 154 * 3 * kH * 2);
  EXPECT_EQ(b.pool_in_use, b.packed_bytes);
  EXPECT_GE(b.pool_capacity, b.pool_in_use);
  // Masks, maps and scratch on the heap: tens of bytes per neuron.
  EXPECT_GT(b.cache_bytes, b.packed_bytes);
  EXPECT_LE(b.cache_bytes - b.packed_bytes, kLayers * 64 * kI);
  for (size_t l = 0; l < kLayers; ++l) {
    const LayerStats s = *borrowed->layer_stats(l);
    EXPECT_EQ(s.active, masks[l].CountActive());
    EXPECT_EQ(s.capacity, 154u);
    EXPECT_EQ(s.totals.updates, 0u);  // the initial packing is not an update
  }

  options.layer.ownership = SourceOwnership::kCopy;
  std::unique_ptr<ModelCache> copied = *ModelCache::Create(options, w.views, masks);
  const ModelFootprint c = copied->footprint();
  EXPECT_EQ(c.pool_in_use, c.packed_bytes + weights);
  EXPECT_EQ(c.pool_blocks, 1u);
}

TEST(ModelCacheTest, LayerStatsCountChurn) {
  constexpr size_t kLayers = 2, kH = 8, kI = 100;
  std::mt19937_64 rng(9);
  const ModelWeights w = RandomModel(rng, kLayers, kH, kI, 4, true, DownLayout::kHiddenMajor);
  ModelConfig config;
  std::unique_ptr<ModelCache> model = *ModelCache::Create(config.Options(kLayers, kH, kI), w.views);
  std::vector<uint32_t> first, second;
  for (uint32_t i = 0; i < 40; ++i) first.push_back(i);
  for (uint32_t i = 10; i < 50; ++i) second.push_back(i);  // 10 of 40 replaced
  ASSERT_TRUE(model->Update(0, *diff::NeuronMask::FromIndices(kI, first)).ok());
  ASSERT_TRUE(model->Update(0, *diff::NeuronMask::FromIndices(kI, second)).ok());
  const LayerStats s = *model->layer_stats(0);
  EXPECT_EQ(s.totals.updates, 2u);
  EXPECT_EQ(s.totals.rows_loaded, 50u);
  EXPECT_EQ(s.totals.changed_neurons, 60u);
  EXPECT_DOUBLE_EQ(s.churn, 50.0 / (2 * 40));
  EXPECT_EQ(model->totals().rows_loaded, 50u);
}

// A snapshot of everything observable, to check that an error changed
// nothing.
std::vector<std::vector<uint32_t>> Snapshot(const ModelCache& model) {
  std::vector<std::vector<uint32_t>> s;
  for (size_t l = 0; l < model.num_layers(); ++l) {
    const WeightCache& c = **model.layer(l);
    s.emplace_back(c.active_indices().begin(), c.active_indices().end());
    s.back().push_back(static_cast<uint32_t>(c.totals().updates));
    s.back().push_back(static_cast<uint32_t>(c.version()));
  }
  return s;
}

class ModelCacheErrorTest : public ::testing::Test {
 protected:
  static constexpr size_t kLayers = 3, kH = 8, kI = 64;
  void SetUp() override {
    std::mt19937_64 rng(3);
    w_ = RandomModel(rng, kLayers, kH, kI, 4, true, DownLayout::kHiddenMajor);
    for (size_t l = 0; l < kLayers; ++l) masks_.push_back(RandomMask(rng, kI, 0.3));
    model_ = *ModelCache::Create(ModelConfig().Options(kLayers, kH, kI), w_.views, masks_);
    before_ = Snapshot(*model_);
  }
  void ExpectUnchanged() {
    EXPECT_EQ(Snapshot(*model_), before_);
    Expected expected{masks_, 0};
    EXPECT_EQ(CompareModel(*model_, w_, expected), "");
  }
  ModelWeights w_;
  std::vector<diff::NeuronMask> masks_;
  std::unique_ptr<ModelCache> model_;
  std::vector<std::vector<uint32_t>> before_;
};

TEST_F(ModelCacheErrorTest, LayerIndexOutOfRange) {
  const diff::NeuronMask mask(kI);
  absl::Status s = model_->Update(3, mask);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("layer 3 out of range: the model has 3 layers"));
  EXPECT_EQ(model_->layer(7).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(model_->layer_stats(3).status().code(), absl::StatusCode::kOutOfRange);
  const diff::NeuronMask other = RandomMask(*std::make_unique<std::mt19937_64>(1), kI, 0.5);
  const LayerMask batch[2] = {{0, &other}, {5, &mask}};
  s = model_->UpdateMany(batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("update 1: layer 5 out of range"));
  ExpectUnchanged();
}

TEST_F(ModelCacheErrorTest, MaskSize) {
  const diff::NeuronMask wrong(kI + 1), right(kI);
  absl::Status s = model_->Update(1, wrong);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("layer 1: mask has 65 neurons"));
  const LayerMask batch[2] = {{0, &right}, {2, &wrong}};
  s = model_->UpdateMany(batch);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("update 1 (layer 2): mask has 65 neurons"));
  ExpectUnchanged();
}

TEST_F(ModelCacheErrorTest, LayerNamedTwiceOrNullMask) {
  const diff::NeuronMask a(kI), b(kI);
  const LayerMask twice[2] = {{1, &a}, {1, &b}};
  absl::Status s = model_->UpdateMany(twice);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("updates 0 and 1 both name layer 1"));
  const LayerMask null_mask[2] = {{0, &a}, {2, nullptr}};
  s = model_->UpdateMany(null_mask);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("update 1 (layer 2) has a null mask"));
  ExpectUnchanged();
}

TEST_F(ModelCacheErrorTest, LayerBeingMutatedRefusesTheWholeBatch) {
  const diff::NeuronMask a(kI), b(kI);
  WeightCache& busy = **model_->layer(2);
  ASSERT_TRUE(WeightCacheTestPeer::HoldMutationFlag(busy));
  const LayerMask batch[2] = {{0, &a}, {2, &b}};
  const absl::Status s = model_->UpdateMany(batch);
  WeightCacheTestPeer::ReleaseMutationFlag(busy);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("update 1 is being mutated"));
  ExpectUnchanged();
  // Layer 0's flag was released too: it updates again.
  EXPECT_TRUE(model_->Update(0, a).ok());
}

TEST_F(ModelCacheErrorTest, CreateArguments) {
  ModelCacheOptions o = ModelConfig().Options(kLayers, kH, kI);
  o.num_layers = 0;
  EXPECT_THAT(ModelCache::Create(o, {}).status().message(),
              HasSubstr("num_layers must be in [1, 128], got 0"));
  o.num_layers = 2;
  EXPECT_THAT(ModelCache::Create(o, w_.views).status().message(),
              HasSubstr("3 layers of weights for num_layers 2"));
  o.num_layers = kLayers;
  EXPECT_THAT(ModelCache::Create(o, w_.views, absl::MakeConstSpan(masks_).subspan(1)).status()
                  .message(),
              HasSubstr("2 initial masks for 3 layers"));
  o.expected_active_fraction = 0.0;
  EXPECT_THAT(ModelCache::Create(o, w_.views).status().message(),
              HasSubstr("expected_active_fraction must be in (0, 1], got 0"));
  o.expected_active_fraction = 0.5;
  o.layer.num_threads = 0;
  EXPECT_EQ(ModelCache::Create(o, w_.views).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.layer.num_threads = 1;
  std::vector<MlpWeights> views = w_.views;
  views[2].up = nullptr;
  EXPECT_THAT(ModelCache::Create(o, views).status().message(),
              HasSubstr("layer 2: up weight is null"));
  std::vector<diff::NeuronMask> masks = masks_;
  masks[1] = diff::NeuronMask(kI - 1);
  EXPECT_THAT(ModelCache::Create(o, w_.views, masks).status().message(),
              HasSubstr("layer 1: initial mask has 63 neurons"));
}

// WeightCache::UpdateMany over caches of different configurations (kept
// concatenation, layouts, gate-less, bfloat16, tolerance, SIMD levels, own
// thread counts), each against the plain reference after every batch.
TEST(WeightCacheUpdateManyTest, MixedCachesMatchTheReference) {
  std::mt19937_64 rng(2026120203);
  constexpr size_t kH = 20, kI = 120;
  std::vector<testing::CacheConfig> configs;
  for (PackedLayout layout :
       {PackedLayout::kSplit, PackedLayout::kInterleavedGateUp, PackedLayout::kFusedRows}) {
    testing::CacheConfig c;
    c.layout = layout;
    c.concat = true;
    configs.push_back(c);
  }
  testing::CacheConfig c;
  c.has_gate = false;
  c.dtype = DType::kBFloat16;
  c.layout = PackedLayout::kFusedRows;
  c.simd = SimdLevel::kScalar;
  c.threads = 3;
  configs.push_back(c);
  c = testing::CacheConfig();
  c.tolerance = 8;
  c.ownership = SourceOwnership::kCopy;
  c.down_layout = DownLayout::kNeuronMajor;
  configs.push_back(c);
  std::vector<Weights> weights;
  std::vector<WeightCache> caches;
  std::vector<diff::NeuronMask> applied;
  for (const testing::CacheConfig& config : configs) {
    weights.push_back(testing::RandomReferenceWeights(rng, kH, kI, DTypeSize(config.dtype)));
  }
  for (size_t k = 0; k < configs.size(); ++k) {
    applied.push_back(RandomMask(rng, kI, 0.3));
    caches.push_back(*WeightCache::Create(configs[k].Options(kH, kI),
                                          weights[k].View(configs[k].has_gate,
                                                          configs[k].down_layout),
                                          applied[k]));
  }
  for (int step = 0; step < 40; ++step) {
    std::vector<diff::NeuronMask> masks;
    std::vector<CacheUpdate> batch;
    const double fraction = std::uniform_real_distribution<double>(0.05, 0.8)(rng);
    for (size_t k = 0; k < caches.size(); ++k) masks.push_back(RandomMask(rng, kI, fraction));
    for (size_t k = 0; k < caches.size(); ++k) {
      if (rng() % 4 != 0) batch.push_back({&caches[k], &masks[k]});
    }
    const int threads = 1 + static_cast<int>(rng() % 4);
    ASSERT_TRUE(WeightCache::UpdateMany(batch, threads).ok()) << "step " << step;
    for (const CacheUpdate& u : batch) {
      const size_t k = static_cast<size_t>(u.cache - caches.data());
      size_t changed = 0;
      for (size_t i = 0; i < kI; ++i) changed += masks[k].Test(i) != applied[k].Test(i);
      if (changed != 0 && changed >= configs[k].tolerance) applied[k] = masks[k];
    }
    for (size_t k = 0; k < caches.size(); ++k) {
      ASSERT_EQ(testing::CompareWithReference(caches[k], weights[k], applied[k]), "")
          << "step " << step << ", threads " << threads << ", cache " << k << " ("
          << configs[k].Describe() << ")";
    }
  }
}

// A growth the pool cannot serve fails the whole batch before any cache's
// rows, maps or masks change; the same batch succeeds once there is room.
TEST(WeightCacheUpdateManyTest, GrowthFailureChangesNoCache) {
  std::mt19937_64 rng(12);
  constexpr size_t kH = 16, kI = 200;
  const Weights wa = testing::RandomReferenceWeights(rng, kH, kI, 4);
  const Weights wb = testing::RandomReferenceWeights(rng, kH, kI, 4);
  std::unique_ptr<memory::Arena> arena = *memory::Arena::Create(1 << 20);
  WeightCacheOptions o;
  o.hidden_size = kH;
  o.intermediate_size = kI;
  o.down_layout = DownLayout::kNeuronMajor;
  o.ownership = SourceOwnership::kBorrow;
  o.arena = arena.get();
  const diff::NeuronMask small_a = RandomMask(rng, kI, 0.2), small_b = RandomMask(rng, kI, 0.2);
  WeightCache a = *WeightCache::Create(o, wa.View(true, DownLayout::kNeuronMajor), small_a);
  WeightCache b = *WeightCache::Create(o, wb.View(true, DownLayout::kNeuronMajor), small_b);
  // Fill the rest of the pool: no growth fits.
  std::vector<memory::AlignedBuffer> filler;
  while (arena->largest_free_extent() > 0) {
    filler.push_back(*arena->Allocate(arena->largest_free_extent()));
  }
  const diff::NeuronMask fits = RandomMask(rng, kI, 0.1), grows = RandomMask(rng, kI, 0.9);
  const CacheUpdate batch[2] = {{&a, &fits}, {&b, &grows}};
  const absl::Status s = WeightCache::UpdateMany(batch, 2);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("update 1: arena cannot hold"));
  EXPECT_EQ(testing::CompareWithReference(a, wa, small_a), "");
  EXPECT_EQ(testing::CompareWithReference(b, wb, small_b), "");
  EXPECT_EQ(a.totals().updates + b.totals().updates, 0u);
  filler.clear();
  ASSERT_TRUE(WeightCache::UpdateMany(batch, 2).ok());
  EXPECT_EQ(testing::CompareWithReference(a, wa, fits), "");
  EXPECT_EQ(testing::CompareWithReference(b, wb, grows), "");
}

// WeightCache::UpdateMany on caches a caller holds (no ModelCache).
TEST(WeightCacheUpdateManyTest, ErrorsNameTheUpdateAndChangeNothing) {
  std::mt19937_64 rng(11);
  const Weights w = testing::RandomReferenceWeights(rng, 8, 50, 4);
  WeightCacheOptions o;
  o.hidden_size = 8;
  o.intermediate_size = 50;
  const diff::NeuronMask initial = RandomMask(rng, 50, 0.5);
  WeightCache a = *WeightCache::Create(o, w.Gated(), initial);
  WeightCache b = *WeightCache::Create(o, w.Gated(), initial);
  const diff::NeuronMask next = RandomMask(rng, 50, 0.5), wrong(49);
  const CacheUpdate twice[2] = {{&a, &next}, {&a, &next}};
  EXPECT_THAT(WeightCache::UpdateMany(twice, 2).message(),
              HasSubstr("updates 0 and 1 name the same cache"));
  const CacheUpdate bad_size[2] = {{&a, &next}, {&b, &wrong}};
  EXPECT_THAT(WeightCache::UpdateMany(bad_size, 2).message(),
              HasSubstr("update 1: mask has 49 neurons"));
  const CacheUpdate null_cache[1] = {{nullptr, &next}};
  EXPECT_THAT(WeightCache::UpdateMany(null_cache, 2).message(),
              HasSubstr("update 0 has a null cache"));
  const CacheUpdate good[2] = {{&a, &next}, {&b, &next}};
  EXPECT_EQ(WeightCache::UpdateMany(good, 0).code(), absl::StatusCode::kInvalidArgument);
  std::vector<WeightCache> many;
  for (size_t k = 0; k <= WeightCache::kMaxBatchCaches; ++k) {
    many.push_back(*WeightCache::Create(o, w.Gated(), initial));
  }
  std::vector<CacheUpdate> too_many;
  for (WeightCache& c : many) too_many.push_back({&c, &next});
  EXPECT_THAT(WeightCache::UpdateMany(too_many, 2).message(),
              HasSubstr("at most 128 caches, got 129"));
  EXPECT_EQ(testing::CompareWithReference(a, w, initial), "");
  EXPECT_EQ(testing::CompareWithReference(b, w, initial), "");
  EXPECT_EQ(a.totals().updates, 0u);  // the refused batches counted nothing
  ASSERT_TRUE(WeightCache::UpdateMany(good, 2).ok());
  EXPECT_EQ(testing::CompareWithReference(a, w, next), "");
  EXPECT_EQ(testing::CompareWithReference(b, w, next), "");
}

}  // namespace
}  // namespace sparse_mlp::cache
