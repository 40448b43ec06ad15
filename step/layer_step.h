// The forward on a WeightCache (cache/weight_cache.h), and the fused layer
// step: update the cache to a new mask and compute the forward in one pass.
//
// CacheForward runs mlp/mlp_forward.h's Forward on the cache's packed rows
// (every layout; strided views need no copy), or mlp/quant_forward.h's
// ForwardQuant when the cache holds quantized rows (x and y float32 then).
//
// LayerStep takes the new mask and x, plans the cache update and computes
// the forward over the new set while it executes the plan: a kept neuron's
// rows are read from its slot; an entering neuron's rows are read once from
// the sources, used for the compute and, still in the core's caches, stored
// into their slot with streaming stores; a moved neuron's rows are read from
// the old slot and stored into the new one. So with a new mask per token the
// update costs its stores, not a second read of the entering rows
// (docs/design.md, "The forward"; what that buys on one machine is in
// docs/performance.md). Afterwards the
// cache is exactly as after Update(mask) (tests check Verify and the maps),
// and y is the forward over the neurons the cache now holds: the mask, or,
// when the cache's tolerance skipped the update, the applied mask.
//
// Precision, determinism and threading as in mlp/mlp_forward.h
// (options.num_threads runs both the forward and the plan's copies; the
// cache's own thread count only serves a capacity growth). Allocation: the
// workspace's (as for Forward) and the cache's growth, nothing else.
//
// Errors: those of Forward for x, y and the options (checked first, with the
// cache's dtype and width as the weights'), a null cache, and those of the
// cache's update (mask size or form, capacity growth failing, another
// mutating call running). On any error neither the cache nor y has changed.
//
// Thread-safety: a LayerStep is a mutating call on the cache (see
// WeightCache); CacheForward is a const one.
#ifndef SPARSE_MLP_STEP_LAYER_STEP_H_
#define SPARSE_MLP_STEP_LAYER_STEP_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "mlp/mlp_forward.h"
#include "mlp/quant_forward.h"

namespace sparse_mlp::step {

// The rows of the cache's active neurons as NeuronRows (views; valid until
// the cache's next mutating call). For a cache of float rows.
mlp::NeuronRows CacheRows(const cache::WeightCache& cache);

// The same for a cache of quantized rows (count 0 for a float cache).
mlp::QuantNeuronRows CacheQuantRows(const cache::WeightCache& cache);

absl::Status CacheForward(const cache::WeightCache& cache, const mlp::ConstTokens& x,
                          const mlp::Tokens& y, const mlp::ForwardOptions& options,
                          mlp::Workspace* workspace);

absl::Status LayerStep(cache::WeightCache* cache, const diff::NeuronMask& mask,
                       const mlp::ConstTokens& x, const mlp::Tokens& y,
                       const mlp::ForwardOptions& options, mlp::Workspace* workspace);

// The same with the mask as bytes (non-zero = active): one [I] mask
// (rows = 1) or the union of a [rows, I] matrix (a batch of tokens).
absl::Status LayerStepFromByteRows(cache::WeightCache* cache, absl::Span<const uint8_t> masks,
                                   size_t rows, const mlp::ConstTokens& x, const mlp::Tokens& y,
                                   const mlp::ForwardOptions& options, mlp::Workspace* workspace);

}  // namespace sparse_mlp::step

#endif  // SPARSE_MLP_STEP_LAYER_STEP_H_
