// WeightCache: the packed active weights of one gated MLP layer, kept
// equal to the rows of an active-neuron mask and updated differentially as
// the mask changes (docs/design.md has the data flow: mask -> diff -> plan
// -> gather -> views).
#ifndef SPARSE_MLP_CACHE_WEIGHT_CACHE_H_
#define SPARSE_MLP_CACHE_WEIGHT_CACHE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/concat_mirror.h"
#include "cache/dtype.h"
#include "cache/mask_input.h"
#include "cache/planned_update.h"
#include "cache/update_plan.h"
#include "cache/weight_cache_options.h"
#include "diff/mask_diff.h"
#include "diff/neuron_mask.h"
#include "diff/score_select.h"
#include "memory/aligned_buffer.h"
#include "platform/simd_level.h"

namespace sparse_mlp::gather {
struct RowPart;
struct RowGatherJob;
}  // namespace sparse_mlp::gather

namespace sparse_mlp::cache {

class WeightCache;

// One cache's part of WeightCache::UpdateMany: the cache and the mask it
// is to match (neither owned; both must outlive the call).
struct CacheUpdate {
  WeightCache* cache = nullptr;
  const diff::NeuronMask* mask = nullptr;
};

// WeightCache holds, in slots 0..A-1, the gate rows, up rows and down
// columns (stored as rows) of the A neurons of an active mask over a gated
// MLP layer's I neurons, so that a sparse forward runs dense GEMV/GEMM on
// A x H matrices. After every applied update the packed rows are exactly
// those of the applied mask, slot s holding neuron active_indices()[s].
//
// Ownership and lifetime: see SourceOwnership for the weights; storage comes
// from the heap or options.arena. Views (gate(), up(), down_rows(),
// down_hidden_major(), gate_up_interleaved(), concatenated_gate_up()) point
// into the packed rows without copying and carry their strides (contiguous
// with kSplit, 2H / 3H apart in the other layouts); they stay valid until
// the next non-const call (an update may rewrite rows in place, and a
// growth moves the buffers). RetainStorage() keeps the buffers alive longer.
//
// Errors: every failure returns an absl::Status naming the bad value, and the
// cache is unchanged after it (validation and allocation happen before any
// state changes).
//
// Thread-safety: thread-compatible. Const methods may run concurrently with
// each other; Update*, Reserve, CatchUp and the setters need exclusive
// access. A mutating call made while another one runs on the same object is
// a caller bug, but it is detected (one atomic flag, no lock) and returns
// FailedPrecondition without touching the cache. (A const call racing a
// mutating one is not detected.) The copies inside one update use
// options.num_threads OpenMP threads from the calling thread's pool (a
// pool idle for tens of milliseconds first wakes its workers; see
// docs/performance.md).
class WeightCache {
 public:
  // Validates, copies / transposes the sources and packs initial_mask.
  // Errors (InvalidArgument unless noted): H or I zero or too large, a null
  // weight pointer (gate only when has_gate), initial_mask.size() != I,
  // num_threads outside [1, kMaxThreads], repack_fraction
  // outside (0, 1], kInterleavedGateUp
  // without a gate, byte sizes that overflow (OutOfRange), allocation
  // failure (ResourceExhausted).
  static absl::StatusOr<WeightCache> Create(const WeightCacheOptions& options,
                                            const MlpWeights& weights,
                                            const diff::NeuronMask& initial_mask);

  WeightCache(WeightCache&&) = default;
  WeightCache& operator=(WeightCache&&) = default;
  WeightCache(const WeightCache&) = delete;
  WeightCache& operator=(const WeightCache&) = delete;

  // Makes the packed rows match `mask` (subject to the tolerance), given in
  // any form of cache/mask_input.h: a NeuronMask, bytes, sorted indices, a
  // [rows, I] byte matrix (the union), or a predictor's scores with a top-k
  // or threshold rule. O(I / 64) for the diff (O(rows x I) to select from
  // scores) plus O(changes x H) copying; no allocation unless the capacity
  // must grow. Errors: a mask that does not describe I neurons (length,
  // range, order, shape, k > I, NaN; InvalidArgument), capacity growth
  // failing (ResourceExhausted), another mutating call running on this
  // cache (FailedPrecondition); the cache is unchanged after any.
  absl::Status Update(const MaskInput& mask);

