// PlannedUpdate: a WeightCache update's copies, handed to a caller that
// executes them itself while it reads the rows for its own use (the fused
// layer step of step/layer_step.h: each entering row is read once, computed
// on and stored into its slot). See WeightCache::UpdateWith.
#ifndef SPARSE_MLP_CACHE_PLANNED_UPDATE_H_
#define SPARSE_MLP_CACHE_PLANNED_UPDATE_H_

#include <cstddef>
#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/types/span.h"
#include "gather/row_types.h"

namespace sparse_mlp::cache {

// An update's planned copies. Part p is 0 gate, 1 up, 2 down (neuron-major rows of
// row_bytes): row r of the sources is at source[p] + r x source_stride[p],
// slot s of the packed rows at packed[p] + s x packed_stride[p]; the gate
// pointers are null without a gate.
struct PlannedUpdate {
  size_t num_active = 0;  // slots [0, num_active) hold the new set
  size_t row_bytes = 0;
  const uint8_t* source[3] = {nullptr, nullptr, nullptr};
  size_t source_stride[3] = {0, 0, 0};
  uint8_t* packed[3] = {nullptr, nullptr, nullptr};
  size_t packed_stride[3] = {0, 0, 0};
  // (neuron, slot) rows to copy from the sources and (old slot, slot) rows
  // to copy inside the packed buffers, each in ascending slot order. Every
  // other slot below num_active keeps its rows. No copy reads a row another
  // one writes (moves read slots >= num_active), so all may run at once.
  absl::Span<const gather::RowCopy> loads;
  absl::Span<const gather::RowCopy> moves;
  // The new set's slot -> neuron map (num_active entries).
  absl::Span<const uint32_t> slot_to_neuron;
};

// Must perform every copy of the plan (all parts), e.g. with streaming
// stores followed by FinishStreamingStores before returning; may read any
// row of the plan. It must not call the cache.
using PlanExecutor = absl::FunctionRef<void(const PlannedUpdate&)>;

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_PLANNED_UPDATE_H_
