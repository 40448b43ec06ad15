// FlashLayerStep: one layer's sparse MLP over a flash::FlashModelCache
// (flash/flash_cache.h): y = down(act(gate x) * (up x)) over `mask`'s
// neurons, loading the entering ones from the cache's bundle file.
//
// The entering neurons' reads are issued first; the forward runs over the
// hit slots while they are in flight, then over each fixed chunk of entering
// neurons as soon as that chunk has landed (PowerInfer-2's overlap of
// compute with I/O). The order of the sums is fixed (hits, then chunks in
// neuron order), so the result does not depend on the order reads complete
// in; it equals ForwardIndexed over the same neurons within the precision
// contract of mlp/mlp_forward.h (the partial sums are added in a different
// order).
//
// y is written only when the step succeeds: the sums go to the cache's
// scratch first. On a read error the step returns it (naming layer, neuron
// and offset), y is untouched, and the cache stays exact (the failed
// neurons are not resident).
//
// Threading: options.num_threads for the compute; the reads run on the
// cache's I/O thread. Thread-compatible (one thread steps a cache).
// Allocation: none once the workspace and the cache's scratch fit.
#ifndef SPARSE_MLP_STEP_FLASH_STEP_H_
#define SPARSE_MLP_STEP_FLASH_STEP_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "flash/flash_cache.h"
#include "mlp/mlp_forward.h"
#include "mlp/quant_forward.h"
#include "store/bundle_format.h"

namespace sparse_mlp::step {

// Where a step's time went (wall seconds).
struct FlashStepTimes {
  double plan_seconds = 0;     // residency plan, issuing the reads
  double compute_seconds = 0;  // the forward over hits and landed chunks
  double wait_seconds = 0;     // blocked on reads
};

// The rows of `count` bundles laid out `stride_bytes` apart from `base`
// (a cache's slots, a file's layer mapped or read into memory, a packed
// batch of bundles), as the forward reads them: gate, up and down of each
// bundle at the layout's offsets (gate null for gate-less files).
mlp::NeuronRows BundleRows(const store::BundleLayout& layout, const void* base, size_t count,
                           size_t stride_bytes);

// The same rows of a quantized file (count 0 for a float file).
mlp::QuantNeuronRows QuantBundleRows(const store::BundleLayout& layout, const void* base,
                                     size_t count, size_t stride_bytes);

// `mask`: sorted neuron indices of this file's layer. Errors: the cache's
// (layer, mask too large for the budget, read failures), the forward's
// (x / y shapes and types, options), InvalidArgument for y's type (float32
// or the weights' type). `times` (optional) receives the step's phases.
absl::Status FlashLayerStep(flash::FlashModelCache* cache, size_t layer,
                            absl::Span<const uint32_t> mask, const mlp::ConstTokens& x,
                            const mlp::Tokens& y, const mlp::ForwardOptions& options,
                            mlp::Workspace* workspace, FlashStepTimes* times = nullptr);

// The same over a gate-less bundle file (up and down rows only) with the
// gate's activations given: neuron j's coefficient for token t is
// gate_act[t x gate_act_stride + j] x <up_j, x_t> (j: the file's neuron
// index; gate-first, step/mask_step.h, computes them from a gate kept in
// DRAM, so only up and down are loaded). InvalidArgument for a gated file
// or null activations; otherwise as FlashLayerStep.
absl::Status FlashLayerStepGivenGate(flash::FlashModelCache* cache, size_t layer,
                                     absl::Span<const uint32_t> mask, const float* gate_act,
                                     size_t gate_act_stride, const mlp::ConstTokens& x,
                                     const mlp::Tokens& y, const mlp::ForwardOptions& options,
                                     mlp::Workspace* workspace, FlashStepTimes* times = nullptr);

}  // namespace sparse_mlp::step

#endif  // SPARSE_MLP_STEP_FLASH_STEP_H_
