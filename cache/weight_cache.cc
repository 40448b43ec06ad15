#include "cache/weight_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "gather/parallel_copy.h"
#include "gather/row_gather.h"
#include "gather/transpose.h"
#include "memory/size_math.h"
#include "platform/threads.h"

namespace sparse_mlp::cache {
namespace {

absl::Status ValidateOptions(const WeightCacheOptions& o, const MlpWeights& w,
                             const diff::NeuronMask& initial_mask) {
  if (o.hidden_size == 0) {
    return absl::InvalidArgumentError("hidden_size must be positive, got 0");
  }
  if (o.intermediate_size == 0) {
    return absl::InvalidArgumentError(
        "intermediate_size must be positive, got 0");
  }
  if (o.intermediate_size > diff::NeuronMask::kMaxNeurons) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "intermediate_size %u exceeds the maximum of %u neurons",
        o.intermediate_size, diff::NeuronMask::kMaxNeurons));
  }
  if (o.dtype != DType::kFloat32 && o.dtype != DType::kBFloat16 &&
      o.dtype != DType::kFloat16) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "unsupported element type %d", static_cast<int>(o.dtype)));
  }
  if (o.has_gate && w.gate == nullptr) {
    return absl::InvalidArgumentError("gate weight is null but has_gate is set");
  }
  if (w.up == nullptr) return absl::InvalidArgumentError("up weight is null");
  if (w.down == nullptr) return absl::InvalidArgumentError("down weight is null");
  if (o.concat_gate_up && !o.has_gate) {
    return absl::InvalidArgumentError("concat_gate_up needs a gate projection");
  }
  if (!o.has_gate && o.layout == PackedLayout::kInterleavedGateUp) {
    return absl::InvalidArgumentError(
        "the interleaved gate/up layout needs a gate projection");
  }
  if (absl::Status s = ValidateNumThreads(o.num_threads); !s.ok()) return s;

  if (!(o.repack_fraction > 0.0 && o.repack_fraction <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "repack_fraction must be in (0, 1], got %g", o.repack_fraction));
  }
  if (initial_mask.size() != o.intermediate_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "initial mask has %u neurons, intermediate_size is %u",
        initial_mask.size(), o.intermediate_size));
  }
  return absl::OkStatus();
}

absl::Status MaskSizeError(size_t got, size_t expected) {
  return absl::InvalidArgumentError(absl::StrFormat(
      "mask has %u neurons, the cache has intermediate_size %u", got, expected));
}

// The first row of one part of a packed buffer; null while the buffer is
// unallocated (capacity 0: no offset may be applied to a null pointer).
uint8_t* PartData(memory::AlignedBuffer& buffer, size_t offset) {
  return buffer.data() == nullptr ? nullptr : buffer.data() + offset;
}

absl::Status ConcurrentMutationError(const char* method) {
  return absl::FailedPreconditionError(absl::StrFormat(
      "WeightCache::%s called while another call is mutating the same cache; "
      "WeightCache is thread-compatible: serialize mutating calls on one object",
      method));
}

}  // namespace

static_assert(WeightCache::kMaxBatchCaches * 2 <= gather::kMaxBatchJobs,
              "UpdateMany's jobs must fit one gather batch");

// Holds the mutation flag for one mutating call, if no other call holds it.
class WeightCache::MutationScope {
 public:
  explicit MutationScope(MutationFlag& flag) : flag_(flag), held_(flag.TryAcquire()) {}
  MutationScope(const MutationScope&) = delete;
  MutationScope& operator=(const MutationScope&) = delete;
  ~MutationScope() {
    if (held_) flag_.Release();
  }
  bool held() const { return held_; }

 private:
  MutationFlag& flag_;
  const bool held_;
};

absl::StatusOr<memory::AlignedBuffer> WeightCache::Allocate(size_t bytes) const {
  if (options_.arena != nullptr) return options_.arena->Allocate(bytes);
  return memory::AlignedBuffer::Allocate(bytes, memory::kCacheLineBytes,
                                         memory::HugePageAdvice::kHugePages);
}

WeightCache::SlotLayout WeightCache::MakeSlotLayout(PackedLayout layout, bool has_gate,
                                                    size_t rb) {
  SlotLayout l;
  switch (layout) {
    case PackedLayout::kSplit:  // one buffer per part
      l.slot_bytes[0] = has_gate ? rb : 0;
      l.slot_bytes[1] = l.slot_bytes[2] = rb;
      l.buffer[kGatePart] = 0;
      l.buffer[kUpPart] = 1;
      l.buffer[kDownPart] = 2;
      break;
    case PackedLayout::kInterleavedGateUp:  // [gate | up], [down]
      l.slot_bytes[0] = 2 * rb;
      l.slot_bytes[2] = rb;
      l.buffer[kDownPart] = 2;
      l.offset[kUpPart] = rb;
      break;
    case PackedLayout::kFusedRows:  // [gate | up | down], or [up | down]
      l.slot_bytes[0] = (has_gate ? 3 : 2) * rb;
      l.offset[kUpPart] = has_gate ? rb : 0;
      l.offset[kDownPart] = l.offset[kUpPart] + rb;
      break;
  }
  return l;
}