  // Update that hands the planned copies to `execute` instead of running
  // them (see cache/planned_update.h). `execute` runs exactly once on
  // success, after validation, the plan and any capacity growth; with a
  // skipped or empty update it sees no copies and the current set. Errors
  // are those of Update, returned before `execute` runs, with the cache
  // unchanged. After success the cache is exactly as after Update.
  absl::Status UpdateWith(const MaskInput& mask, PlanExecutor execute);

  // The most caches one UpdateMany takes.
  static constexpr size_t kMaxBatchCaches = 128;

  // Updates several caches, each to its mask exactly as Update would
  // (tolerance included): the caches' diffs and plans shared out over
  // num_threads OpenMP threads (they are independent), then the copies of
  // all of them in one parallel batch at `simd`, bytes split evenly over
  // the team whatever each cache's share: one parallel region instead of
  // one per cache, and no thread idles on a cache with few changes. A
  // cache's own num_threads serves its diff and growth only when they run
  // outside the shared loop (one cache, or num_threads 1); inside it,
  // nested regions run on one thread unless the caller enabled nesting.
  // O(sum of the updates' costs); allocates only beyond 32 caches (and for
  // capacity growth). Errors, each returned before any cache's rows, maps
  // or masks change: num_threads outside [1, kMaxThreads], more than
  // kMaxBatchCaches updates, a null cache or mask, one cache named twice, a
  // mask size that is not its cache's I (InvalidArgument, naming the update
  // by position), a cache another call is mutating (FailedPrecondition), a
  // capacity growth failing (ResourceExhausted; other caches of the batch
  // may keep a larger capacity, nothing else changes).
  static absl::Status UpdateMany(absl::Span<const CacheUpdate> updates, int num_threads,
                                 SimdLevel simd = SimdLevel::kBest);

  // Applies the last requested mask exactly, ignoring the tolerance.
  absl::Status CatchUp();

  // Ensures capacity for `active` neurons. InvalidArgument when active > I;
  // ResourceExhausted on allocation failure (cache unchanged).
  absl::Status Reserve(size_t active);

  // InvalidArgument outside [1, kMaxThreads] (unchanged).
  absl::Status set_num_threads(int num_threads);
  // Fails only while another mutating call runs (FailedPrecondition).
  absl::Status set_tolerance(size_t tolerance);

  // Checks the cache against its sources: slots [0, A) and the neurons of
  // applied_mask() map one to one (active_indices() and its inverse agree),
  // and every slot's gate, up and down rows, as the views show them, equal
  // its neuron's rows in the sources the cache reads (its own copies with
  // kCopy; the caller's arrays with kBorrow; its transposed copy of a
  // hidden-major down). DataLoss naming the slot, neuron and matrix at the
  // first difference. For tests, and for callers who may have written
  // through a view (views point into the live packed rows; writing through
  // one changes the cache until the row is next loaded). O(A x H + I); no
  // allocation.
  absl::Status Verify() const;

  size_t num_active() const { return map_.slot_to_neuron.size(); }
  size_t capacity() const { return capacity_; }
  size_t hidden_size() const { return options_.hidden_size; }
  size_t intermediate_size() const { return options_.intermediate_size; }
  DType dtype() const { return options_.dtype; }
  // The rows' quantized format (WeightCacheOptions::quant), if any.
  const std::optional<quant::QuantFormat>& quant() const { return options_.quant; }
  bool has_gate() const { return options_.has_gate; }
  PackedLayout layout() const { return options_.layout; }
  int num_threads() const { return options_.num_threads; }
  size_t tolerance() const { return options_.tolerance; }

  // Slot -> neuron of the packed rows.
  absl::Span<const uint32_t> active_indices() const {
    return map_.slot_to_neuron;
  }
  // The mask the packed rows match, and the one last requested.
  const diff::NeuronMask& applied_mask() const { return applied_; }
  const diff::NeuronMask& requested_mask() const { return requested_; }
  // Neurons by which applied_mask() differs from requested_mask().
  size_t lag() const { return lag_; }
  const UpdateStats& last_update() const { return last_update_; }
  const UpdateTotals& totals() const { return totals_; }
  // Incremented by every update that rewrote rows or moved the buffers.
  uint64_t version() const { return version_; }

