#include "cache/weight_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/base/internal/raw_logging.h"
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

absl::Status ConcurrentMutationError(const char* method) {
  return absl::FailedPreconditionError(absl::StrFormat(
      "WeightCache::%s called while another call is mutating the same cache; "
      "WeightCache is thread-compatible: serialize mutating calls on one object",
      method));
}

}  // namespace

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

size_t WeightCache::GateUpStride() const {
  switch (options_.layout) {
    case PackedLayout::kSplit:
      return row_bytes();
    case PackedLayout::kInterleavedGateUp:
      return 2 * row_bytes();
    case PackedLayout::kFusedRows:
      break;
  }
  return (options_.has_gate ? 3 : 2) * row_bytes();
}

size_t WeightCache::DownStride() const {
  return options_.layout == PackedLayout::kFusedRows ? GateUpStride() : row_bytes();
}

size_t WeightCache::UpOffset() const {
  return options_.layout != PackedLayout::kSplit && options_.has_gate ? row_bytes() : 0;
}

size_t WeightCache::DownOffset() const {
  return options_.layout == PackedLayout::kFusedRows ? UpOffset() + row_bytes() : 0;
}

WeightCache::PackedArrays WeightCache::Arrays() const {
  switch (options_.layout) {
    case PackedLayout::kSplit:
      return {{options_.has_gate ? row_bytes() : 0, row_bytes(), row_bytes()}, 0, 1, 2};
    case PackedLayout::kInterleavedGateUp:
      return {{GateUpStride(), 0, row_bytes()}, 0, 0, 2};
    case PackedLayout::kFusedRows:
      break;
  }
  return {{GateUpStride(), 0, 0}, 0, 0, 0};
}

