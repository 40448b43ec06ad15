// FlashModelCache: a model's MLP layers served from a bundle file on an SSD
// (store/bundle_format.h) under a DRAM budget, loading only the neurons that
// enter.
#ifndef SPARSE_MLP_FLASH_FLASH_CACHE_H_
#define SPARSE_MLP_FLASH_FLASH_CACHE_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "flash/residency.h"
#include "memory/aligned_buffer.h"
#include "store/bundle_reader.h"

namespace sparse_mlp::flash {

struct FlashCacheOptions {
  size_t budget_bytes = 0;  // DRAM for everything the cache holds
  size_t window = 1;        // tokens a neuron stays resident after its last activity
  size_t chunk_neurons = 64;  // entering neurons computed per landed chunk
  size_t max_tokens = 32;   // tokens per step the scratch is sized for (more allocate)
  // Readers, each with its own I/O thread and queue depth; layer l's loads
  // go to lane l % io_lanes, so one layer's reads can drain while the next
  // layer's (prefetched) fill the device. 1 .. 8 (the default 1: see
  // docs/performance.md for what a second lane measured).
  size_t io_lanes = 1;
  store::ReaderOptions reader;  // per lane: engine, queue depth, checksums, O_DIRECT
};

// Per layer, since Open.
struct FlashLayerStats {
  uint64_t steps = 0;
  uint64_t hits = 0;       // mask neurons already resident
  uint64_t loads = 0;      // neurons read from the file
  uint64_t evictions = 0;  // left to make room
  uint64_t expirations = 0;  // left the window
  uint64_t failed_loads = 0;
  // Steps whose plan took the slot of a guessed neuron still being read,
  // so their reads waited for the guess's (write after write).
  uint64_t guess_waits = 0;
  size_t resident = 0;     // now
  size_t capacity = 0;     // slots
};

struct FlashFootprint {
  size_t budget_bytes = 0;
  size_t slot_bytes = 0;         // all layers' slots (allocated; touched as loaded)
  size_t resident_bytes = 0;     // slots holding a neuron now
  size_t reader_bytes = 0;       // staging and checksum table
  size_t bookkeeping_bytes = 0;  // planners, requests, scratch
  size_t total_bytes() const { return slot_bytes + reader_bytes + bookkeeping_bytes; }
};

// One layer's step as the compute sees it: the slots ready now, and those
// to wait for chunk by chunk (WaitChunk): the mask's neurons a guess loaded
// (PrefetchGuess; their reads may still be in flight), then the entering
// neurons (a Prefetch's plan: its entering neurons). Which slot is in
// which list depends only on the calls made, never on when reads land.
struct FlashStepPlan {
  absl::Span<const uint32_t> hit_slots;       // ascending
  absl::Span<const uint32_t> entering_slots;  // chunk j = [j c, (j + 1) c)
  size_t chunk_neurons = 0;
  size_t chunks() const {
    return (entering_slots.size() + chunk_neurons - 1) / chunk_neurons;
  }
};

// FlashModelCache: a model's MLP layers served from a bundle file
// (store/bundle_format.h) under a DRAM budget, loading only the neurons that
// enter. The flash tier: the model's weights live on an SSD; DRAM holds a
// fixed number of slots per layer, each one neuron's bundle (gate row, up
// row, down column: the fused packed layout, [slot][3H]), filled by O_DIRECT
// reads straight from the file, so nothing else of the file is resident (no
// mapping, no page cache).
//
// Exactness: a slot holds exactly its neuron's bundle or is free. A read
// that fails (I/O error, short read, checksum) fails that step with a Status
// naming layer, neuron and offset; the neurons whose loads failed leave their
// slots, every other slot stays valid, and the next step reloads what it
// needs. A guessed read that fails is not an error: the step that selects
// the neuron reads it again (synchronously, a fault path), and fails only
// if that read fails too. Results depend only on the masks (and guesses):
// the plan is deterministic and the compute order is fixed (hits, then
// chunks in order), whatever order the reads complete in.
//
// Budget: budget_bytes covers the slots, the reader's staging and checksum
// table, the bookkeeping and the step's scratch; the slots get what remains,
// split evenly over the layers. footprint() states each part. A mask larger
// than a layer's slots is refused with InvalidArgument naming both sizes.
//
// Thread-compatible: one thread steps a FlashModelCache (its I/O threads are
// internal). Allocation: at Open; none per step (errors allocate their
// messages). Errors: absl::Status as store/ and the planner give them.
class FlashModelCache {
 public:
  // Opens `path` with options.reader and sizes the slots from the budget.
  // Errors: the reader's (file and argument errors); InvalidArgument for a
  // window of 0, a chunk of 0 neurons, or a budget below what one slot per
  // layer needs (naming both sizes).
  static absl::StatusOr<std::unique_ptr<FlashModelCache>> Open(const std::string& path,
                                                               const FlashCacheOptions& options);
  // The same, each lane's reader reading through the engine `make_engine`
  // builds (store/io_engine.h; e.g. an engine that fails on demand).
  static absl::StatusOr<std::unique_ptr<FlashModelCache>> Open(
      const std::string& path, const FlashCacheOptions& options,
      const store::IoEngineMaker& make_engine);
  ~FlashModelCache();
  FlashModelCache(const FlashModelCache&) = delete;
  FlashModelCache& operator=(const FlashModelCache&) = delete;

