// The flash tier's step does not allocate once set up: after a few warm-up
// steps (the reader's batch arrays reach their reserved size, the workspace
// its size), steps over a random mask sequence, with prefetches and with
// both engines, run without a call to operator new in any thread (counted by
// replacing it in this binary).
#include <algorithm>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "flash/flash_cache.h"
#include "gtest/gtest.h"
#include "step/flash_step.h"
#include "store/bundle_writer.h"
#include "tests/alloc_counter.h"

namespace sparse_mlp {
namespace {

TEST(FlashAllocationTest, StepsDoNotAllocate) {
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string path = std::string(tmp != nullptr ? tmp : "/tmp") + "/alloc.spmlb";
  const size_t h = 64, i = 256, layers = 2;
  std::vector<float> gate(h * i, 0.01f), up(h * i, 0.02f), down(h * i, 0.03f);
  {
    auto w = store::BundleWriter::Create(path,
                                         {DType::kFloat32, h, i, layers, true, 0, 0, std::nullopt});
    ASSERT_TRUE(w.ok());
    for (size_t l = 0; l < layers; ++l) {
      ASSERT_TRUE((*w)->AppendLayer({gate.data(), up.data(), down.data(), true}).ok());
    }
    ASSERT_TRUE((*w)->Finish().ok());
  }
  std::mt19937_64 rng(4);
  std::vector<std::vector<uint32_t>> masks;
  for (int k = 0; k < 40; ++k) {
    std::vector<uint32_t> m;
    for (uint32_t j = 0; j < i; ++j) {
      if (rng() % 100 < 30) m.push_back(j);
    }
    m.resize(std::min<size_t>(m.size(), 100));
    masks.push_back(m);
  }
  for (store::IoEngineKind engine : {store::IoEngineKind::kIoUring, store::IoEngineKind::kPread}) {
    flash::FlashCacheOptions o;
    o.budget_bytes = size_t{8} << 20;
    o.window = 3;
    o.reader.engine = engine;
    o.reader.queue_depth = 8;
    auto fc = flash::FlashModelCache::Open(path, o);
    ASSERT_TRUE(fc.ok()) << fc.status();
    mlp::Workspace ws;
    mlp::ForwardOptions fo;
    fo.num_threads = 2;
    std::vector<float> x(h, 1.0f), y(h);
    auto step = [&](int k) {
      const size_t l = k % layers;
      if (k % 3 == 0) {
        ASSERT_TRUE((*fc)->Prefetch((l + 1) % layers, masks[k + 1]).ok());
      }
      ASSERT_TRUE(step::FlashLayerStep(fc->get(), l, masks[k], {x.data(), 1, h, DType::kFloat32},
                                       {y.data(), 1, h, DType::kFloat32}, fo, &ws)
                      .ok());
    };
    for (int k = 0; k < 6; ++k) step(k);
    const size_t before = testing::AllocationCount();
    for (int k = 6; k < 38; ++k) step(k);
    EXPECT_EQ(testing::AllocationCount() - before, 0u) << store::IoEngineName(engine);
  }
}

}  // namespace
}  // namespace sparse_mlp
