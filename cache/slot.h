// Slots: the positions of a cache's packed rows. Shared by the update plan
// (cache/update_plan.h) and the cache that executes it.
#ifndef SPARSE_MLP_CACHE_SLOT_H_
#define SPARSE_MLP_CACHE_SLOT_H_

#include <cstdint>

namespace sparse_mlp::cache {

// "No slot": a neuron that is not resident, a slot that holds no neuron.
inline constexpr uint32_t kNoSlot = 0xFFFFFFFFu;

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_SLOT_H_
