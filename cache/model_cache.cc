#include "cache/model_cache.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "memory/size_math.h"

namespace sparse_mlp::cache {
namespace {

absl::Status Prefixed(size_t l, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrFormat("layer %u: %s", l, s.message()));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelCache>> ModelCache::Create(
    const ModelCacheOptions& options, absl::Span<const MlpWeights> layers,
    absl::Span<const diff::NeuronMask> initial_masks) {
  const size_t num_layers = options.num_layers;
  if (num_layers == 0 || num_layers > WeightCache::kMaxBatchCaches) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "num_layers must be in [1, %u], got %u", WeightCache::kMaxBatchCaches, num_layers));
  }
  if (layers.size() != num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%u layers of weights for num_layers %u", layers.size(), num_layers));
  }
  if (!initial_masks.empty() && initial_masks.size() != num_layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%u initial masks for %u layers (pass one per layer, or none)",
        initial_masks.size(), num_layers));
  }
  const double f = options.expected_active_fraction;
  if (!(f > 0.0 && f <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("expected_active_fraction must be in (0, 1], got %g", f));
  }
  WeightCacheOptions layer_options = options.layer;
  const size_t neurons = layer_options.intermediate_size;
  const size_t capacity =
      std::min(neurons, static_cast<size_t>(std::ceil(f * static_cast<double>(neurons))));

  std::unique_ptr<ModelCache> model(new ModelCache());
  model->options_ = options;
  // WeightCache validates the options (shape, threads, ...) before the pool
  // is sized from them, on a borrowing cache of no neurons (allocates
  // nothing): its errors are WeightCache's own.
  {
    absl::StatusOr<WeightCache> probe = WeightCache::Create(
        [&] {
          WeightCacheOptions o = layer_options;
          o.ownership = SourceOwnership::kBorrow;
          o.down_layout = DownLayout::kNeuronMajor;
          o.arena = nullptr;
          o.initial_capacity = 0;
          return o;
        }(),
        layers[0], diff::NeuronMask(neurons));
    if (!probe.ok()) return Prefixed(0, probe.status());
  }
  absl::StatusOr<WeightCache::AllocationBytes> per_layer =
      WeightCache::AllocationFor(layer_options, capacity, memory::kCacheLineBytes);
  if (!per_layer.ok()) return per_layer.status();
  absl::StatusOr<size_t> layer_total = memory::CheckedAdd(per_layer->packed, per_layer->sources);
  if (!layer_total.ok()) return layer_total.status();
  absl::StatusOr<size_t> pool_bytes = memory::CheckedMul(*layer_total, num_layers);
  if (!pool_bytes.ok()) return pool_bytes.status();
  // Growth blocks: an eighth of the packed rows, so that several layers'
  // growths share one block (a request larger than that gets its own).
  const size_t growth = std::max<size_t>(per_layer->packed * num_layers / 8, size_t{2} << 20);
  absl::StatusOr<std::unique_ptr<memory::Arena>> pool =
      memory::Arena::Create(*pool_bytes, memory::kCacheLineBytes, options.huge_pages, growth);
  if (!pool.ok()) return pool.status();
  model->pool_ = *std::move(pool);
  layer_options.arena = model->pool_.get();
  layer_options.initial_capacity = capacity;

  // Borrowed sources bound nothing the pool holds: the weights' total is
  // checked on its own.
  absl::StatusOr<size_t> weight_bytes = RowBytesFor(layer_options);
  for (size_t factor : {neurons, size_t{layer_options.has_gate ? 3u : 2u}, num_layers}) {
    if (weight_bytes.ok()) weight_bytes = memory::CheckedMul(*weight_bytes, factor);
  }
  if (!weight_bytes.ok()) return weight_bytes.status();
  model->weight_bytes_ = *weight_bytes;
  model->caches_.reserve(num_layers);
  const diff::NeuronMask none(neurons);
  for (size_t l = 0; l < num_layers; ++l) {
    absl::StatusOr<WeightCache> cache = WeightCache::Create(
        layer_options, layers[l], initial_masks.empty() ? none : initial_masks[l]);
    if (!cache.ok()) return Prefixed(l, cache.status());
    model->caches_.push_back(*std::move(cache));
  }
  return model;
}

