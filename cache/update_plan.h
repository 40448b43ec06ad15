// Planning a cache update: which rows move where (pure logic, no copying).
//
// The cache keeps the active neurons in slots 0..A-1 of its packed buffers
// (any order: the MLP output does not depend on it). Given the diff from the
// applied mask to the new one, PlanDifferentialUpdate rewrites the
// slot <-> neuron maps and lists the row copies that make the buffers match:
//   - loads: (neuron, slot) rows copied from the source weights;
//   - moves: (old slot, new slot) rows copied inside the packed buffers.
// It writes max(|added|, |removed|) rows per matrix, the lower bound for
// keeping the active rows contiguous:
//   - |added| >= |removed|: each removed neuron's slot takes an added neuron
//     (paired replacement), the other added neurons are appended;
//   - |added| < |removed|: the new count is A' = A - |removed| + |added|.
//     Removed slots below A' are holes to fill: first with the added
//     neurons, then with live neurons moved down from slots >= A'. The
//     loads never target a slot >= A', so no move reads a slot that a load
//     writes, and all copies of a plan may run at once, in any order.
// Slots are filled in ascending order with the neurons in ascending order,
// so both the source rows and the destination slots of the copies advance
// through memory (faster than pairing in removal order; docs/performance.md):
// `loads` and `moves` are each in ascending destination-slot order, which
// consumers that walk slots in order (step/layer_step.h) rely on.
// PlanRepack instead lays every active neuron out afresh, in ascending
// order, all loads (used when most of the set changes anyway).
//
// Preconditions (checked by the cache, asserted here in debug builds): the
// diff is between the mask the maps describe and a mask of the same size.
// Thread-compatible. No allocation when the vectors have capacity: the
// cache reserves I entries for each and sizes `freed` for I slots. O(c + A/64)
// for c changed neurons and A active ones (the freed slots are ordered by a
// bitset over the slots, not by sorting; PlanRepack: O(A')).
#ifndef SPARSE_MLP_CACHE_UPDATE_PLAN_H_
#define SPARSE_MLP_CACHE_UPDATE_PLAN_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "cache/slot.h"
#include "gather/row_types.h"

namespace sparse_mlp::cache {

// Which active neuron sits in which slot, and back.
struct SlotMap {
  std::vector<uint32_t> slot_to_neuron;  // size A
  std::vector<uint32_t> neuron_to_slot;  // size I, kNoSlot when inactive
};

struct UpdatePlan {
  std::vector<gather::RowCopy> loads;  // src_row = neuron, dst_row = slot
  std::vector<gather::RowCopy> moves;  // src_row = old slot, dst_row = slot
  bool repack = false;
  // Scratch: one bit per slot freed by the plan being made; all zero
  // between plans (every set bit is taken and cleared).
  std::vector<uint64_t> freed;
  void Clear() {
    loads.clear();
    moves.clear();
    repack = false;
  }
};

// Applies added/removed (ascending, from diff/) to *map and fills *plan.
void PlanDifferentialUpdate(absl::Span<const uint32_t> added,
                            absl::Span<const uint32_t> removed, SlotMap* map,
                            UpdatePlan* plan);

// Lays `active` (ascending) out in slots 0..|active|-1 and fills *plan with
// one load per neuron.
void PlanRepack(absl::Span<const uint32_t> active, SlotMap* map,
                UpdatePlan* plan);

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_UPDATE_PLAN_H_