  const store::BundleLayout& layout() const { return layout_; }
  size_t num_layers() const { return layout_.shape().layers; }
  size_t capacity() const { return capacity_; }  // slots per layer
  size_t window() const { return options_.window; }
  // Slot s of layer l starts at slots(l) + s x slot_stride(): gate at 0
  // (gated files), up at layout().up_offset(), down at down_offset().
  const uint8_t* slots(size_t layer) const {
    return pool_.data() + layer * capacity_ * slot_stride_;
  }
  size_t slot_stride() const { return slot_stride_; }

  // Plans layer `layer` for `mask` (sorted neuron indices) and starts the
  // entering neurons' reads. A Prefetch of the same mask is taken as this
  // step's plan; over a PrefetchGuess whose reads are in flight it plans at
  // once (the guessed neurons it selects are waited for per chunk, the
  // misses join the reader's queue behind the guess); otherwise it waits
  // for the layer's earlier reads first. OutOfRange for a bad layer; the
  // planner's InvalidArgument (mask too large for the slots, bad indices):
  // nothing changed then. FailedPrecondition while another step of this
  // layer is open.
  absl::Status BeginStep(size_t layer, absl::Span<const uint32_t> mask, FlashStepPlan* plan);
  // Blocks until chunk j of the open step's waited slots landed (reading
  // again, here, a guessed neuron whose read failed); its first read error,
  // if any. OutOfRange for a chunk the open step does not have.
  absl::Status WaitChunk(size_t layer, size_t chunk);
  // Ends the open step: waits for its reads, frees the slots of failed
  // loads, returns the first error (OK when every bundle landed).
  absl::Status FinishStep(size_t layer);

  // Plans `layer` for `mask` now and starts the reads; returns at once.
  // Errors as BeginStep. A later BeginStep with the same mask reuses this
  // plan; with another mask it waits for these reads and plans again (the
  // prefetch then counts as a token of the window).
  absl::Status Prefetch(size_t layer, absl::Span<const uint32_t> mask);

  // A guess of `layer`'s next mask (speculative gate-first): starts the
  // reads of its neurons that are not resident, as Prefetch does, but the
  // guess is not a token of the window: its neurons are kept as the latest
  // token's are, it evicts only neurons older than that token, and what
  // does not fit is not fetched (flash/residency.h's PlanGuess). The next
  // BeginStep plans its own mask (a new token) without waiting for these
  // reads. Waits first for the layer's earlier reads. Errors as Prefetch's.
  // `rank` (optional): the guess's neurons most likely first, which enter
  // first when not all fit.
  absl::Status PrefetchGuess(size_t layer, absl::Span<const uint32_t> mask,
                             absl::Span<const uint32_t> rank = {});

  // Pins `neurons` of `layer` (sorted; replacing earlier pins): once loaded
  // they stay resident whatever the window (flash/residency.h's Pin: for
  // the most often active neurons of a calibration trace). Waits for the
  // layer's reads. Errors: OutOfRange / FailedPrecondition as Prefetch's;
  // the planner's InvalidArgument (nothing changed).
  absl::Status Pin(size_t layer, absl::Span<const uint32_t> neurons);

  // Blocks until `layer`'s reads in flight (a Prefetch's) have landed or
  // failed (a later BeginStep reads failed ones again if needed). OutOfRange
  // for a bad layer. For a caller that accounts the wait as a stall.
  absl::Status WaitReads(size_t layer);

  // Reads every resident slot's bundle again (a separate buffered reader)
  // and compares: DataLoss naming the first slot that differs.
  absl::Status Verify(size_t layer) const;

  FlashLayerStats layer_stats(size_t layer) const;
  store::ReaderStats io_stats() const;
  FlashFootprint footprint() const;
  // The resident neurons of `layer`, ascending.
  std::vector<uint32_t> resident_neurons(size_t layer) const;
  // Slot -> neuron of `layer` (capacity() entries, kNoSlot for a free
  // slot), for the step that reads the slots: valid from BeginStep to
  // FinishStep of that layer (the planner is changed only by those calls).
  absl::Span<const uint32_t> slot_neurons(size_t layer) const;
  // Scratch of max(T, options.max_tokens) x H floats for the step's output
  // (step/flash_step.h); allocates only for more tokens than ever before.
  absl::StatusOr<float*> Scratch(size_t tokens);

