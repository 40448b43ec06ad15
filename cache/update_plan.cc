#include "cache/update_plan.h"

#include <algorithm>
#include <cassert>
#include <cstddef>

namespace sparse_mlp::cache {

void PlanDifferentialUpdate(absl::Span<const uint32_t> added,
                            absl::Span<const uint32_t> removed, SlotMap* map,
                            UpdatePlan* plan) {
  plan->Clear();
  std::vector<uint32_t>& slots = map->slot_to_neuron;
  std::vector<uint32_t>& where = map->neuron_to_slot;
  const size_t old_active = slots.size();

  std::vector<uint32_t>& holes = plan->holes;
  if (added.size() >= removed.size()) {
    // Paired replacement, then append. The freed slots are taken in
    // ascending order, so that sources (added is ascending) and
    // destinations both advance through memory.
    for (uint32_t neuron : removed) {
      assert(where[neuron] != kNoSlot);
      holes.push_back(where[neuron]);
      where[neuron] = kNoSlot;
    }
    std::sort(holes.begin(), holes.end());
    for (size_t k = 0; k < holes.size(); ++k) {
      slots[holes[k]] = added[k];
      where[added[k]] = holes[k];
      plan->loads.push_back({added[k], holes[k]});
    }
    for (size_t k = removed.size(); k < added.size(); ++k) {
      const uint32_t slot = static_cast<uint32_t>(slots.size());
      assert(where[added[k]] == kNoSlot);
      slots.push_back(added[k]);
      where[added[k]] = slot;
      plan->loads.push_back({added[k], slot});
    }
    return;
  }

  // Shrinking: holes below the new count are filled by the added neurons,
  // then by live neurons from the tail. All removals are marked before any
  // hole is filled, so the tail scan can tell live slots from vacated ones.
  const size_t new_active = old_active - removed.size() + added.size();
  for (uint32_t neuron : removed) {
    const uint32_t slot = where[neuron];
    assert(slot != kNoSlot);
    where[neuron] = kNoSlot;
    slots[slot] = kNoSlot;
    if (slot < new_active) holes.push_back(slot);
  }
  std::sort(holes.begin(), holes.end());
  size_t next_added = 0;
  size_t tail = new_active;
  for (uint32_t hole : holes) {
    if (next_added < added.size()) {
      const uint32_t neuron = added[next_added++];
      slots[hole] = neuron;
      where[neuron] = hole;
      plan->loads.push_back({neuron, hole});
      continue;
    }
    while (slots[tail] == kNoSlot) ++tail;
    const uint32_t neuron = slots[tail];
    slots[hole] = neuron;
    where[neuron] = hole;
    plan->moves.push_back({static_cast<uint32_t>(tail), hole});
    ++tail;
  }
  assert(next_added == added.size());
  slots.resize(new_active);
}

void PlanRepack(absl::Span<const uint32_t> active, SlotMap* map,
                UpdatePlan* plan) {
  plan->Clear();
  plan->repack = true;
  for (uint32_t neuron : map->slot_to_neuron) {
    map->neuron_to_slot[neuron] = kNoSlot;
  }
  map->slot_to_neuron.assign(active.begin(), active.end());
  for (size_t slot = 0; slot < active.size(); ++slot) {
    map->neuron_to_slot[active[slot]] = static_cast<uint32_t>(slot);
    plan->loads.push_back({active[slot], static_cast<uint32_t>(slot)});
  }
}

}  // namespace sparse_mlp::cache
