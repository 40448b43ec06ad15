// The hot path does not allocate: after Reserve, updates of any size run
// without a single call to operator new (counted by replacing it in this
// test binary). Separate from cache_test so the replacement affects nothing
// else.
#include <memory>
#include <random>
#include <vector>

#include "cache/model_cache.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gtest/gtest.h"
#include "tests/alloc_counter.h"

namespace sparse_mlp::cache {
namespace {

TEST(WeightCacheAllocationTest, TheCounterSeesAllocations) {
  const size_t before = sparse_mlp::testing::AllocationCount();
  // A direct call, which the compiler may not elide as it may a
  // new-expression whose result is unused.
  void* probe = ::operator new(64);
  asm volatile("" : : "r"(probe) : "memory");
  ::operator delete(probe);
  EXPECT_EQ(sparse_mlp::testing::AllocationCount() - before, 1u);
}

TEST(WeightCacheAllocationTest, UpdatesAfterReserveDoNotAllocate) {
  const size_t h = 64, i = 3000;
  std::vector<float> gate(h * i, 1.0f), up(h * i, 2.0f), down(h * i, 3.0f);
  std::mt19937_64 rng(90);
  std::vector<float> scores(2 * i);
  for (float& s : scores) s = static_cast<float>(rng() % 1000) / 1000.0f;
  // Masks prepared before counting: building them allocates.
  std::vector<diff::NeuronMask> masks;
  for (int step = 0; step < 50; ++step) {
    diff::NeuronMask mask(i);
    const size_t density = step % 5 == 0 ? 100 : rng() % 100;
    for (size_t k = 0; k < i; ++k) mask.Set(k, rng() % 100 < density);
    masks.push_back(std::move(mask));
  }
  for (int threads : {1, 2}) {
    WeightCacheOptions options;
    options.hidden_size = h;
    options.intermediate_size = i;
    options.num_threads = threads;
    WeightCache cache =
        *WeightCache::Create(options, {gate.data(), up.data(), down.data()}, masks[1]);
    ASSERT_TRUE(cache.Reserve(i).ok());
    ASSERT_TRUE(cache.Update(masks[0]).ok());  // warms the OpenMP team
    const size_t before = sparse_mlp::testing::AllocationCount();
    for (const diff::NeuronMask& mask : masks) {
      ASSERT_TRUE(cache.Update(mask).ok());
      ASSERT_FALSE(cache.last_update().grew);
    }
    // Masks from scores: top-k and threshold select into the cache's own
    // mask without allocating either.
    for (size_t k : {size_t{0}, size_t{10}, i / 2, i}) {
      ASSERT_TRUE(
          cache.Update(cache::MaskInput::TopK({scores.data(), 2, i, diff::ScoreType::kFloat32}, k))
              .ok());
      ASSERT_TRUE(cache
                      .Update(cache::MaskInput::Threshold(
                          {scores.data(), 1, i, diff::ScoreType::kFloat32}, 0.5f))
                      .ok());
    }
    EXPECT_EQ(sparse_mlp::testing::AllocationCount() - before, 0u) << threads << " threads";
  }
}

// A model's layers (ModelCache) updated one by one and 28 at a time: no
// allocation once every layer's capacity holds its masks.
TEST(ModelCacheAllocationTest, UpdatesAndBatchesWithinCapacityDoNotAllocate) {
  constexpr size_t kLayers = 28, kH = 32, kI = 1000;
  std::vector<float> weights(3 * kH * kI, 1.5f);
  std::vector<MlpWeights> layers(kLayers, {weights.data(), weights.data() + kH * kI,
                                           weights.data() + 2 * kH * kI});
  std::mt19937_64 rng(91);
  std::vector<diff::NeuronMask> masks;
  for (int step = 0; step < 4 * static_cast<int>(kLayers); ++step) {
    diff::NeuronMask mask(kI);
    for (size_t k = 0; k < kI; ++k) mask.Set(k, rng() % 100 < 40);
    masks.push_back(std::move(mask));
  }
  ModelCacheOptions options;
  options.num_layers = kLayers;
  options.layer.hidden_size = kH;
  options.layer.intermediate_size = kI;
  options.layer.num_threads = 2;
  options.expected_active_fraction = 0.6;  // every mask fits
  std::unique_ptr<ModelCache> model = *ModelCache::Create(options, layers);
  std::vector<LayerMask> batch(kLayers);
  ASSERT_TRUE(model->Update(0, masks[0]).ok());  // warms the OpenMP team
  const size_t before = sparse_mlp::testing::AllocationCount();
  for (size_t round = 0; round < 4; ++round) {
    for (size_t l = 0; l < kLayers; ++l) {
      ASSERT_TRUE(model->Update(l, masks[round * kLayers + (l + 1) % kLayers]).ok());
      batch[l] = {l, &masks[round * kLayers + l]};
    }
    ASSERT_TRUE(model->UpdateMany(batch).ok());
  }
  EXPECT_EQ(sparse_mlp::testing::AllocationCount() - before, 0u);
  EXPECT_EQ(model->totals().growths, 0u);
}

}  // namespace
}  // namespace sparse_mlp::cache