 private:
  struct Layer;
  FlashModelCache(std::string path, store::BundleLayout layout, FlashCacheOptions options);
  // A job whose reads are in a lane's batch: requests [base, base +
  // count) of the reader's batch are job `job` of layer `layer`.
  struct ActiveJob {
    size_t layer = 0, job = 0, base = 0, count = 0;
  };
  struct Job;
  // A reader and the thread that drives it, with its queue of layer jobs.
  struct Lane {
    std::unique_ptr<store::BundleReader> reader;
    std::vector<size_t> queue;  // ring of queued jobs (2 x layer + job)
    size_t head = 0, size = 0;
    std::condition_variable work;
    store::ReaderStats stats;  // copied from the reader after each poll
    std::thread thread;
    // The I/O thread's own (no lock): the jobs in the reader's batch, and
    // the most requests a batch holds before it must drain (the reader's
    // reserved arrays: two layers' slots).
    std::vector<ActiveJob> active;
    size_t batch_limit = 0;
  };
  // A Prefetch (guess false) or a PrefetchGuess of a checked layer.
  absl::Status PlanAhead(size_t layer, absl::Span<const uint32_t> mask, bool guess,
                         absl::Span<const uint32_t> rank = {});
  absl::Status PlanError(size_t layer, const absl::Status& planner_error) const;
  // OutOfRange for a bad layer; FailedPrecondition if no_step and a step of
  // it is open.
  absl::Status CheckLayer(size_t layer, bool no_step = false) const;
  // Starts job `which` of `layer`: reads of `neurons` into `slots`.
  void Issue(Layer& l, size_t layer, size_t which, absl::Span<const uint32_t> neurons,
             absl::Span<const uint32_t> slots);
  // Request k of job `which` was reported (under mu_).
  void Landed(Layer& l, size_t which, size_t k, const absl::Status& status);
  // Reads `slot`'s neuron again, synchronously (a guessed read that failed).
  absl::Status Repair(size_t layer, uint32_t slot);
  void WaitIdle(Layer& l, std::unique_lock<std::mutex>& lock);
  // The ahead job no longer stands for a step's plan (its slots' requests
  // forgotten).
  void ForgetAhead(Layer& l);
  // Unloads job `which`'s failed neurons still in their slots.
  void ApplyFailures(Layer& l, size_t which);
  void IoLoop(Lane& lane);

  // Theory of operation. Per layer a ResidencyPlanner (flash/residency.h)
  // decides, for each token's mask, which neurons are hits, which enter and
  // which slots they take (sliding window, least recently active evicted
  // first). BeginStep plans and hands the entering neurons' reads to the
  // cache's I/O threads (one per lane, each driving its own
  // store::BundleReader: io_uring or a pread pool). A lane's thread appends
  // each job to the batch in flight (BundleReader::Append) rather than
  // waiting for it to drain, so the device queue stays full from one
  // layer's reads into the next (up to two layers' slots per batch; beyond
  // that the batch drains first); its threads mark fixed chunks
  // of entering neurons landed as their bundles arrive; the caller computes
  // on the hit slots meanwhile and on each chunk once it landed
  // (step/flash_step.h does this). FinishStep waits for the
  // rest. Prefetch starts a later layer's loads early (a predictor that looks
  // ahead) without computing; the step with the same mask then finds its
  // plan made and its reads in flight or done. A layer has two jobs: the
  // ahead job (a Prefetch's or a guess's reads) and the step's; per slot
  // the cache knows whether a read is in flight and which of the open
  // step's chunks waits for it, so a step can plan over a guess in flight
  // (a slot the plan takes from a guessed neuron still being read makes the
  // step's reads wait for the guess: write after write).
  std::string path_;
  store::BundleLayout layout_;
  FlashCacheOptions options_;
  std::vector<std::unique_ptr<Lane>> lanes_;
  store::IoEngineMaker make_engine_;
  std::unique_ptr<store::BundleReader> repair_;  // the stepping thread's; opened on a failure
  size_t slot_stride_ = 0, capacity_ = 0;
  memory::AlignedBuffer pool_;
  std::vector<std::unique_ptr<Layer>> layers_;
  memory::AlignedBuffer scratch_;
  size_t bookkeeping_bytes_ = 0;

  mutable std::mutex mu_;                // guards the jobs, the lanes' queues and stats
  mutable std::condition_variable cv_;  // chunk / job completions
  bool stop_ = false;
};

}  // namespace sparse_mlp::flash

#endif  // SPARSE_MLP_FLASH_FLASH_CACHE_H_