absl::StatusOr<WeightCache::AllocationBytes> WeightCache::AllocationFor(
    const WeightCacheOptions& o, size_t capacity, size_t alignment) {
  absl::StatusOr<size_t> rb = memory::CheckedMul(o.hidden_size, DTypeSize(o.dtype));
  if (!rb.ok()) return rb.status();
  AllocationBytes bytes;
  // Adds one region of slot_bytes x rows (rounded) to *total.
  auto add = [&](size_t* total, size_t slot_bytes, size_t rows) -> absl::Status {
    if (slot_bytes == 0 || rows == 0) return absl::OkStatus();
    absl::StatusOr<size_t> b = memory::CheckedMul(slot_bytes, rows);
    if (b.ok()) b = memory::CheckedRoundUp(*b, alignment);
    if (b.ok()) b = memory::CheckedAdd(*total, *b);
    if (!b.ok()) return b.status();
    *total = *b;
    return absl::OkStatus();
  };
  const SlotLayout slots = MakeSlotLayout(o.layout, o.has_gate, *rb);
  for (size_t slot_bytes : slots.slot_bytes) {
    if (absl::Status s = add(&bytes.packed, slot_bytes, capacity); !s.ok()) return s;
  }
  if (o.concat_gate_up) {
    if (absl::Status s = add(&bytes.packed, 2 * *rb, capacity); !s.ok()) return s;
  }
  const size_t parts = o.has_gate ? 3 : 2;
  if (o.ownership == SourceOwnership::kCopy) {
    if (absl::Status s = add(&bytes.sources, parts * *rb, o.intermediate_size); !s.ok()) {
      return s;
    }
  } else if (o.down_layout == DownLayout::kHiddenMajor) {
    if (absl::Status s = add(&bytes.sources, *rb, o.intermediate_size); !s.ok()) return s;
  }
  return bytes;
}

absl::StatusOr<WeightCache> WeightCache::Create(
    const WeightCacheOptions& options, const MlpWeights& weights,
    const diff::NeuronMask& initial_mask) {
  if (absl::Status s = ValidateOptions(options, weights, initial_mask); !s.ok()) {
    return s;
  }
  // Three rows per neuron (fused sources and layouts) for every neuron must
  // fit a size_t; every size derived later is smaller.
  absl::StatusOr<size_t> rb = memory::CheckedMul(options.hidden_size, DTypeSize(options.dtype));
  if (!rb.ok()) return rb.status();
  absl::StatusOr<size_t> matrix = memory::CheckedMul(*rb, options.intermediate_size);
  if (!matrix.ok()) return matrix.status();
  if (absl::StatusOr<size_t> all = memory::CheckedMul(*matrix, 3); !all.ok()) {
    return all.status();
  }

  WeightCache cache;
  cache.options_ = options;
  cache.slots_ = MakeSlotLayout(options.layout, options.has_gate, *rb);
  if (absl::Status s = cache.PrepareSources(weights); !s.ok()) return s;
  cache.ReserveScratch(initial_mask);
  // First packing: options.initial_capacity slots when they hold the first
  // mask, else a quarter of headroom over it before the first growth.
  const size_t initial_active = initial_mask.CountActive(options.simd);
  const size_t reserve = options.initial_capacity >= initial_active
                             ? options.initial_capacity
                             : initial_active + initial_active / 4;
  if (absl::Status s = cache.Reserve(std::min(options.intermediate_size, reserve)); !s.ok()) {
    return s;
  }
  if (absl::Status s = cache.ApplyIncoming(/*respect_tolerance=*/false); !s.ok()) {
    return s;
  }
  cache.totals_ = UpdateTotals();  // the first packing is not an update
  return cache;
}

