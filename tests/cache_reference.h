// A plain reference model of the weight cache, shared by cache_test, the
// soak binary and the cache fuzz target (testonly).
//
// ReferenceWeights holds a layer's weights as a caller does. CompareWithReference
// checks a cache against them with plain loops: the slots hold exactly a
// mask's neurons, each slot's rows equal that neuron's rows, and the views
// describe that. CheckedCache drives a cache through a sequence of
// operations and, after each, compares it with what the operation must have
// done (the tolerance and catch-up rules, error cases leaving everything
// unchanged). Messages name the operation and the first difference.
#ifndef SPARSE_MLP_TESTS_CACHE_REFERENCE_H_
#define SPARSE_MLP_TESTS_CACHE_REFERENCE_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "platform/simd_level.h"

namespace sparse_mlp::cache {

// Holds a cache's mutation flag as a mutating call on another thread would
// (WeightCache's friend, for the tests of the concurrent-mutation refusal).
class WeightCacheTestPeer {
 public:
  static bool HoldMutationFlag(WeightCache& cache) { return cache.mutation_.TryAcquire(); }
  static void ReleaseMutationFlag(WeightCache& cache) { cache.mutation_.Release(); }
};

}  // namespace sparse_mlp::cache

namespace sparse_mlp::cache::testing {

// Random bytes as weights (bytes are bytes to the cache), elem bytes each.
struct ReferenceWeights {
  size_t h = 0, i = 0, elem = 0;
  std::vector<uint8_t> gate, up, down;  // [I, H], [I, H], [H, I]
  std::vector<uint8_t> down_neuron_major;  // [I, H]
  MlpWeights Gated() const { return View(true, DownLayout::kHiddenMajor); }
  MlpWeights View(bool has_gate, DownLayout down_layout) const;
};

ReferenceWeights RandomReferenceWeights(std::mt19937_64& rng, size_t h, size_t i,
                                        size_t elem);

// "" when `cache` holds exactly `mask`'s neurons with their rows from `w`
// (through gate(), up(), down_rows(), down_hidden_major() and, when kept,
// concatenated_gate_up()) and its own Verify() agrees; otherwise the first
// difference.
std::string CompareWithReference(const WeightCache& cache, const ReferenceWeights& w,
                                 const diff::NeuronMask& mask);

// Everything a cache can be configured with that changes its code paths.
struct CacheConfig {
  SimdLevel simd = SimdLevel::kBest;
  DType dtype = DType::kFloat32;
  bool has_gate = true;
  PackedLayout layout = PackedLayout::kSplit;
  SourceOwnership ownership = SourceOwnership::kCopy;
  DownLayout down_layout = DownLayout::kHiddenMajor;
  int threads = 1;
  size_t tolerance = 0;
  bool concat = false;  // concat_gate_up (needs a gate)
  std::string Describe() const;
  WeightCacheOptions Options(size_t h, size_t i) const;
};

// One call on a cache.
struct CacheOp {
  enum Kind {
    kUpdate,             // Update(mask)
    kUpdateFromBytes,    // UpdateFromBytes(bytes): any length, any values
    kUpdateFromIndices,  // UpdateFromIndices(indices): any order, any values
    kUpdateFromByteRows, // UpdateFromByteRows(bytes, rows): any sizes
    kCatchUp,
    kReserve,            // Reserve(value): any value
    kSetTolerance,       // set_tolerance(value)
  };
  Kind kind = kUpdate;
  diff::NeuronMask mask;          // kUpdate
  std::vector<uint8_t> bytes;     // kUpdateFromBytes, kUpdateFromByteRows
  std::vector<uint32_t> indices;  // kUpdateFromIndices
  size_t rows = 0;                // kUpdateFromByteRows
  size_t value = 0;               // kReserve, kSetTolerance
  std::string Describe() const;
};

// A cache together with the masks it must hold.
class CheckedCache {
 public:
  // The weights must outlive the CheckedCache (borrowed sources).
  static absl::StatusOr<CheckedCache> Create(const CacheConfig& config,
                                             const ReferenceWeights* weights,
                                             const diff::NeuronMask& initial_mask);

  // Applies `op` to the cache and to the model; "" when the cache then
  // matches the model (and the call's status is the one expected), else the
  // first difference.
  std::string Apply(const CacheOp& op);

  const WeightCache& cache() const { return cache_; }
  const diff::NeuronMask& applied() const { return applied_; }

 private:
  CheckedCache(WeightCache cache, const ReferenceWeights* weights, size_t tolerance,
               const diff::NeuronMask& initial)
      : cache_(std::move(cache)),
        weights_(weights),
        tolerance_(tolerance),
        applied_(initial),
        requested_(initial) {}
  // Expected effect of an update to `next` (respecting the tolerance).
  std::string ExpectUpdate(const absl::Status& status, const diff::NeuronMask& next);
  std::string Check() const;

  WeightCache cache_;
  const ReferenceWeights* weights_;
  size_t tolerance_;
  diff::NeuronMask applied_, requested_;
};

}  // namespace sparse_mlp::cache::testing

#endif  // SPARSE_MLP_TESTS_CACHE_REFERENCE_H_
