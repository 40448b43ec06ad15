// Fuzz target: update sequences on a small cache, every configuration
// (dtype, gate or not, packed layout, copied or borrowed sources, down
// layout, threads, tolerance, SIMD level), each step compared with the plain
// reference model (tests/cache_reference.h), malformed calls included
// (they must be refused and change nothing).
//
// Input (tests/fuzz/fuzz_util.h): configuration bytes, the shape, a weight
// seed, the initial mask, then up to 64 operations, each a kind byte and
// its payload.
#include <cstdint>
#include <random>
#include <vector>

#include "diff/neuron_mask.h"
#include "platform/simd_level.h"
#include "tests/cache_reference.h"
#include "tests/fuzz/fuzz_util.h"

namespace sparse_mlp::fuzz {
namespace {

using cache::testing::CacheConfig;
using cache::testing::CacheOp;
using cache::testing::CheckedCache;

diff::NeuronMask ReadMask(FuzzInput& in, size_t n) {
  diff::NeuronMask mask(n);
  for (size_t k = 0; k < n; k += 8) {
    const uint8_t bits = in.Byte();
    for (size_t b = 0; b < 8 && k + b < n; ++b) mask.Set(k + b, (bits >> b) & 1);
  }
  return mask;
}

void Run(FuzzInput& in) {
  CacheConfig config;
  const uint8_t a = in.Byte(), b = in.Byte();
  const std::vector<SimdLevel> levels = SupportedSimdLevels();
  config.simd = levels[a % levels.size()];
  config.dtype = static_cast<cache::DType>((a >> 2) % 3);
  config.has_gate = (a >> 4) % 4 != 0;
  config.layout = static_cast<cache::PackedLayout>((a >> 6) % 3);
  if (!config.has_gate && config.layout == cache::PackedLayout::kInterleavedGateUp) {
    config.layout = cache::PackedLayout::kSplit;
  }
  config.ownership = b % 2 ? cache::SourceOwnership::kBorrow : cache::SourceOwnership::kCopy;
  config.down_layout =
      (b >> 1) % 2 ? cache::DownLayout::kNeuronMajor : cache::DownLayout::kHiddenMajor;
  config.threads = 1 + (b >> 2) % 2;
  config.tolerance = (b >> 3) % 8 < 5 ? 0 : (b >> 3) % 8 - 4;
  config.concat = config.has_gate && (b >> 6) % 2 != 0;
  const size_t h = 1 + in.Below(40), n = 1 + in.Below(300);
  std::mt19937_64 rng(in.U16());
  const cache::testing::ReferenceWeights weights =
      cache::testing::RandomReferenceWeights(rng, h, n, cache::DTypeSize(config.dtype));
  absl::StatusOr<CheckedCache> checked =
      CheckedCache::Create(config, &weights, ReadMask(in, n));
  FUZZ_CHECK(checked.ok(), "Create failed (%s): %s", config.Describe().c_str(),
             checked.status().ToString().c_str());
  const std::string created =
      cache::testing::CompareWithReference(checked->cache(), weights, checked->applied());
  FUZZ_CHECK(created.empty(), "%s, H=%zu I=%zu, after Create: %s", config.Describe().c_str(), h,
             n, created.c_str());
  for (int step = 0; step < 64 && !in.empty(); ++step) {
    CacheOp op;
    op.kind = static_cast<CacheOp::Kind>(in.Byte() % 7);
    switch (op.kind) {
      case CacheOp::kUpdate:
        op.mask = ReadMask(in, in.Byte() < 250 ? n : n + 1);  // wrong size now and then
        break;
      case CacheOp::kUpdateFromBytes:
        op.bytes.resize(in.Byte() < 250 ? n : n - 1);
        for (auto& v : op.bytes) v = in.Byte() % 3 == 0 ? in.Byte() : 0;
        break;
      case CacheOp::kUpdateFromIndices: {
        op.indices.resize(in.Below(n + 2));
        uint32_t at = 0;
        for (auto& index : op.indices) {
          at += in.Byte() % 6;  // 0: a duplicate (refused)
          index = at;           // past n: out of range (refused)
        }
        break;
      }
      case CacheOp::kUpdateFromByteRows: {
        op.rows = in.Byte() % 4;  // 0 rows: refused
        op.bytes.resize(op.rows * n);
        for (auto& v : op.bytes) v = in.Byte() % 4 == 0;
        break;
      }
      case CacheOp::kCatchUp:
        break;
      case CacheOp::kReserve:
        op.value = in.Below(n + 2);  // n + 1: beyond the layer (refused)
        break;
      case CacheOp::kSetTolerance:
        op.value = in.Byte() % 6;
        break;
    }
    const std::string d = checked->Apply(op);
    FUZZ_CHECK(d.empty(), "%s, H=%zu I=%zu, step %d: %s", config.Describe().c_str(), h, n, step,
               d.c_str());
  }
}

}  // namespace
}  // namespace sparse_mlp::fuzz

SPARSE_MLP_FUZZ_TARGET(sparse_mlp::fuzz::Run)