absl::Status WeightCache::PrepareSources(const MlpWeights& weights) {
  const size_t rb = row_bytes();
  const size_t num_neurons = options_.intermediate_size;
  const bool down_hidden_major = options_.down_layout == DownLayout::kHiddenMajor;
  const void* given[3] = {weights.gate, weights.up, weights.down};
  // Writes part p's neuron-major rows into dst (stride dst_stride): the
  // transpose of a hidden-major down, or a streaming strided row copy.
  auto write_neuron_major = [&](int p, uint8_t* dst, size_t dst_stride) {
    if (p == kDownPart && down_hidden_major) {
      gather::TransposeOptions transpose_options;
      transpose_options.num_threads = options_.num_threads;
      transpose_options.simd = options_.simd;
      const size_t elem = DTypeSize(options_.dtype);
      return gather::Transpose({given[p], options_.hidden_size, num_neurons * elem},
                               num_neurons, elem, {dst, num_neurons, dst_stride},
                               transpose_options);
    }
    return gather::CopyRows({given[p], num_neurons, rb}, {dst, num_neurons, dst_stride}, rb,
                            num_neurons, options_.num_threads, options_.simd);
  };
  if (options_.ownership == SourceOwnership::kCopy) {
    // One fused array, [gate | up | down] rows per neuron, in part order.
    const size_t stride = (options_.has_gate ? 3 : 2) * rb;
    absl::StatusOr<memory::AlignedBuffer> buffer = Allocate(stride * num_neurons);
    if (!buffer.ok()) return buffer.status();
    fused_owned_ = *std::move(buffer);
    size_t offset = 0;
    for (int p = kGatePart; p <= kDownPart; ++p) {
      if (!HasPart(p)) continue;
      if (absl::Status s = write_neuron_major(p, fused_owned_.data() + offset, stride);
          !s.ok()) {
        return s;
      }
      src_[p] = fused_owned_.data() + offset;
      src_stride_[p] = stride;
      offset += rb;
    }
    fused_sources_ = true;
    return absl::OkStatus();
  }
  for (int p = kGatePart; p <= kDownPart; ++p) {
    src_[p] = static_cast<const uint8_t*>(given[p]);
    src_stride_[p] = rb;
  }
  if (down_hidden_major) {
    absl::StatusOr<memory::AlignedBuffer> buffer = Allocate(rb * num_neurons);
    if (!buffer.ok()) return buffer.status();
    down_owned_ = *std::move(buffer);
    if (absl::Status s = write_neuron_major(kDownPart, down_owned_.data(), rb); !s.ok()) {
      return s;
    }
    src_[kDownPart] = down_owned_.data();
  }
  return absl::OkStatus();
}

void WeightCache::ReserveScratch(const diff::NeuronMask& initial_mask) {
  // Hot-path scratch sized once for the worst case (every neuron changes),
  // so updates never allocate.
  const size_t num_neurons = options_.intermediate_size;
  map_.neuron_to_slot.assign(num_neurons, kNoSlot);
  map_.slot_to_neuron.reserve(num_neurons);
  diff_.added.reserve(num_neurons);
  diff_.removed.reserve(num_neurons);
  plan_.loads.reserve(num_neurons);
  plan_.moves.reserve(num_neurons);
  plan_.freed.assign(memory::WordsForBits(num_neurons), 0);
  active_scratch_.reserve(num_neurons);
  selector_.Reserve(num_neurons);
  for (auto& buffer : packed_) buffer = std::make_shared<memory::AlignedBuffer>();
  concat_ = std::make_shared<memory::AlignedBuffer>();
  applied_ = diff::NeuronMask(num_neurons);
  requested_ = diff::NeuronMask(num_neurons);
  incoming_ = initial_mask;
}

absl::Status WeightCache::Update(const diff::NeuronMask& mask) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("Update");
  if (mask.size() != options_.intermediate_size) {
    return MaskSizeError(mask.size(), options_.intermediate_size);
  }
  if (absl::Status s = incoming_.AssignWords(mask.words()); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/true);
}

absl::Status WeightCache::UpdateFromBytes(absl::Span<const uint8_t> mask) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("UpdateFromBytes");
  if (absl::Status s = incoming_.AssignBytes(mask, options_.simd); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/true);
}

absl::Status WeightCache::UpdateFromIndices(
    absl::Span<const uint32_t> sorted_indices) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("UpdateFromIndices");
  if (absl::Status s = incoming_.AssignIndices(sorted_indices); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/true);
}

absl::Status WeightCache::UpdateFromByteRows(absl::Span<const uint8_t> matrix,
                                             size_t rows) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("UpdateFromByteRows");
  if (absl::Status s = incoming_.AssignByteRowsUnion(matrix, rows, options_.simd);
      !s.ok()) {
    return s;
  }
  return ApplyIncoming(/*respect_tolerance=*/true);
}

absl::Status WeightCache::UpdateTopK(const diff::ScoreMatrix& scores, size_t k) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("UpdateTopK");
  if (absl::Status s = selector_.TopK(scores, k, &incoming_); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/true);
}

absl::Status WeightCache::UpdateThreshold(const diff::ScoreMatrix& scores, float threshold) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("UpdateThreshold");
  if (absl::Status s = selector_.Threshold(scores, threshold, &incoming_); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/true);
}