  // [A, H] views (see the header comment for their lifetime). gate() is an
  // empty view (null data, 0 rows) when has_gate() is false.
  MatrixView gate() const;
  MatrixView up() const;
  MatrixView down_rows() const;          // [A, H]: neuron-major down
  MatrixView down_hidden_major() const;  // [H, A]: strides (1, H); empty when quantized
  // [A, 2H] (gate row | up row per slot; row stride 2H, or 3H with
  // kFusedRows); FailedPrecondition with kSplit or without a gate.
  absl::StatusOr<MatrixView> gate_up_interleaved() const;

  // The [2A, H] concatenation kept with options.concat_gate_up: a view
  // into the cache (contiguous, row stride H), valid like the other views
  // until the next mutating call. An update that keeps A rewrites its rows
  // in place (a view taken before shows the new rows); one that changes A
  // moves the up block (take a new view). FailedPrecondition without the
  // option.
  absl::StatusOr<MatrixView> concatenated_gate_up() const;

  // Writes the seed API's [2A, H]: all active gate rows, then all active up
  // rows, in slot order. O(A x H) copy with num_threads() threads (split:
  // two contiguous copies; other layouts: two strided ones), no allocation.
  // FailedPrecondition without a gate;
  // InvalidArgument unless out.size() == 2 x A x H x element size.
  absl::Status CopyConcatenatedGateUp(absl::Span<uint8_t> out) const;

  // What a cache with `options` allocates for its rows, each region
  // rounded up to `alignment` (an Arena's): the packed buffers and kept
  // concatenation at `capacity` slots, and its own source copies (all
  // weights with kCopy, the transposed down with kBorrow and a
  // hidden-major down). For sizing a pool (cache/model_cache.h); O(1);
  // OutOfRange when a size overflows.
  struct AllocationBytes {
    size_t packed = 0;
    size_t sources = 0;
  };
  static absl::StatusOr<AllocationBytes> AllocationFor(const WeightCacheOptions& options,
                                                       size_t capacity, size_t alignment);

  // Bytes the cache holds: owned source copies, packed buffers (at
  // capacity), masks and index maps.
  size_t memory_bytes() const;
  // Of which the packed buffers (and the concatenation mirror), at capacity.
  size_t packed_bytes() const;

  // Shared ownership of the packed buffers the views point into right now.
  // For language bindings whose views may outlive the cache or a growth of
  // its capacity: while the returned pointer lives, those buffers stay
  // allocated (a growth then moves the cache to new buffers and the old ones
  // stop being updated). With an arena, the arena must outlive it too.
  std::shared_ptr<const void> RetainStorage() const;

 private:
  friend class WeightCacheTestPeer;  // tests/: holds the mutation flag

  // Set while a mutating call runs (see "Thread-safety" above).
  class MutationFlag {
   public:
    MutationFlag() = default;
    // Moving a cache is itself a mutation; a moved cache starts idle.
    MutationFlag(MutationFlag&&) noexcept {}
    MutationFlag& operator=(MutationFlag&&) noexcept { return *this; }
    bool TryAcquire() { return !busy_.exchange(true, std::memory_order_acquire); }
    void Release() { busy_.store(false, std::memory_order_release); }

   private:
    std::atomic<bool> busy_{false};
  };
  class MutationScope;

  WeightCache() = default;

  size_t row_bytes() const { return row_bytes_; }

  // The parts of a neuron's slot.
  enum Part { kGatePart = 0, kUpPart = 1, kDownPart = 2 };
  // The one statement of a packed layout, computed once in Create: bytes
  // per slot of each of up to three packed buffers (0: unused), and for
  // each part the buffer holding it and its byte offset in the slot.
  // Views, growth, loads and moves all derive from it.
  struct SlotLayout {
    size_t slot_bytes[3] = {0, 0, 0};
    int buffer[3] = {0, 0, 0};
    size_t offset[3] = {0, 0, 0};
  };
  static SlotLayout MakeSlotLayout(PackedLayout layout, bool has_gate, size_t row_bytes);
  bool HasPart(int part) const { return part != kGatePart || options_.has_gate; }
  // [A, H] rows of one part (row stride: its buffer's slot bytes).
  MatrixView PartView(Part part) const;
  // A view's row stride in bytes (quantized views count bytes already).
  size_t RowStrideBytes(const MatrixView& view) const;

