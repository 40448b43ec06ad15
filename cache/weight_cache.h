// WeightCache: the packed active weights of one gated MLP layer, updated
// differentially as the active-neuron mask changes.
//
// A gated MLP has gate[I, H] and up[I, H] (a row per neuron) and down[H, I]
// (a column per neuron; PyTorch nn.Linear layout). For a mask over the I
// neurons the cache holds, in slots 0..A-1, the active neurons' gate rows,
// up rows and down columns (stored as rows), so a sparse forward runs dense
// GEMV/GEMM on A x H matrices. Data flow of an update:
//
//   mask -> diff (diff/) -> plan (update_plan.h) -> gather (gather/) -> views
//
// Only neurons that enter or leave move: max(|added|, |removed|) row writes
// per matrix, all copies of an update in one parallel batch. When most of
// the set changes, the cache repacks instead (all rows in ascending neuron
// order; threshold: repack_fraction). Capacity grows as needed (amortized
// 1.5x, never dropping a neuron); Reserve() pre-sizes it so that the hot path
// never allocates. After every applied update the packed rows are exactly
// those of the applied mask, slot s holding neuron active_indices()[s].
//
// Tolerance (opt-in, default 0 = exact): an update that changes fewer than
// `tolerance` neurons is skipped; lag() then reports by how many neurons the
// cache differs from the last requested mask (always < tolerance), and the
// next update that is applied, or CatchUp(), makes it exact again.
//
// Sources and ownership. down is turned neuron-major once at construction
// (parallel blocked transpose, gather/transpose.h) unless the caller passes
// it neuron-major already. With SourceOwnership::kCopy (default) the cache
// copies gate, up and the neuron-major down into its own aligned storage and
// the caller's arrays may be freed after Create. That storage is fused per
// neuron ([gate row | up row | down row], one [I, 3H] array), so loading a
// neuron is one contiguous read instead of three short ones far apart
// (docs/design.md, "Fused sources"). With kBorrow it reads gate,
// up (and down, when given neuron-major) in place: those arrays must stay
// alive and unchanged for the cache's whole lifetime. memory_bytes() reports
// what the cache itself holds. Storage comes from the heap (huge-page
// advised) or, when options.arena is set, from that Arena, which must then
// outlive the cache.
//
// Views. gate(), up(), down_rows(), down_hidden_major() and
// gate_up_interleaved() point into the packed buffers without copying. They
// stay valid until the next non-const call (an update may rewrite rows in
// place, and growing the capacity moves the buffers). The seed API's
// concatenated [gate; up] ([2A, H]) is a zero-copy view only when asked for
// (options.concat_gate_up keeps a mirror of it, O(changed rows) per update
// while A stays the same, O(A x H) when A changes); otherwise
// CopyConcatenatedGateUp materializes it at O(A x H) per call. Callers free
// to choose should use PackedLayout::kInterleavedGateUp or kFusedRows, whose
// [A, 2H] view (gate row, then up row, per neuron) feeds one fused GEMM with
// no copy and no mirror.
// Views carry their strides (MatrixView::row_stride): contiguous with
// kSplit, strided by 2H / 3H in the other layouts.
//
// Errors: every failure returns an absl::Status naming the bad value, and the
// cache is unchanged after it (validation and allocation happen before any
// state changes).
//
// Thread-safety: thread-compatible. Const methods (views, accessors,
// Verify) may run concurrently with each other; Update*, Reserve, CatchUp
// and the setters need exclusive access. A mutating call made while another
// one runs on the same object is a caller bug, but it is detected (one
// atomic flag, no lock) and returns FailedPrecondition without touching the
// cache instead of corrupting it. (A const call racing a mutating one is
// not detected.) The copies inside one update use options.num_threads
// OpenMP threads, work split over the team the runtime actually starts
// (from the calling thread's OpenMP pool: an update after tens of
// milliseconds without any parallel region first wakes sleeping workers,
// ~100 us on the development VM; docs/performance.md).
#ifndef SPARSE_MLP_CACHE_WEIGHT_CACHE_H_
#define SPARSE_MLP_CACHE_WEIGHT_CACHE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "cache/dtype.h"
#include "cache/update_plan.h"
#include "diff/mask_diff.h"
#include "diff/neuron_mask.h"
#include "diff/score_select.h"
#include "gather/row_types.h"
#include "memory/aligned_buffer.h"
#include "memory/arena.h"
#include "platform/enum_names.h"
#include "platform/simd_level.h"