absl::Status WeightCache::UpdateWith(const diff::NeuronMask& mask, PlanExecutor execute) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("UpdateWith");
  if (mask.size() != options_.intermediate_size) {
    return MaskSizeError(mask.size(), options_.intermediate_size);
  }
  if (absl::Status s = incoming_.AssignWords(mask.words()); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/true, &execute);
}

absl::Status WeightCache::UpdateFromByteRowsWith(absl::Span<const uint8_t> matrix,
                                                 size_t rows, PlanExecutor execute) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("UpdateFromByteRowsWith");
  // One row is a plain [I] mask (and its error names it as one).
  if (absl::Status s = rows == 1 ? incoming_.AssignBytes(matrix, options_.simd)
                                 : incoming_.AssignByteRowsUnion(matrix, rows, options_.simd);
      !s.ok()) {
    return s;
  }
  return ApplyIncoming(/*respect_tolerance=*/true, &execute);
}

absl::Status WeightCache::CatchUp() {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("CatchUp");
  if (absl::Status s = incoming_.AssignWords(requested_.words()); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/false);
}

absl::Status WeightCache::set_num_threads(int num_threads) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("set_num_threads");
  if (absl::Status s = ValidateNumThreads(num_threads); !s.ok()) return s;
  options_.num_threads = num_threads;
  return absl::OkStatus();
}

absl::Status WeightCache::set_tolerance(size_t tolerance) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("set_tolerance");
  options_.tolerance = tolerance;
  return absl::OkStatus();
}

absl::Status WeightCache::Reserve(size_t active) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("Reserve");
  if (active > options_.intermediate_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cannot reserve %u active neurons in a layer of %u", active,
        options_.intermediate_size));
  }
  if (active <= capacity_) return absl::OkStatus();
  return Grow(active);
}

absl::Status WeightCache::Grow(size_t min_capacity) {
  // Amortized growth: 1.5x, capped at I (no mask can need more).
  const size_t target = std::min(
      options_.intermediate_size, std::max(min_capacity, capacity_ + capacity_ / 2));
  // Cannot overflow: target <= I and I x (3 x row) was checked in Create.
  std::shared_ptr<memory::AlignedBuffer> fresh[3];
  const size_t active = num_active();
  for (size_t b = 0; b < 3; ++b) {
    fresh[b] = std::make_shared<memory::AlignedBuffer>();
    if (slots_.slot_bytes[b] == 0) continue;
    absl::StatusOr<memory::AlignedBuffer> buffer = Allocate(target * slots_.slot_bytes[b]);
    if (!buffer.ok()) return buffer.status();
    *fresh[b] = *std::move(buffer);
    if (active == 0) continue;
    if (absl::Status s = gather::ParallelCopy(fresh[b]->data(), packed_[b]->data(),
                                              active * slots_.slot_bytes[b],
                                              options_.num_threads);
        !s.ok()) {
      return s;  // the fresh buffers are dropped; nothing changed yet
    }
  }
  std::shared_ptr<memory::AlignedBuffer> fresh_concat = concat_;
  if (options_.concat_gate_up) {
    const size_t rb = row_bytes();
    absl::StatusOr<memory::AlignedBuffer> buffer = Allocate(2 * target * rb);
    if (!buffer.ok()) return buffer.status();
    fresh_concat = std::make_shared<memory::AlignedBuffer>(*std::move(buffer));
    // Rows keep their positions: gate [0, A), up [A, 2A).
    if (active != 0) {
      if (absl::Status s = gather::ParallelCopy(fresh_concat->data(), concat_->data(),
                                                2 * active * rb, options_.num_threads);
          !s.ok()) {
        return s;
      }
    }
  }
  for (size_t b = 0; b < 3; ++b) packed_[b] = fresh[b];
  concat_ = fresh_concat;
  capacity_ = target;
  ++version_;
  return absl::OkStatus();
}

absl::Status WeightCache::BeginApply(bool respect_tolerance, PendingUpdate* pending) {
  // The diff itself is the change count (an unchanged mask costs one XOR +
  // popcount pass inside it and extracts nothing).
  diff::DiffOptions diff_options;
  diff_options.num_threads = options_.num_threads;
  diff_options.simd = options_.simd;
  // Sizes match (checked by every caller), so this cannot fail.
  (void)diff::ComputeMaskDiff(applied_, incoming_, &diff_, diff_options);
  *pending = PendingUpdate();
  UpdateStats& stats = pending->stats;
  stats.changed_neurons = diff_.added.size() + diff_.removed.size();
  if (stats.changed_neurons == 0 ||
      (respect_tolerance && stats.changed_neurons < options_.tolerance)) {
    stats.skipped = stats.changed_neurons != 0;
    return absl::OkStatus();
  }
  pending->apply = true;
  pending->old_active = num_active();
  pending->new_active = num_active() + diff_.added.size() - diff_.removed.size();
  if (pending->new_active > capacity_) {
    if (absl::Status s = Grow(pending->new_active); !s.ok()) return s;
    stats.grew = true;
  }
  return absl::OkStatus();
}

