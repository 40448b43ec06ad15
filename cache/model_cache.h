// ModelCache: the weight caches of every MLP layer of a model, carved from
// one memory pool and updated one layer at a time or many at once.
//
// A decoder runs L layers per token, each with its own active-neuron mask.
// ModelCache holds one WeightCache (cache/weight_cache.h) per layer, all
// allocating from one memory::Arena: a few large blocks, huge-page advised,
// sized at Create for every layer's packed rows at the expected active
// fraction (plus the caches' own source copies: all weights with kCopy, the
// transposed down with kBorrow and a hidden-major down). A layer that needs
// more grows as a WeightCache does (1.5x); the pool then hands it a freed
// region, or adds a block (never per-layer heap allocations).
//
// Updates: Update(l, mask) is layer l's WeightCache::Update; the fused layer
// step is step::LayerStep on layer(l) (step/layer_step.h). UpdateMany applies
// several layers' masks as one batch (WeightCache::UpdateMany): every
// layer's diff and plan, then all their copies in one parallel region
// split evenly over the threads, so a predictor that looks several layers
// ahead pays one thread wake-up and one load-balanced copy instead of one
// per layer.
//
// Sources: borrowed by default (ownership kBorrow), as a model whose
// weights are already loaded, or memory-mapped read-only, wants: the caches
// then hold only the packed rows (plus, with a hidden-major down, its
// transposed copy; pass down neuron-major to avoid it). With kCopy the
// caches copy every layer's weights into the pool and the caller's arrays
// may be freed after Create.
//
// Ownership and lifetime: ModelCache owns the pool and the caches; views of
// a layer (and storage retained through WeightCache::RetainStorage) point
// into the pool and must not outlive the ModelCache. Borrowed sources must
// outlive it, unchanged.
//
// Errors: absl::Status naming the bad value (layer index, mask size, ...);
// after any error every layer is as it was (a failed growth inside
// UpdateMany may leave other layers of the batch with more capacity,
// nothing else).
//
// Thread-safety: as WeightCache, per layer: calls on different layers may
// run concurrently (the pool is thread-safe); mutating calls on one layer,
// and UpdateMany with any call mutating one of its layers, must be
// serialized (detected and refused with FailedPrecondition, as there).
#ifndef SPARSE_MLP_CACHE_MODEL_CACHE_H_
#define SPARSE_MLP_CACHE_MODEL_CACHE_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/dtype.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "memory/arena.h"
#include "platform/simd_level.h"

namespace sparse_mlp::cache {

struct ModelCacheOptions {
  size_t num_layers = 0;  // L in [1, WeightCache::kMaxBatchCaches]
  // Every layer's cache, as WeightCache::Create takes it; the same shape and
  // type for all layers. Here sources are borrowed by default. The model
  // sets arena (its pool) and initial_capacity (from the fraction below)
  // itself; num_threads and simd also run UpdateMany's batch.
  WeightCacheOptions layer = [] {
    WeightCacheOptions o;
    o.ownership = SourceOwnership::kBorrow;
    return o;
  }();
  // Each layer's capacity reserved at Create: ceil(f x I) neurons, f in
  // (0, 1]. Layers whose masks need more grow (see above).
  double expected_active_fraction = 0.5;
  memory::HugePageAdvice huge_pages = memory::HugePageAdvice::kHugePages;
};

// Which layer, which mask: one entry of UpdateMany (the mask not owned).
struct LayerMask {
  size_t layer = 0;
  const diff::NeuronMask* mask = nullptr;
};

// Bytes of a model's caches against its weights.
struct ModelFootprint {
  size_t weight_bytes = 0;   // the L layers' gate, up and down as given
  size_t cache_bytes = 0;    // sum of the layers' WeightCache::memory_bytes
  size_t packed_bytes = 0;   // of which packed rows (at capacity)
  size_t pool_capacity = 0;  // the pool's blocks (reserved address space)
  size_t pool_in_use = 0;
  size_t pool_blocks = 0;
};

// One layer's state and what its updates did since Create.
struct LayerStats {
  size_t active = 0;
  size_t capacity = 0;
  size_t lag = 0;  // neurons by which it differs from its last requested mask
  size_t memory_bytes = 0;
  UpdateTotals totals;
  // Rows loaded per update call over the current active count: the
  // layer's measured churn (a fraction of its active set per update).
  double churn = 0.0;
};

class ModelCache {
 public:
  // One MlpWeights per layer (options.num_layers of them, each as
  // WeightCache::Create takes them) and optionally one initial mask per
  // layer (empty span: no neuron active anywhere). Allocates the pool and
  // packs the initial masks; O(weights) with kCopy or a hidden-major down
  // (copy / transpose), else O(L x (I + initial rows x H)). Errors: L
  // outside [1, kMaxBatchCaches], a mask count other than 0 or L,
  // expected_active_fraction outside (0, 1], then those of
  // WeightCache::Create (prefixed with the layer), allocation failure
  // (ResourceExhausted).
  static absl::StatusOr<std::unique_ptr<ModelCache>> Create(
      const ModelCacheOptions& options, absl::Span<const MlpWeights> layers,
      absl::Span<const diff::NeuronMask> initial_masks = {});

  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;

  // Layer l's cache (for its views, step::LayerStep, the other update
  // forms). OutOfRange naming l and L for l >= L.
  absl::StatusOr<WeightCache*> layer(size_t l);
  absl::StatusOr<const WeightCache*> layer(size_t l) const;

  // WeightCache::Update on layer l; errors as there, and OutOfRange for a
  // bad l (nothing changes).
  absl::Status Update(size_t l, const diff::NeuronMask& mask);

  // The layers' masks as one batch on options.layer.num_threads threads
  // (WeightCache::UpdateMany). Errors, before any layer changes: a layer
  // index out of range (OutOfRange), a null mask, a layer named twice, a
  // mask size other than I (InvalidArgument, naming the entry and layer),
  // and those of WeightCache::UpdateMany.
  absl::Status UpdateMany(absl::Span<const LayerMask> updates);

  size_t num_layers() const { return caches_.size(); }
  const ModelCacheOptions& options() const { return options_; }

  ModelFootprint footprint() const;
  // OutOfRange for l >= L.
  absl::StatusOr<LayerStats> layer_stats(size_t l) const;
  // Sums over the layers.
  UpdateTotals totals() const;

 private:
  ModelCache() = default;
  absl::Status LayerIndexError(size_t l) const;

  ModelCacheOptions options_;
  size_t weight_bytes_ = 0;
  // Declared before the caches: destroyed after them (their buffers return
  // to it first).
  std::unique_ptr<memory::Arena> pool_;
  std::vector<WeightCache> caches_;
};

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_MODEL_CACHE_H_