absl::StatusOr<WeightCache> WeightCache::Create(
    const WeightCacheOptions& options, const MlpWeights& weights,
    const diff::NeuronMask& initial_mask) {
  if (absl::Status s = ValidateOptions(options, weights, initial_mask); !s.ok()) {
    return s;
  }
  const size_t elem = DTypeSize(options.dtype);
  absl::StatusOr<size_t> row_bytes = memory::CheckedMul(options.hidden_size, elem);
  if (!row_bytes.ok()) return row_bytes.status();
  absl::StatusOr<size_t> matrix_bytes =
      memory::CheckedMul(*row_bytes, options.intermediate_size);
  if (!matrix_bytes.ok()) return matrix_bytes.status();
  // Three rows per slot (fused layouts and sources) and a full packed
  // array of them must fit too.
  if (absl::StatusOr<size_t> all = memory::CheckedMul(*matrix_bytes, 3); !all.ok()) {
    return all.status();
  }

  WeightCache cache;
  cache.options_ = options;
  const size_t num_neurons = options.intermediate_size;
  const int threads = options.num_threads;
  const bool copy = options.ownership == SourceOwnership::kCopy;

  // Writes the neuron-major [I, H] form of a source into rows of `dst`
  // (stride dst_stride): a parallel transpose of a hidden-major down, or a
  // parallel strided row copy.
  auto write_neuron_major = [&](const void* src, bool transpose, uint8_t* dst,
                                size_t dst_stride) -> absl::Status {
    if (transpose) {
      gather::TransposeOptions transpose_options;
      transpose_options.num_threads = threads;
      transpose_options.simd = options.simd;
      return gather::Transpose({src, options.hidden_size, num_neurons * elem},
                               num_neurons, elem, {dst, num_neurons, dst_stride},
                               transpose_options);
    }
    std::vector<gather::RowCopy> rows(num_neurons);
    for (size_t n = 0; n < num_neurons; ++n) {
      rows[n] = {static_cast<uint32_t>(n), static_cast<uint32_t>(n)};
    }
    return gather::GatherRows({src, num_neurons, *row_bytes}, {dst, num_neurons, dst_stride},
                              *row_bytes, rows, threads, options.simd);
  };
  const bool down_hidden_major = options.down_layout == DownLayout::kHiddenMajor;
  if (copy) {
    // One fused array, [gate | up | down] rows per neuron.
    const size_t parts = options.has_gate ? 3 : 2;
    absl::StatusOr<size_t> fused_bytes = memory::CheckedMul(*matrix_bytes, parts);
    if (!fused_bytes.ok()) return fused_bytes.status();
    absl::StatusOr<memory::AlignedBuffer> buffer = cache.Allocate(*fused_bytes);
    if (!buffer.ok()) return buffer.status();
    cache.fused_owned_ = *std::move(buffer);
    const size_t stride = parts * *row_bytes;
    uint8_t* base = cache.fused_owned_.data();
    size_t offset = 0;
    if (options.has_gate) {
      if (absl::Status s = write_neuron_major(weights.gate, false, base, stride); !s.ok()) {
        return s;
      }
      cache.gate_src_ = base;
      offset = *row_bytes;
    }
    if (absl::Status s = write_neuron_major(weights.up, false, base + offset, stride);
        !s.ok()) {
      return s;
    }
    cache.up_src_ = base + offset;
    offset += *row_bytes;
    if (absl::Status s =
            write_neuron_major(weights.down, down_hidden_major, base + offset, stride);
        !s.ok()) {
      return s;
    }
    cache.down_src_ = base + offset;
    cache.gate_src_stride_ = cache.up_src_stride_ = cache.down_src_stride_ = stride;
  } else {
    cache.gate_src_ = static_cast<const uint8_t*>(weights.gate);
    cache.up_src_ = static_cast<const uint8_t*>(weights.up);
    cache.gate_src_stride_ = cache.up_src_stride_ = *row_bytes;
    if (down_hidden_major) {
      absl::StatusOr<memory::AlignedBuffer> buffer = cache.Allocate(*matrix_bytes);
      if (!buffer.ok()) return buffer.status();
      cache.down_owned_ = *std::move(buffer);
      if (absl::Status s = write_neuron_major(weights.down, true, cache.down_owned_.data(),
                                              *row_bytes);
          !s.ok()) {
        return s;
      }
      cache.down_src_ = cache.down_owned_.data();
    } else {
      cache.down_src_ = static_cast<const uint8_t*>(weights.down);
    }
    cache.down_src_stride_ = *row_bytes;
  }

  // Hot-path scratch sized once for the worst case (every neuron changes),
  // so updates never allocate.
  cache.map_.neuron_to_slot.assign(num_neurons, kNoSlot);
  cache.map_.slot_to_neuron.reserve(num_neurons);
  cache.diff_.added.reserve(num_neurons);
  cache.diff_.removed.reserve(num_neurons);
  cache.plan_.loads.reserve(num_neurons);
  cache.plan_.moves.reserve(num_neurons);
  cache.plan_.freed.assign(memory::WordsForBits(num_neurons), 0);
  cache.active_scratch_.reserve(num_neurons);
  cache.gate_packed_ = std::make_shared<memory::AlignedBuffer>();
  cache.up_packed_ = std::make_shared<memory::AlignedBuffer>();
  cache.down_packed_ = std::make_shared<memory::AlignedBuffer>();
  cache.applied_ = diff::NeuronMask(num_neurons);
  cache.requested_ = diff::NeuronMask(num_neurons);
  cache.incoming_ = initial_mask;

  // A quarter of headroom over the first mask before the first growth.
  const size_t initial_active = initial_mask.CountActive(options.simd);
  if (absl::Status s = cache.Reserve(
          std::min(num_neurons, initial_active + initial_active / 4));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = cache.ApplyIncoming(/*respect_tolerance=*/false); !s.ok()) {
    return s;
  }
  return cache;
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
  const PackedArrays arrays = Arrays();
  std::shared_ptr<memory::AlignedBuffer> fresh[3];
  for (size_t b = 0; b < 3; ++b) {
    fresh[b] = std::make_shared<memory::AlignedBuffer>();
    if (arrays.slot_bytes[b] == 0) continue;
    absl::StatusOr<memory::AlignedBuffer> buffer = Allocate(target * arrays.slot_bytes[b]);
    if (!buffer.ok()) return buffer.status();
    *fresh[b] = *std::move(buffer);
  }
  // The current buffers, by the same index.
  const std::shared_ptr<memory::AlignedBuffer>* old[3] = {nullptr, nullptr, nullptr};
  old[arrays.down_buffer] = &down_packed_;
  old[arrays.up_buffer] = &up_packed_;
  old[arrays.gate_buffer] = &gate_packed_;
  const size_t active = num_active();
  for (size_t b = 0; b < 3; ++b) {
    if (arrays.slot_bytes[b] != 0 && active > 0) {
      if (absl::Status s = gather::ParallelCopy(fresh[b]->data(), (*old[b])->data(),
                                                active * arrays.slot_bytes[b],
                                                options_.num_threads);
          !s.ok()) {
        return s;  // the fresh buffers are dropped; nothing changed yet
      }
    }
  }
  gate_packed_ = fresh[arrays.gate_buffer];
  up_packed_ = fresh[arrays.up_buffer];
  down_packed_ = fresh[arrays.down_buffer];
  capacity_ = target;
  ++version_;
  return absl::OkStatus();
}