void WeightCache::PlanApply(const PendingUpdate& pending) {
  const size_t rewritten = std::max(diff_.added.size(), diff_.removed.size());
  if (static_cast<double>(rewritten) >=
      options_.repack_fraction * static_cast<double>(pending.new_active)) {
    incoming_.ToIndices(&active_scratch_, options_.simd);
    PlanRepack(active_scratch_, &map_, &plan_);
  } else {
    PlanDifferentialUpdate(diff_.added, diff_.removed, &map_, &plan_);
  }
}

void WeightCache::FinishApply(PendingUpdate pending) {
  UpdateStats& stats = pending.stats;
  if (!pending.apply) {
    std::swap(requested_, incoming_);
    lag_ = stats.changed_neurons;
  } else {
    if (options_.concat_gate_up) UpdateConcat(pending.old_active, pending.new_active);
    std::swap(applied_, incoming_);
    (void)requested_.AssignWords(applied_.words());
    lag_ = 0;
    ++version_;
    stats.rows_loaded = plan_.loads.size();
    stats.rows_moved = plan_.moves.size();
    stats.repacked = plan_.repack;
    const size_t matrices = options_.has_gate ? 3 : 2;
    stats.bytes_copied = (stats.rows_loaded + stats.rows_moved) * row_bytes() * matrices;
  }
  last_update_ = stats;
  ++totals_.updates;
  totals_.skipped += stats.skipped ? 1 : 0;
  totals_.changed_neurons += stats.changed_neurons;
  totals_.rows_loaded += stats.rows_loaded;
  totals_.rows_moved += stats.rows_moved;
  totals_.bytes_copied += stats.bytes_copied;
  totals_.repacks += stats.repacked ? 1 : 0;
  totals_.growths += stats.grew ? 1 : 0;
}

absl::Status WeightCache::ApplyIncoming(bool respect_tolerance,
                                        const PlanExecutor* execute) {
  PendingUpdate pending;
  if (absl::Status s = BeginApply(respect_tolerance, &pending); !s.ok()) return s;
  if (pending.apply) {
    PlanApply(pending);
  } else {
    plan_.Clear();  // nothing to copy: an executor sees the current set
  }
  if (execute != nullptr) {
    (*execute)(MakePlannedUpdate());
  } else if (pending.apply) {
    ExecutePlan();
  }
  FinishApply(pending);
  return absl::OkStatus();
}

void WeightCache::WritePlanJobs(gather::RowPart* parts, gather::RowGatherJob* jobs) const {
  const size_t rb = row_bytes();
  // Loads: one job, the parts of each loaded neuron in slot order, so a
  // neuron's rows are read back to back (one run of a fused source row).
  // With fused sources, parts that are also adjacent in their packed slot
  // are one part of the summed length (the layout says so, nothing is
  // probed): kFusedRows loads a neuron as one piece, kInterleavedGateUp its
  // gate and up as one.
  gather::RowPart* load_parts = parts;
  size_t num_load_parts = 0;
  int last = -1;
  for (int p = kGatePart; p <= kDownPart; ++p) {
    if (!HasPart(p)) continue;
    const int b = slots_.buffer[p];
    if (last >= 0 && fused_sources_ && slots_.buffer[last] == b &&
        slots_.offset[p] == slots_.offset[last] + rb) {
      load_parts[num_load_parts - 1].row_bytes += rb;
    } else {
      load_parts[num_load_parts++] = {
          {src_[p], options_.intermediate_size, src_stride_[p]},
          {PartData(*packed_[b], slots_.offset[p]), capacity_, slots_.slot_bytes[b]},
          rb};
    }
    last = p;
  }
  // Moves: whole slots of each packed buffer, one job.
  gather::RowPart* move_parts = parts + num_load_parts;
  size_t num_move_parts = 0;
  for (size_t b = 0; b < 3; ++b) {
    if (slots_.slot_bytes[b] == 0) continue;
    move_parts[num_move_parts++] = {{packed_[b]->data(), capacity_, slots_.slot_bytes[b]},
                                    {packed_[b]->data(), capacity_, slots_.slot_bytes[b]},
                                    slots_.slot_bytes[b]};
  }
  jobs[0] = {absl::MakeConstSpan(load_parts, num_load_parts), plan_.loads};
  jobs[1] = {absl::MakeConstSpan(move_parts, num_move_parts), plan_.moves};
}

void WeightCache::ExecutePlan() {
  gather::RowPart parts[kMaxPlanParts];
  gather::RowGatherJob jobs[kPlanJobs];
  WritePlanJobs(parts, jobs);
  RunPlanJobs(jobs, options_.num_threads, options_.simd);
}

