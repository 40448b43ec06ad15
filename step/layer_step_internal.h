// The layer step with the gate's activations given (internal to //mlp: the
// gate-first step of step/mask_step.h computes them while it selects).
#ifndef SPARSE_MLP_STEP_LAYER_STEP_INTERNAL_H_
#define SPARSE_MLP_STEP_LAYER_STEP_INTERNAL_H_

#include <cstddef>

#include "absl/status/status.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "mlp/mlp_forward.h"

namespace sparse_mlp::step::internal {

// LayerStep on a gate-less cache (up and down rows) where neuron j's
// coefficient for token t is gate_act[t x gate_act_stride + j] x
// <up_j, x_t> (no activation applied). gate_act covers all I neurons of
// x.tokens tokens. Errors and guarantees as LayerStep's, plus
// InvalidArgument for a cache holding gate rows.
absl::Status LayerStepGivenGate(cache::WeightCache* cache, const diff::NeuronMask& mask,
                                const float* gate_act, size_t gate_act_stride,
                                const mlp::ConstTokens& x, const mlp::Tokens& y,
                                const mlp::ForwardOptions& options, mlp::Workspace* workspace);

}  // namespace sparse_mlp::step::internal

#endif  // SPARSE_MLP_STEP_LAYER_STEP_INTERNAL_H_