absl::Status ModelCache::LayerIndexError(size_t l) const {
  return absl::OutOfRangeError(
      absl::StrFormat("layer %u out of range: the model has %u layers", l, caches_.size()));
}

absl::StatusOr<WeightCache*> ModelCache::layer(size_t l) {
  if (l >= caches_.size()) return LayerIndexError(l);
  return &caches_[l];
}

absl::StatusOr<const WeightCache*> ModelCache::layer(size_t l) const {
  if (l >= caches_.size()) return LayerIndexError(l);
  return &caches_[l];
}

absl::Status ModelCache::Update(size_t l, const diff::NeuronMask& mask) {
  if (l >= caches_.size()) return LayerIndexError(l);
  if (absl::Status s = caches_[l].Update(mask); !s.ok()) return Prefixed(l, s);
  return absl::OkStatus();
}

absl::Status ModelCache::UpdateMany(absl::Span<const LayerMask> updates) {
  absl::InlinedVector<CacheUpdate, 32> batch;
  for (size_t i = 0; i < updates.size(); ++i) {
    const LayerMask& u = updates[i];
    if (u.layer >= caches_.size()) {
      return absl::OutOfRangeError(
          absl::StrFormat("update %u: layer %u out of range: the model has %u layers", i,
                          u.layer, caches_.size()));
    }
    if (u.mask == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("update %u (layer %u) has a null mask", i, u.layer));
    }
    if (u.mask->size() != options_.layer.intermediate_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "update %u (layer %u): mask has %u neurons, intermediate_size is %u", i, u.layer,
          u.mask->size(), options_.layer.intermediate_size));
    }
    for (size_t j = 0; j < i; ++j) {
      if (updates[j].layer == u.layer) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "updates %u and %u both name layer %u: a batch updates a layer once", j, i,
            u.layer));
      }
    }
    batch.push_back({&caches_[u.layer], u.mask});
  }
  return WeightCache::UpdateMany(batch, options_.layer.num_threads, options_.layer.simd);
}

ModelFootprint ModelCache::footprint() const {
  ModelFootprint f;
  f.weight_bytes = weight_bytes_;
  for (const WeightCache& c : caches_) {
    f.cache_bytes += c.memory_bytes();
    f.packed_bytes += c.packed_bytes();
  }
  f.pool_capacity = pool_->capacity();
  f.pool_in_use = pool_->bytes_in_use();
  f.pool_blocks = pool_->num_blocks();
  return f;
}

absl::StatusOr<LayerStats> ModelCache::layer_stats(size_t l) const {
  if (l >= caches_.size()) return LayerIndexError(l);
  const WeightCache& c = caches_[l];
  LayerStats s;
  s.active = c.num_active();
  s.capacity = c.capacity();
  s.lag = c.lag();
  s.memory_bytes = c.memory_bytes();
  s.totals = c.totals();
  if (s.totals.updates > 0 && s.active > 0) {
    s.churn = static_cast<double>(s.totals.rows_loaded) /
              (static_cast<double>(s.totals.updates) * static_cast<double>(s.active));
  }
  return s;
}

UpdateTotals ModelCache::totals() const {
  UpdateTotals t;
  for (const WeightCache& c : caches_) {
    const UpdateTotals& u = c.totals();
    t.updates += u.updates;
    t.skipped += u.skipped;
    t.changed_neurons += u.changed_neurons;
    t.rows_loaded += u.rows_loaded;
    t.rows_moved += u.rows_moved;
    t.bytes_copied += u.bytes_copied;
    t.repacks += u.repacks;
    t.growths += u.growths;
  }
  return t;
}

}  // namespace sparse_mlp::cache