void WeightCache::RunPlanJobs(absl::Span<const gather::RowGatherJob> jobs, int num_threads,
                              SimdLevel simd) {
  const absl::Status s = gather::GatherRowsBatch(jobs, num_threads, simd);
  if (!s.ok()) {
    // The plans index only valid neurons and slots below capacity; a
    // failure here is a bug in the planner, not a caller error.
    ABSL_RAW_LOG(FATAL, "sparse_mlp: internal error executing a cache update: %s",
                 std::string(s.message()).c_str());
  }
}

absl::Status WeightCache::UpdateMany(absl::Span<const CacheUpdate> updates, int num_threads,
                                     SimdLevel simd) {
  if (absl::Status s = ValidateNumThreads(num_threads); !s.ok()) return s;
  if (updates.size() > kMaxBatchCaches) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a batch updates at most %u caches, got %u", kMaxBatchCaches, updates.size()));
  }
  for (size_t i = 0; i < updates.size(); ++i) {
    const CacheUpdate& u = updates[i];
    if (u.cache == nullptr || u.mask == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("update %u has a null %s", i, u.cache == nullptr ? "cache" : "mask"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (updates[j].cache == u.cache) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "updates %u and %u name the same cache; a batch updates a cache once", j, i));
      }
    }
    const size_t neurons = u.cache->options_.intermediate_size;
    if (u.mask->size() != neurons) {
      return absl::InvalidArgumentError(
          absl::StrFormat("update %u: mask has %u neurons, the cache has intermediate_size %u",
                          i, u.mask->size(), neurons));
    }
  }
  // Every cache's flag, or none (released on every return).
  struct HeldFlags {
    absl::InlinedVector<MutationFlag*, kInlineBatchCaches> flags;
    ~HeldFlags() {
      for (MutationFlag* f : flags) f->Release();
    }
  } held;
  for (size_t i = 0; i < updates.size(); ++i) {
    if (!updates[i].cache->mutation_.TryAcquire()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "WeightCache::UpdateMany: the cache of update %u is being mutated by another "
          "call; WeightCache is thread-compatible: serialize mutating calls on one object",
          i));
    }
    held.flags.push_back(&updates[i].cache->mutation_);
  }
  // Each cache's diff, growth and plan are its own (the arena is
  // thread-safe), so the threads share them out, cache by cache; nested
  // regions inside (a diff's or growth's own threads) run on one thread.
  const size_t n = updates.size();
  auto for_each_cache = [&](auto&& fn) {
    if (num_threads <= 1 || n <= 1) {
      for (size_t i = 0; i < n; ++i) fn(i);
      return;
    }
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (long i = 0; i < static_cast<long>(n); ++i) fn(static_cast<size_t>(i));
  };
  // Phase 1: diffs and capacity. A growth failure returns here, before any
  // cache's map or rows change.
  absl::InlinedVector<PendingUpdate, kInlineBatchCaches> pending(n);
  absl::InlinedVector<absl::Status, kInlineBatchCaches> status(n);
  for_each_cache([&](size_t i) {
    WeightCache& cache = *updates[i].cache;
    (void)cache.incoming_.AssignWords(updates[i].mask->words());  // sizes match
    status[i] = cache.BeginApply(/*respect_tolerance=*/true, &pending[i]);
  });
  for (size_t i = 0; i < n; ++i) {
    if (!status[i].ok()) {
      return absl::Status(status[i].code(),
                          absl::StrFormat("update %u: %s", i, status[i].message()));
    }
  }
  // Phase 2: the plans, then all their copies as one batch (one parallel
  // region, bytes split evenly over the threads whatever each cache's
  // churn).
  absl::InlinedVector<gather::RowPart, kMaxPlanParts * kInlineBatchCaches> parts(
      n * kMaxPlanParts);
  absl::InlinedVector<gather::RowGatherJob, kPlanJobs * kInlineBatchCaches> jobs(n * kPlanJobs);
  for_each_cache([&](size_t i) {
    if (!pending[i].apply) return;
    WeightCache& cache = *updates[i].cache;
    cache.PlanApply(pending[i]);
    cache.WritePlanJobs(&parts[i * kMaxPlanParts], &jobs[i * kPlanJobs]);
  });
  if (!jobs.empty()) RunPlanJobs(jobs, num_threads, simd);
  for (size_t i = 0; i < updates.size(); ++i) updates[i].cache->FinishApply(pending[i]);
  return absl::OkStatus();
}