namespace sparse_mlp::gather {
struct RowPart;
struct RowGatherJob;
}  // namespace sparse_mlp::gather

namespace sparse_mlp::cache {

enum class PackedLayout {
  kSplit,              // gate [A, H], up [A, H], down [A, H]: three buffers
  kInterleavedGateUp,  // gate_up [A, 2H] (gate row | up row), down [A, H]
  // One [A, 3H] array, [gate row | up row | down row] per slot ([A, 2H]
  // up | down without a gate): views are strided (row stride 3H), and a
  // loaded neuron is one contiguous write, as it is one contiguous read of
  // the cache's fused sources (one piece per neuron for the copy kernel,
  // gather/row_gather.h): the fastest updates (docs/performance.md).
  kFusedRows,
};

inline constexpr EnumName<PackedLayout> kPackedLayoutNames[] = {
    {PackedLayout::kSplit, "split"},
    {PackedLayout::kInterleavedGateUp, "interleaved"},
    {PackedLayout::kFusedRows, "fused"},
};

// PackedLayoutName: "split", "interleaved", "fused"; ParsePackedLayout: the
// inverse (InvalidArgument naming the choices for any other name).
SPARSE_MLP_ENUM_NAME_FUNCTIONS(PackedLayout, kPackedLayoutNames, PackedLayoutName,
                               ParsePackedLayout, "layout")

enum class SourceOwnership { kCopy, kBorrow };

enum class DownLayout {
  kHiddenMajor,  // down is [H, I] (nn.Linear weight): transposed once
  kNeuronMajor,  // down is already [I, H]
};

struct WeightCacheOptions {
  // Repack when max(|added|, |removed|) >= repack_fraction x new A. A
  // repack writes all A rows where the differential plan writes max(|added|,
  // |removed|); its in-order copies are faster per byte but not enough to pay
  // for the extra rows (docs/design.md, "Repack threshold"), so by default
  // a repack happens only when every slot changes anyway.
  static constexpr double kDefaultRepackFraction = 1.0;

  size_t hidden_size = 0;        // H > 0
  size_t intermediate_size = 0;  // I > 0
  DType dtype = DType::kFloat32;
  bool has_gate = true;  // false: up and down only (OPT / ReLU-style MLPs)
  PackedLayout layout = PackedLayout::kSplit;
  SourceOwnership ownership = SourceOwnership::kCopy;
  DownLayout down_layout = DownLayout::kHiddenMajor;
  int num_threads = 1;   // [1, kMaxThreads] (platform/threads.h)
  // Instruction set of the diff, transpose and copy kernels (kBest: the
  // best this CPU runs; kScalar: the portable reference paths).
  SimdLevel simd = SimdLevel::kBest;
  size_t tolerance = 0;  // 0 = every update exact; > I: only CatchUp applies
  double repack_fraction = kDefaultRepackFraction;  // in (0, 1]; 1 = only full churn
  // Also keep the seed API's concatenated [gate; up] ([2A, H]: active gate
  // rows, then active up rows, in slot order) as a zero-copy view,
  // concatenated_gate_up(), maintained by every update: O(changed rows)
  // while A stays the same (a replaced neuron keeps its slot, so its gate
  // row s and up row A + s are rewritten in place), plus one O(A x H) move
  // of the up block when A changes. Costs 2 x capacity x H elements and the
  // gate and up rows written twice per load. Needs a gate.
  bool concat_gate_up = false;
  memory::Arena* arena = nullptr;  // not owned; must outlive the cache
  // Slots reserved by Create (capped at I) when at least the initial mask's
  // count; otherwise Create reserves that count plus a quarter.
  size_t initial_capacity = 0;
};

// Row-major weight arrays of options.dtype, contiguous. gate may be null
// when has_gate is false.
struct MlpWeights {
  const void* gate = nullptr;  // [I, H]
  const void* up = nullptr;    // [I, H]
  const void* down = nullptr;  // [H, I] or [I, H] per options.down_layout
};

// A strided matrix view: element (r, c) is at
// data + (r * row_stride + c * col_stride) * DTypeSize(dtype).
struct MatrixView {
  const void* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t row_stride = 0;  // in elements
  size_t col_stride = 1;  // in elements
  DType dtype = DType::kFloat32;
};

// What the last Update / CatchUp did.
struct UpdateStats {
  size_t changed_neurons = 0;  // |added| + |removed| against the applied mask
  size_t rows_loaded = 0;      // rows per matrix copied from the sources
  size_t rows_moved = 0;       // rows per matrix moved inside the cache
  size_t bytes_copied = 0;     // over all matrices
  bool repacked = false;
  bool skipped = false;  // below the tolerance
  bool grew = false;     // capacity was increased (allocation)
};

// An update's planned copies, for a caller that executes them itself while
// it reads the rows for its own use (the fused layer step of
// mlp/layer_step.h: each entering row is read once, computed on and stored
// into its slot). Part p is 0 gate, 1 up, 2 down (neuron-major rows of
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

// What all updates since Create did (sums of UpdateStats; Create's first
// packing does not count; every update call does, skipped or not,
// including those of UpdateMany and of the layer step, which goes through
// UpdateWith).
struct UpdateTotals {
  uint64_t updates = 0;
  uint64_t skipped = 0;          // below the tolerance
  uint64_t changed_neurons = 0;  // sum of |added| + |removed|
  uint64_t rows_loaded = 0;      // per matrix
  uint64_t rows_moved = 0;       // per matrix
  uint64_t bytes_copied = 0;     // over all matrices
  uint64_t repacks = 0;
  uint64_t growths = 0;
};

class WeightCache;

// One cache's part of WeightCache::UpdateMany: the cache and the mask it
// is to match (neither owned; both must outlive the call).
struct CacheUpdate {
  WeightCache* cache = nullptr;
  const diff::NeuronMask* mask = nullptr;
};

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