absl::Status WeightCache::ApplyIncoming(bool respect_tolerance) {
  // The diff itself is the change count (an unchanged mask costs one XOR +
  // popcount pass inside it and extracts nothing).
  diff::DiffOptions diff_options;
  diff_options.num_threads = options_.num_threads;
  diff_options.simd = options_.simd;
  // Sizes match (checked by every caller), so this cannot fail.
  (void)diff::ComputeMaskDiff(applied_, incoming_, &diff_, diff_options);
  UpdateStats stats;
  stats.changed_neurons = diff_.added.size() + diff_.removed.size();
  if (stats.changed_neurons == 0 ||
      (respect_tolerance && stats.changed_neurons < options_.tolerance)) {
    stats.skipped = stats.changed_neurons != 0;
    std::swap(requested_, incoming_);
    lag_ = stats.changed_neurons;
    last_update_ = stats;
    return absl::OkStatus();
  }

  const size_t new_active =
      num_active() + diff_.added.size() - diff_.removed.size();
  if (new_active > capacity_) {
    if (absl::Status s = Grow(new_active); !s.ok()) return s;
    stats.grew = true;
  }

  const size_t rewritten = std::max(diff_.added.size(), diff_.removed.size());
  if (static_cast<double>(rewritten) >=
      options_.repack_fraction * static_cast<double>(new_active)) {
    incoming_.ToIndices(&active_scratch_, options_.simd);
    PlanRepack(active_scratch_, &map_, &plan_);
  } else {
    PlanDifferentialUpdate(diff_.added, diff_.removed, &map_, &plan_);
  }
  ExecutePlan();

  std::swap(applied_, incoming_);
  (void)requested_.AssignWords(applied_.words());
  lag_ = 0;
  ++version_;
  stats.rows_loaded = plan_.loads.size();
  stats.rows_moved = plan_.moves.size();
  stats.repacked = plan_.repack;
  const size_t matrices = options_.has_gate ? 3 : 2;
  stats.bytes_copied = (stats.rows_loaded + stats.rows_moved) * row_bytes() * matrices;
  last_update_ = stats;
  return absl::OkStatus();
}