void WeightCache::UpdateConcat(size_t old_active, size_t new_active) {
  const size_t rb = row_bytes();
  uint8_t* base = concat_->data();
  if (base == nullptr) return;  // capacity 0: nothing active, nothing to move
  gather::RowPart gate_rows{{base, capacity_, rb}, {base, capacity_, rb}, rb};
  auto run = [&](absl::Span<const gather::RowGatherJob> jobs) {
    const absl::Status s = gather::GatherRowsBatch(jobs, options_.num_threads, options_.simd);
    if (!s.ok()) {
      ABSL_RAW_LOG(FATAL, "sparse_mlp: internal error updating the concatenation: %s",
                   std::string(s.message()).c_str());
    }
  };
  // Shrinking, the up block moves down over the gate rows of tail slots
  // that moves still read: those gate moves go first.
  const bool shrink = new_active < old_active;
  if (shrink && !plan_.moves.empty()) {
    const gather::RowGatherJob gate_moves[1] = {{absl::MakeConstSpan(&gate_rows, 1), plan_.moves}};
    run(gate_moves);
  }
  // Rows [A, 2A) to [A', A' + A): overlapping ranges, hence memmove; both
  // fit the 2 x capacity rows. O(A x H), only when A changes (and not for
  // a repack, which reloads every row).
  if (new_active != old_active && old_active != 0 && !plan_.repack) {
    std::memmove(base + new_active * rb, base + old_active * rb, old_active * rb);
  }
  uint8_t* up_base = base + new_active * rb;
  const size_t up_rows = 2 * capacity_ - new_active;
  const gather::RowPart load_parts[2] = {
      {{src_[kGatePart], options_.intermediate_size, src_stride_[kGatePart]},
       {base, capacity_, rb},
       rb},
      {{src_[kUpPart], options_.intermediate_size, src_stride_[kUpPart]},
       {up_base, up_rows, rb},
       rb}};
  // Moves read and write within each half (a moved slot's up row moved
  // with the block); the gate half is done already when shrinking.
  const gather::RowPart move_parts[2] = {gate_rows,
                                         {{up_base, up_rows, rb}, {up_base, up_rows, rb}, rb}};
  const gather::RowGatherJob jobs[2] = {
      {load_parts, plan_.loads},
      {shrink ? absl::MakeConstSpan(move_parts + 1, 1) : absl::MakeConstSpan(move_parts, 2),
       plan_.moves}};
  run(jobs);
}

absl::StatusOr<MatrixView> WeightCache::concatenated_gate_up() const {
  if (!options_.concat_gate_up) {
    return absl::FailedPreconditionError(
        "concatenated_gate_up() needs WeightCacheOptions::concat_gate_up");
  }
  const size_t h = options_.hidden_size;
  return MatrixView{concat_->data(), 2 * num_active(), h, h, 1, options_.dtype};
}

PlannedUpdate WeightCache::MakePlannedUpdate() const {
  PlannedUpdate p;
  p.num_active = num_active();
  p.row_bytes = row_bytes();
  for (int part = kGatePart; part <= kDownPart; ++part) {
    if (!HasPart(part)) continue;
    const int b = slots_.buffer[part];
    p.source[part] = src_[part];
    p.source_stride[part] = src_stride_[part];
    p.packed[part] = PartData(*packed_[b], slots_.offset[part]);
    p.packed_stride[part] = slots_.slot_bytes[b];
  }
  p.loads = plan_.loads;
  p.moves = plan_.moves;
  p.slot_to_neuron = map_.slot_to_neuron;
  return p;
}

MatrixView WeightCache::PartView(Part part) const {
  const int b = slots_.buffer[part];
  return {PartData(*packed_[b], slots_.offset[part]), num_active(), options_.hidden_size,
          slots_.slot_bytes[b] / DTypeSize(options_.dtype), 1, options_.dtype};
}

MatrixView WeightCache::gate() const {
  const size_t h = options_.hidden_size;
  if (!options_.has_gate) return {nullptr, 0, h, h, 1, options_.dtype};
  return PartView(kGatePart);
}

MatrixView WeightCache::up() const { return PartView(kUpPart); }

MatrixView WeightCache::down_rows() const { return PartView(kDownPart); }

MatrixView WeightCache::down_hidden_major() const {
  const MatrixView rows = PartView(kDownPart);
  return {rows.data, rows.cols, rows.rows, rows.col_stride, rows.row_stride, rows.dtype};
}

absl::StatusOr<MatrixView> WeightCache::gate_up_interleaved() const {
  if (options_.layout == PackedLayout::kSplit || !options_.has_gate) {
    return absl::FailedPreconditionError(
        "gate_up_interleaved() needs PackedLayout::kInterleavedGateUp or kFusedRows "
        "with a gate");
  }
  MatrixView view = PartView(kGatePart);
  view.cols = 2 * options_.hidden_size;  // gate row, then up row
  return view;
}

