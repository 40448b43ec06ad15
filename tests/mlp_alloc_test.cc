// The forward and the layer step do not allocate once their Workspace is
// sized: no call to operator new (counted by replacing it in this binary)
// and no workspace growth (its only other allocation).
#include <random>
#include <vector>

#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gtest/gtest.h"
#include "mlp/mlp_forward.h"
#include "step/layer_step.h"
#include "tests/alloc_counter.h"

namespace sparse_mlp::mlp {
namespace {

TEST(MlpAllocationTest, CallsAfterReserveDoNotAllocate) {
  const size_t h = 512, i = 1024, max_tokens = 8;
  std::vector<float> gate(h * i, 0.01f), up(h * i, 0.02f), down(h * i, 0.03f);
  std::vector<float> x(max_tokens * h, 0.5f), y(max_tokens * h);
  std::mt19937_64 rng(4);
  std::vector<diff::NeuronMask> masks;
  std::vector<std::vector<uint32_t>> sets;
  for (int step = 0; step < 20; ++step) {
    diff::NeuronMask mask(i);
    for (uint32_t k = 0; k < i; ++k) mask.Set(k, rng() % 100 < 40);
    sets.push_back(mask.ToIndices());
    masks.push_back(std::move(mask));
  }
  for (int threads : {1, 2}) {
    cache::WeightCacheOptions co;
    co.hidden_size = h;
    co.intermediate_size = i;
    co.num_threads = threads;
    cache::WeightCache wc =
        *cache::WeightCache::Create(co, {gate.data(), up.data(), down.data()}, masks[0]);
    ASSERT_TRUE(wc.Reserve(i).ok());
    Workspace ws;
    ASSERT_TRUE(ws.Reserve(max_tokens, h, i, threads).ok());
    ForwardOptions o;
    o.num_threads = threads;
    const NeuronRows rows{cache::DType::kFloat32, h, i, gate.data(), h, up.data(), h,
                          down.data(), h};
    const LinearWeights linear{cache::DType::kFloat32, h, i, gate.data(), up.data(), down.data()};
    const Tokens out{y.data(), max_tokens, h, cache::DType::kFloat32};
    // Warm the OpenMP team (its first region allocates inside the runtime).
    ASSERT_TRUE(Forward(rows, {x.data(), max_tokens, h, cache::DType::kFloat32}, out, o, &ws).ok());
    const size_t bytes = ws.bytes();
    const size_t before = sparse_mlp::testing::AllocationCount();
    for (int step = 0; step < 20; ++step) {
      const size_t t = 1 + step % max_tokens;
      const ConstTokens in{x.data(), t, h, cache::DType::kFloat32};
      const Tokens o_t{y.data(), t, h, cache::DType::kFloat32};
      ASSERT_TRUE(Forward(rows, in, o_t, o, &ws).ok());
      ASSERT_TRUE(ForwardIndexed(rows, sets[step], in, o_t, o, &ws).ok());
      ASSERT_TRUE(ForwardLinear(linear, in, o_t, o, &ws).ok());
      ASSERT_TRUE(step::CacheForward(wc, in, o_t, o, &ws).ok());
      ASSERT_TRUE(step::LayerStep(&wc, masks[step], in, o_t, o, &ws).ok());
    }
    EXPECT_EQ(sparse_mlp::testing::AllocationCount() - before, 0u) << threads << " threads";
    EXPECT_EQ(ws.bytes(), bytes) << threads << " threads";
  }
}

}  // namespace
}  // namespace sparse_mlp::mlp
