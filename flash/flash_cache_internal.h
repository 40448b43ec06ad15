// FlashModelCache's per-layer state (flash/flash_cache.h), shared by its
// sources; not part of the public header.
#ifndef SPARSE_MLP_FLASH_FLASH_CACHE_INTERNAL_H_
#define SPARSE_MLP_FLASH_FLASH_CACHE_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "flash/flash_cache.h"
#include "flash/residency.h"
#include "store/bundle_reader.h"

namespace sparse_mlp::flash {

inline constexpr size_t kAhead = 0, kStep = 1;  // a layer's jobs

// One batch of a layer's reads: set up by the stepping thread while !busy,
// reported on by the I/O thread while busy (failed, left, busy change
// under mu_).
struct FlashModelCache::Job {
  explicit Job(size_t capacity) {
    requests.reserve(capacity);
    neurons.reserve(capacity);
    slots.reserve(capacity);
    failed.reserve(capacity);
  }
  std::vector<store::BundleRequest> requests;
  std::vector<uint32_t> neurons, slots;  // request k's neuron and slot
  std::vector<uint8_t> failed;           // request k failed; applied (the neuron unloaded) later
  size_t left = 0;                       // requests not reported yet
  bool busy = false;
};

struct FlashModelCache::Layer {
  Layer(size_t neurons, size_t capacity, size_t window, size_t chunk)
      : planner(neurons, capacity, window),
        jobs{Job(capacity), Job(capacity)},
        pending(capacity, 0),
        waiter(capacity, kNoSlot),
        reread(capacity, 0),
        ahead_request(capacity, kNoSlot) {
    waited.reserve(capacity);
    repair_failed.reserve(capacity);
    chunk_left.reserve(capacity / chunk + 1);
    chunk_status.reserve(capacity / chunk + 1);
    prefetch_mask.reserve(neurons);
    stats.capacity = capacity;
  }
  bool busy() const { return jobs[kAhead].busy || jobs[kStep].busy; }

  ResidencyPlanner planner;
  ResidencyPlan plan;  // the latest plan (a Prefetch's, kept for its step)
  FlashLayerStats stats;
  // kAhead: a Prefetch's or a guess's reads; kStep: the open step's misses.
  Job jobs[2];
  // Per slot, under mu_: a read into it is in flight; the open step's chunk
  // that waits for it (or kNoSlot); an ahead read the step needs failed, so
  // the step reads it again (WaitChunk).
  std::vector<uint8_t> pending;
  std::vector<uint32_t> waiter;
  std::vector<uint8_t> reread;
  // Slot -> request of the ahead job not yet answered by a step (kNoSlot:
  // none); the stepping thread's.
  std::vector<uint32_t> ahead_request;
  bool ahead_live = false;              // the ahead job's plan waits for its step
  bool ahead_guess = false;             // ... and it was a guess
  std::vector<uint32_t> prefetch_mask;  // a live Prefetch's mask
  // The open step: the slots it waits for (the guessed hits, then the
  // entering neurons), chunk by chunk (chunk_left, chunk_status under mu_).
  std::vector<uint32_t> waited;
  std::vector<uint32_t> chunk_left;
  std::vector<absl::Status> chunk_status;
  std::vector<uint32_t> repair_failed;  // neurons whose re-read failed
  absl::Status step_status;             // the step's first read error
  bool step_open = false;
};

}  // namespace sparse_mlp::flash

#endif  // SPARSE_MLP_FLASH_FLASH_CACHE_INTERNAL_H_