absl::Status WeightCache::CopyConcatenatedGateUp(absl::Span<uint8_t> out) const {
  if (!options_.has_gate) {
    return absl::FailedPreconditionError(
        "the concatenated [gate; up] weight needs a gate projection");
  }
  const size_t rb = row_bytes();
  const size_t active = num_active();
  if (out.size() != 2 * active * rb) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "output has %u bytes, [2 x %u, %u] of %s needs %u", out.size(), active,
        options_.hidden_size, DTypeName(options_.dtype), 2 * active * rb));
  }
  if (active == 0) return absl::OkStatus();
  // Each part's rows into its half: one contiguous copy where the part's
  // rows are contiguous (kSplit), a strided row copy otherwise.
  for (const Part part : {kGatePart, kUpPart}) {
    const MatrixView rows = PartView(part);
    uint8_t* dst = out.data() + (part == kGatePart ? 0 : active * rb);
    const size_t stride = rows.row_stride * DTypeSize(options_.dtype);
    const absl::Status s =
        stride == rb
            ? gather::ParallelCopy(dst, rows.data, active * rb, options_.num_threads)
            : gather::CopyRows({rows.data, active, stride}, {dst, active, rb}, rb, active,
                               options_.num_threads);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status WeightCache::Verify() const {
  const size_t num_neurons = options_.intermediate_size;
  const size_t active = num_active();
  if (const size_t in_mask = applied_.CountActive(options_.simd); in_mask != active) {
    return absl::DataLossError(absl::StrFormat(
        "the cache holds %u slots but its applied mask has %u active neurons", active,
        in_mask));
  }
  const size_t rb = row_bytes();
  const size_t elem = DTypeSize(options_.dtype);
  struct Checked {
    const char* name;
    MatrixView view;
    const uint8_t* src;
    size_t src_stride;
  };
  const Checked parts[3] = {
      {"gate", gate(), src_[kGatePart], src_stride_[kGatePart]},
      {"up", up(), src_[kUpPart], src_stride_[kUpPart]},
      {"down", down_rows(), src_[kDownPart], src_stride_[kDownPart]}};
  for (size_t s = 0; s < active; ++s) {
    const uint32_t n = map_.slot_to_neuron[s];
    if (n >= num_neurons || !applied_.Test(n) || map_.neuron_to_slot[n] != s) {
      return absl::DataLossError(absl::StrFormat(
          "slot %u holds neuron %u, which is %s", s, n,
          n >= num_neurons      ? "out of range"
          : !applied_.Test(n)   ? "not in the applied mask"
                                : "mapped to another slot"));
    }
    for (const Checked& part : parts) {
      if (part.view.data == nullptr) continue;  // no gate
      const auto* row =
          static_cast<const uint8_t*>(part.view.data) + s * part.view.row_stride * elem;
      if (std::memcmp(row, part.src + size_t{n} * part.src_stride, rb) != 0) {
        return absl::DataLossError(absl::StrFormat(
            "the %s row of slot %u differs from neuron %u's row in the sources",
            part.name, s, n));
      }
    }
  }
  if (options_.concat_gate_up && active != 0) {
    const uint8_t* base = concat_->data();
    for (size_t s = 0; s < active; ++s) {
      const uint32_t n = map_.slot_to_neuron[s];
      if (std::memcmp(base + s * rb, src_[kGatePart] + size_t{n} * src_stride_[kGatePart], rb) !=
              0 ||
          std::memcmp(base + (active + s) * rb, src_[kUpPart] + size_t{n} * src_stride_[kUpPart],
                      rb) != 0) {
        return absl::DataLossError(absl::StrFormat(
            "the concatenated [gate; up] rows of slot %u differ from neuron %u's rows", s, n));
      }
    }
  }
  return absl::OkStatus();
}

std::shared_ptr<const void> WeightCache::RetainStorage() const {
  struct Storage {
    std::shared_ptr<memory::AlignedBuffer> buffers[4];
  };
  return std::make_shared<Storage>(Storage{{packed_[0], packed_[1], packed_[2], concat_}});
}

size_t WeightCache::packed_bytes() const {
  size_t packed = concat_->size();
  for (const auto& buffer : packed_) packed += buffer->size();
  return packed;
}

size_t WeightCache::memory_bytes() const {
  auto vector_bytes = [](const auto& v) { return v.capacity() * sizeof(v[0]); };
  return fused_owned_.size() + down_owned_.size() + packed_bytes() +
         3 * applied_.words().size() * sizeof(uint64_t) +
         vector_bytes(map_.slot_to_neuron) + vector_bytes(map_.neuron_to_slot) +
         vector_bytes(diff_.added) + vector_bytes(diff_.removed) +
         vector_bytes(plan_.loads) + vector_bytes(plan_.moves) +
         vector_bytes(plan_.freed) + vector_bytes(active_scratch_) + selector_.bytes();
}

}  // namespace sparse_mlp::cache