void WeightCache::ExecutePlan() {
  const size_t rb = row_bytes();
  const size_t num_neurons = options_.intermediate_size;
  const absl::Span<const gather::RowCopy> loads = plan_.loads;
  const absl::Span<const gather::RowCopy> moves = plan_.moves;
  gather::RowGatherJob jobs[6];
  size_t n = 0;
  auto packed = [&](const std::shared_ptr<memory::AlignedBuffer>& buffer,
                    size_t offset, size_t stride) {
    return gather::RowsView{buffer->data() + offset, capacity_, stride};
  };
  auto packed_src = [&](const std::shared_ptr<memory::AlignedBuffer>& buffer,
                        size_t stride) {
    return gather::ConstRowsView{buffer->data(), capacity_, stride};
  };
  // All loads first, then all moves: jobs that share a copy list are walked
  // copy by copy (gather/row_gather.h), so each loaded neuron is read as one
  // run of its fused source row.
  const gather::ConstRowsView gate_src{gate_src_, num_neurons, gate_src_stride_};
  const gather::ConstRowsView up_src{up_src_, num_neurons, up_src_stride_};
  const gather::ConstRowsView down_src{down_src_, num_neurons, down_src_stride_};
  const size_t gate_up_stride = GateUpStride();
  const size_t down_stride = DownStride();
  if (options_.has_gate) {
    jobs[n++] = {gate_src, packed(gate_packed_, 0, gate_up_stride), rb, loads};
  }
  jobs[n++] = {up_src, packed(up_packed_, UpOffset(), gate_up_stride), rb, loads};
  jobs[n++] = {down_src, packed(down_packed_, DownOffset(), down_stride), rb, loads};
  // Moves copy whole slots of each distinct packed array.
  switch (options_.layout) {
    case PackedLayout::kSplit:
      if (options_.has_gate) {
        jobs[n++] = {packed_src(gate_packed_, rb), packed(gate_packed_, 0, rb), rb, moves};
      }
      jobs[n++] = {packed_src(up_packed_, rb), packed(up_packed_, 0, rb), rb, moves};
      jobs[n++] = {packed_src(down_packed_, rb), packed(down_packed_, 0, rb), rb, moves};
      break;
    case PackedLayout::kInterleavedGateUp:
      jobs[n++] = {packed_src(gate_packed_, gate_up_stride),
                   packed(gate_packed_, 0, gate_up_stride), gate_up_stride, moves};
      jobs[n++] = {packed_src(down_packed_, rb), packed(down_packed_, 0, rb), rb, moves};
      break;
    case PackedLayout::kFusedRows:
      jobs[n++] = {packed_src(gate_packed_, gate_up_stride),
                   packed(gate_packed_, 0, gate_up_stride), gate_up_stride, moves};
      break;
  }
  const absl::Status s =
      gather::GatherRowsBatch(absl::MakeConstSpan(jobs, n), options_.num_threads,
                              options_.simd);
  if (!s.ok()) {
    // The plan indexes only valid neurons and slots below capacity_; a
    // failure here is a bug in the planner, not a caller error.
    ABSL_RAW_LOG(FATAL, "sparse_mlp: internal error executing a cache update: %s",
                 std::string(s.message()).c_str());
  }
}

namespace {

// The first row of one part of a packed buffer; null while the buffer is
// unallocated (capacity 0: no offset may be applied to a null pointer).
const uint8_t* PartData(const memory::AlignedBuffer& buffer, size_t offset) {
  return buffer.data() == nullptr ? nullptr : buffer.data() + offset;
}

}  // namespace

MatrixView WeightCache::gate() const {
  const size_t h = options_.hidden_size;
  if (!options_.has_gate) return {nullptr, 0, h, h, 1, options_.dtype};
  return {gate_packed_->data(), num_active(), h, GateUpStride() / DTypeSize(options_.dtype),
          1, options_.dtype};
}

MatrixView WeightCache::up() const {
  const size_t h = options_.hidden_size;
  return {PartData(*up_packed_, UpOffset()), num_active(), h,
          GateUpStride() / DTypeSize(options_.dtype), 1, options_.dtype};
}

MatrixView WeightCache::down_rows() const {
  const size_t h = options_.hidden_size;
  return {PartData(*down_packed_, DownOffset()), num_active(), h,
          DownStride() / DTypeSize(options_.dtype), 1, options_.dtype};
}

MatrixView WeightCache::down_hidden_major() const {
  const size_t h = options_.hidden_size;
  return {PartData(*down_packed_, DownOffset()), h, num_active(), 1,
          DownStride() / DTypeSize(options_.dtype), options_.dtype};
}