  // Makes the packed rows match `mask` (subject to the tolerance). O(I / 64)
  // for the diff plus O(changes x H) copying; no allocation unless the
  // capacity must grow. Errors: mask size != I (InvalidArgument), capacity
  // growth failing (ResourceExhausted), another mutating call running on
  // this cache (FailedPrecondition); the cache is unchanged after any.
  absl::Status Update(const diff::NeuronMask& mask);
  // The same, from the other mask forms of diff/neuron_mask.h (validated as
  // there: length, range, order).
  absl::Status UpdateFromBytes(absl::Span<const uint8_t> mask);
  absl::Status UpdateFromIndices(absl::Span<const uint32_t> sorted_indices);
  // The union of a [rows, I] byte matrix (a batch of tokens).
  absl::Status UpdateFromByteRows(absl::Span<const uint8_t> matrix, size_t rows);

  // Updates to the mask a predictor's scores select ([rows, I], float32 or
  // bfloat16; diff/score_select.h): each row's k highest scores (ties to
  // the lower index), or the scores above `threshold`, the union over the
  // rows. O(rows x I) to select, then as Update; no allocation. Errors:
  // those of the selection (shape, k > I, NaN), then those of Update.
  absl::Status UpdateTopK(const diff::ScoreMatrix& scores, size_t k);
  absl::Status UpdateThreshold(const diff::ScoreMatrix& scores, float threshold);

  // Update / UpdateFromByteRows that hand the planned copies to `execute`
  // instead of running them (see PlannedUpdate). `execute` runs exactly
  // once on success, after validation, the plan and any capacity growth;
  // with a skipped or empty update it sees no copies and the current set.
  // Errors are those of the plain calls, returned before `execute` runs,
  // with the cache unchanged. After success the cache is exactly as after
  // the plain call.
  absl::Status UpdateWith(const diff::NeuronMask& mask, PlanExecutor execute);
  absl::Status UpdateFromByteRowsWith(absl::Span<const uint8_t> matrix, size_t rows,
                                      PlanExecutor execute);

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
  MatrixView down_hidden_major() const;  // [H, A]: strides (1, H)
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

  size_t row_bytes() const { return options_.hidden_size * DTypeSize(options_.dtype); }

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
  // With concat_gate_up, after a plan from old_active to new_active slots:
  // moves the up block to row new_active and applies the plan's loads and
  // moves to the concatenation.
  void UpdateConcat(size_t old_active, size_t new_active);

  WeightCacheOptions options_;
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
  // With options_.concat_gate_up: [2 x capacity_, H], gate rows [0, A) and
  // up rows [A, 2A) for the current A.
  std::shared_ptr<memory::AlignedBuffer> concat_;
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
