// The hot path does not allocate: after Reserve, updates of any size run
// without a single call to operator new (counted by replacing it in this
// test binary). Separate from cache_test so the replacement affects nothing
// else.
#include <atomic>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gtest/gtest.h"

namespace {
std::atomic<size_t> g_allocations{0};
}  // namespace

void* operator new(size_t size) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace sparse_mlp::cache {
namespace {

TEST(WeightCacheAllocationTest, TheCounterSeesAllocations) {
  const size_t before = g_allocations.load();
  auto* probe = new std::vector<int>(10);
  delete probe;
  EXPECT_GE(g_allocations.load() - before, 2u);
}

TEST(WeightCacheAllocationTest, UpdatesAfterReserveDoNotAllocate) {
  const size_t h = 64, i = 3000;
  std::vector<float> gate(h * i, 1.0f), up(h * i, 2.0f), down(h * i, 3.0f);
  std::mt19937_64 rng(90);
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
    const size_t before = g_allocations.load();
    for (const diff::NeuronMask& mask : masks) {
      ASSERT_TRUE(cache.Update(mask).ok());
      ASSERT_FALSE(cache.last_update().grew);
    }
    EXPECT_EQ(g_allocations.load() - before, 0u) << threads << " threads";
  }
}

}  // namespace
}  // namespace sparse_mlp::cache