absl::StatusOr<MatrixView> WeightCache::gate_up_interleaved() const {
  if (options_.layout == PackedLayout::kSplit || !options_.has_gate) {
    return absl::FailedPreconditionError(
        "gate_up_interleaved() needs PackedLayout::kInterleavedGateUp or kFusedRows "
        "with a gate");
  }
  const size_t h = options_.hidden_size;
  return MatrixView{gate_packed_->data(), num_active(), 2 * h,
                    GateUpStride() / DTypeSize(options_.dtype), 1, options_.dtype};
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
  if (options_.layout == PackedLayout::kSplit) {
    if (absl::Status s = gather::ParallelCopy(out.data(), gate_packed_->data(),
                                              active * rb, options_.num_threads);
        !s.ok()) {
      return s;
    }
    return gather::ParallelCopy(out.data() + active * rb, up_packed_->data(),
                                active * rb, options_.num_threads);
  }
  // Gate and up rows share one strided array (the views' layout). Both
  // copies are validated by construction (active <= capacity, rb <= stride).
  const size_t stride = GateUpStride();
  const gather::ConstRowsView gate_rows{gate_packed_->data(), active, stride};
  const gather::ConstRowsView up_rows{up_packed_->data() + UpOffset(), active, stride};
  if (absl::Status s = gather::CopyRows(gate_rows, {out.data(), active, rb}, rb, active,
                                        options_.num_threads);
      !s.ok()) {
    return s;
  }
  return gather::CopyRows(up_rows, {out.data() + active * rb, active, rb}, rb, active,
                          options_.num_threads);
}

absl::Status WeightCache::Verify() const {
  const size_t num_neurons = options_.intermediate_size;
  const size_t active = num_active();
  if (applied_.CountActive(options_.simd) != active) {
    return absl::DataLossError(absl::StrFormat(
        "the cache holds %u slots but its applied mask has %u active neurons", active,
        applied_.CountActive(options_.simd)));
  }
  const size_t rb = row_bytes();
  const size_t elem = DTypeSize(options_.dtype);
  struct Part {
    const char* name;
    MatrixView view;
    const uint8_t* src;
    size_t src_stride;
  };
  const Part parts[3] = {{"gate", gate(), gate_src_, gate_src_stride_},
                         {"up", up(), up_src_, up_src_stride_},
                         {"down", down_rows(), down_src_, down_src_stride_}};
  for (size_t s = 0; s < active; ++s) {
    const uint32_t n = map_.slot_to_neuron[s];
    if (n >= num_neurons || !applied_.Test(n) || map_.neuron_to_slot[n] != s) {
      return absl::DataLossError(absl::StrFormat(
          "slot %u holds neuron %u, which is %s", s, n,
          n >= num_neurons      ? "out of range"
          : !applied_.Test(n)   ? "not in the applied mask"
                                : "mapped to another slot"));
    }
    for (const Part& part : parts) {
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
  return absl::OkStatus();
}

std::shared_ptr<const void> WeightCache::RetainStorage() const {
  struct Storage {
    std::shared_ptr<memory::AlignedBuffer> gate, up, down;
  };
  return std::make_shared<Storage>(Storage{gate_packed_, up_packed_, down_packed_});
}

size_t WeightCache::memory_bytes() const {
  auto vector_bytes = [](const auto& v) { return v.capacity() * sizeof(v[0]); };
  // Parts of one packed array share its buffer: count each buffer once.
  size_t packed = gate_packed_->size();
  if (up_packed_ != gate_packed_) packed += up_packed_->size();
  if (down_packed_ != gate_packed_ && down_packed_ != up_packed_) {
    packed += down_packed_->size();
  }
  return fused_owned_.size() + down_owned_.size() + packed +
         3 * applied_.words().size() * sizeof(uint64_t) +
         vector_bytes(map_.slot_to_neuron) + vector_bytes(map_.neuron_to_slot) +
         vector_bytes(diff_.added) + vector_bytes(diff_.removed) +
         vector_bytes(plan_.loads) + vector_bytes(plan_.moves) +
         vector_bytes(plan_.freed) + vector_bytes(active_scratch_);
}

}  // namespace sparse_mlp::cache