  // Steps of Create, in order (validation comes first, in Create).
  absl::Status PrepareSources(const MlpWeights& weights);
  void ReserveScratch(const diff::NeuronMask& initial_mask);

  absl::StatusOr<memory::AlignedBuffer> Allocate(size_t bytes) const;
  absl::Status Grow(size_t min_capacity);
  // An update in three phases, so that UpdateMany can run the copies of
  // many caches between them. BeginApply diffs incoming_ (validated)
  // against the applied mask, decides whether to apply it and grows the
  // capacity (its only failure); PlanApply plans (map_ and plan_ change);
  // FinishApply, after the plan's copies ran, commits masks and stats.
  struct PendingUpdate {
    UpdateStats stats;
    bool apply = false;  // false: unchanged or below the tolerance
    size_t old_active = 0;
    size_t new_active = 0;
  };
  absl::Status BeginApply(bool respect_tolerance, PendingUpdate* pending);
  void PlanApply(const PendingUpdate& pending);
  void FinishApply(PendingUpdate pending);
  // Applies incoming_ (already validated); the copies through `execute`
  // when given, else ExecutePlan.
  absl::Status ApplyIncoming(bool respect_tolerance, const PlanExecutor* execute = nullptr);
  // The plan's copies as kPlanJobs gather jobs (loads, moves) over at most
  // kMaxPlanParts parts, written to parts[] and jobs[].
  static constexpr size_t kPlanJobs = 2;
  static constexpr size_t kMaxPlanParts = 6;
  static constexpr size_t kInlineBatchCaches = 32;
  void WritePlanJobs(gather::RowPart* parts, gather::RowGatherJob* jobs) const;
  static void RunPlanJobs(absl::Span<const gather::RowGatherJob> jobs, int num_threads,
                          SimdLevel simd);
  void ExecutePlan();
  PlannedUpdate MakePlannedUpdate() const;
  // The shared part of Update and UpdateWith: validates `mask` into
  // incoming_, then applies it.
  absl::Status UpdateFrom(const MaskInput& mask, const PlanExecutor* execute);

  // Theory of operation. An update diffs the incoming mask against the
  // applied one (diff/), plans the copies (cache/update_plan.h: only
  // neurons that enter or leave move, max(|added|, |removed|) row writes per
  // part, or a repack of all A rows in neuron order when
  // max(|added|, |removed|) >= repack_fraction x A), grows the capacity when
  // the set outgrows it (1.5x, amortized, capped at I; Reserve pre-sizes it
  // so the hot path never allocates), then runs every copy of the update in
  // one parallel gather batch (gather/row_gather.h). The three phases are
  // separate (BeginApply, PlanApply, FinishApply) so that UpdateMany can run
  // the copies of many caches in one batch between them.
  WeightCacheOptions options_;
  size_t row_bytes_ = 0;  // one row of one part: RowBytesFor(options_)
  SlotLayout slots_;
  // Sources, per part: neuron-major rows, src_stride_ bytes apart. With
  // kCopy the parts of one fused [I, 3H] (or [I, 2H] without gate) array
  // owned by the cache, in part order with no gaps (fused_sources_); with
  // kBorrow the caller's [I, H] arrays (down transposed into down_owned_
  // when given hidden-major).
  const uint8_t* src_[3] = {nullptr, nullptr, nullptr};
  size_t src_stride_[3] = {0, 0, 0};
  bool fused_sources_ = false;
  memory::AlignedBuffer fused_owned_, down_owned_;
  // The packed buffers (slots_.slot_bytes[b] x capacity_ bytes; empty when
  // unused), shared so that RetainStorage() can keep them alive past a
  // growth.
  std::shared_ptr<memory::AlignedBuffer> packed_[3];
  // With options_.concat_gate_up, the seed API's [gate; up] kept live
  // (cache/concat_mirror.h); empty otherwise.
  ConcatMirror concat_;
  size_t capacity_ = 0;

  SlotMap map_;
  diff::NeuronMask applied_, requested_, incoming_;
  diff::MaskDiff diff_;
  diff::ScoreSelector selector_;
  UpdatePlan plan_;
  std::vector<uint32_t> active_scratch_;
  size_t lag_ = 0;
  uint64_t version_ = 0;
  UpdateStats last_update_;
  UpdateTotals totals_;
  MutationFlag mutation_;
};

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_WEIGHT_CACHE_H_
