// ResidencyPlanner: which neurons of one layer stay resident in a fixed set
// of slots, which enter, which leave. Pure logic (no memory of weights, no
// I/O): the flash cache (flash/flash_cache.h) loads what it says.
//
// Policy (LLM in a Flash's sliding window under a budget):
//   - token t's mask must be resident for its step (a mask larger than the
//     slots is refused);
//   - a neuron stays resident while it was active in any of the last
//     `window` tokens (window 1: only the current mask stays), so a neuron
//     that flickers off and on within the window is not loaded again;
//   - when the slots cannot hold what the window keeps, the least recently
//     active neurons not in the current mask leave first (ties: neurons a
//     guess loaded stay longer, since their reads may still be in flight;
//     then the lower neuron index leaves first);
//   - entering neurons take the lowest free slots, in neuron order, so a plan
//     depends only on the mask sequence (never on timing).
// A load that fails is reported with Unload: the neuron's slot becomes free
// and the neuron not resident, so no slot ever stands for rows it does not
// hold.
//
// Thread-compatible. Allocation: at construction only (arrays of I and of
// the capacity). Plan: O(mask + C log C) for C slots.
#ifndef SPARSE_MLP_FLASH_RESIDENCY_H_
#define SPARSE_MLP_FLASH_RESIDENCY_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace sparse_mlp::flash {

// "No slot": a neuron that is not resident, a slot that holds no neuron.
inline constexpr uint32_t kNoSlot = 0xFFFFFFFFu;

// One token's plan. Spans point into the planner and stay valid until its
// next Plan.
struct ResidencyPlan {
  absl::Span<const uint32_t> hit_slots;         // mask neurons already resident, ascending slots
  // Mask neurons that the guesses since the previous token loaded
  // (PlanGuess's entering neurons), ascending slots; not in hit_slots. A
  // caller that reads a guess's neurons in the background waits for these.
  absl::Span<const uint32_t> guessed_hit_slots;
  absl::Span<const uint32_t> entering;          // mask neurons to load, ascending
  absl::Span<const uint32_t> entering_slots;    // their slots, ascending (entering[k] -> [k])
  size_t evicted = 0;                           // neurons that left to make room
  size_t expired = 0;                           // neurons that left the window
};

class ResidencyPlanner {
 public:
  // `neurons` per layer, `capacity` slots (1 .. neurons), window >= 1.
  ResidencyPlanner(size_t neurons, size_t capacity, size_t window);

  // Plans token `mask` (sorted, distinct neuron indices < neurons): expires
  // neurons outside the window, evicts as needed, assigns slots. The
  // entering neurons are resident from here on (their loads are the
  // caller's; Unload the ones that fail). InvalidArgument (nothing changed)
  // when the mask is larger than the capacity, or holds an index out of
  // range or out of order.
  absl::Status Plan(absl::Span<const uint32_t> mask, ResidencyPlan* plan);

  // Plans a guess of the next token's mask (speculative gate-first): not a
  // token of the window (nothing expires, the count stays); the guessed
  // neurons count as active in the latest token (kept like its neurons,
  // evicted before the next token's), and only neurons older than the
  // latest token make room: the guessed neurons that do not fit then are
  // left out (plan->entering holds those that load): a guess takes the
  // free slots and, of the older neurons' (least recently active first), at
  // most as many as the latest token let in (about what the next token
  // would evict anyway: wrong guesses cost their reads, not later misses).
  // `rank` (optional: the mask's neurons, most likely first) says which
  // enter when not all fit; without it the lower neurons do. The entering
  // neurons are the guess's until the next Plan (its guessed_hit_slots).
  // Errors as Plan's, and InvalidArgument for a rank that is not an order
  // of the mask.
  absl::Status PlanGuess(absl::Span<const uint32_t> mask, ResidencyPlan* plan,
                         absl::Span<const uint32_t> rank = {});

  // Pins `neurons` (sorted, distinct; replacing earlier pins): once
  // resident (loaded when a mask or guess first holds them) they never
  // expire or leave for room, so a mask must fit beside the pinned neurons
  // outside it (Plan refuses it otherwise, nothing changed). For a layer's
  // most often active neurons (a calibration trace's): bench:flash's
  // pinning rows compare this with the window alone. InvalidArgument for
  // bad indices or as many pins as slots.
  absl::Status Pin(absl::Span<const uint32_t> neurons);

  // A planned load failed: the neuron leaves its slot.
  void Unload(uint32_t neuron);

  size_t neurons() const { return slot_of_.size(); }
  size_t capacity() const { return neuron_of_.size(); }
  size_t window() const { return window_; }
  size_t resident() const { return resident_; }
  uint64_t tokens() const { return token_; }
  // The slot of `neuron`, or kNoSlot.
  uint32_t slot_of(uint32_t neuron) const { return slot_of_[neuron]; }
  // The neuron in `slot`, or kNoSlot.
  uint32_t neuron_of(uint32_t slot) const { return neuron_of_[slot]; }
  // Every slot's neuron (capacity entries; kNoSlot for a free slot).
  absl::Span<const uint32_t> slot_neurons() const { return neuron_of_; }

 private:
  void Free(uint32_t slot);
  // Plan and PlanGuess.
  absl::Status PlanImpl(absl::Span<const uint32_t> mask, bool guess,
                        absl::Span<const uint32_t> rank, ResidencyPlan* plan);

  size_t window_;
  size_t resident_ = 0;
  uint64_t token_ = 0;                 // tokens planned so far
  size_t last_entering_ = 0;           // neurons the latest token's plan let in
  std::vector<uint32_t> slot_of_;      // per neuron
  std::vector<uint32_t> neuron_of_;    // per slot
  std::vector<uint64_t> last_active_;  // per neuron: token + 1 of its last mask (0: never)
  std::vector<uint8_t> in_mask_;       // per neuron, scratch of Plan
  // Per neuron: 1 loaded by a guess since the last token and resident, 2
  // the same but left since (listed, so not listed twice), 0 neither.
  std::vector<uint8_t> guessed_;
  std::vector<uint32_t> guessed_list_;  // the neurons with guessed_ != 0
  std::vector<uint8_t> pinned_;         // per neuron
  size_t pinned_count_ = 0, pinned_resident_ = 0;
  // Plan's arrays, sized to the capacity.
  std::vector<uint32_t> hits_, guessed_hits_, entering_, entering_slots_, candidates_, free_;
};

}  // namespace sparse_mlp::flash

#endif  // SPARSE_MLP_FLASH_RESIDENCY_H_
