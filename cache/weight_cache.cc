// WeightCache: construction (validation, slot layout, sources), capacity
// and sizes. Updates are in weight_cache_update.cc, views and Verify in
// weight_cache_views.cc.
#include "cache/weight_cache.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "cache/weight_cache_internal.h"
#include "gather/parallel_copy.h"
#include "gather/row_gather.h"
#include "gather/transpose.h"
#include "memory/size_math.h"
#include "platform/threads.h"

namespace sparse_mlp::cache {
namespace {

using internal::ConcurrentMutationError;

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
  if (o.quant.has_value()) {
    if (absl::Status s = quant::RowLayout::Create(*o.quant, o.hidden_size).status(); !s.ok()) {
      return s;
    }
    if (o.down_layout != DownLayout::kNeuronMajor) {
      return absl::InvalidArgumentError(
          "quantized rows need a neuron-major down (DownLayout::kNeuronMajor: each neuron's "
          "down column quantized along H)");
    }
  } else if (o.dtype != DType::kFloat32 && o.dtype != DType::kBFloat16 &&
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

}  // namespace

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

absl::StatusOr<size_t> RowBytesFor(const WeightCacheOptions& o) {
  if (o.quant.has_value()) {
    absl::StatusOr<quant::RowLayout> l = quant::RowLayout::Create(*o.quant, o.hidden_size);
    if (!l.ok()) return l.status();
    return l->row_bytes();
  }
  return memory::CheckedMul(o.hidden_size, DTypeSize(o.dtype));
}

absl::StatusOr<WeightCache::AllocationBytes> WeightCache::AllocationFor(
    const WeightCacheOptions& o, size_t capacity, size_t alignment) {
  absl::StatusOr<size_t> rb = RowBytesFor(o);
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
  absl::StatusOr<size_t> rb = RowBytesFor(options);
  if (!rb.ok()) return rb.status();
  absl::StatusOr<size_t> matrix = memory::CheckedMul(*rb, options.intermediate_size);
  if (!matrix.ok()) return matrix.status();
  if (absl::StatusOr<size_t> all = memory::CheckedMul(*matrix, 3); !all.ok()) {
    return all.status();
  }

  WeightCache cache;
  cache.options_ = options;
  cache.row_bytes_ = *rb;
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
  concat_ = ConcatMirror(row_bytes());
  applied_ = diff::NeuronMask(num_neurons);
  requested_ = diff::NeuronMask(num_neurons);
  incoming_ = initial_mask;
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
  ConcatMirror fresh_concat = concat_;
  if (options_.concat_gate_up) {
    absl::StatusOr<memory::AlignedBuffer> buffer = Allocate(2 * target * row_bytes());
    if (!buffer.ok()) return buffer.status();
    absl::StatusOr<ConcatMirror> grown =
        concat_.Regrown(*std::move(buffer), target, active, options_.num_threads);
    if (!grown.ok()) return grown.status();
    fresh_concat = *std::move(grown);
  }
  for (size_t b = 0; b < 3; ++b) packed_[b] = fresh[b];
  concat_ = fresh_concat;
  capacity_ = target;
  ++version_;
  return absl::OkStatus();
}

std::shared_ptr<const void> WeightCache::RetainStorage() const {
  struct Storage {
    std::shared_ptr<memory::AlignedBuffer> buffers[4];
  };
  return std::make_shared<Storage>(Storage{{packed_[0], packed_[1], packed_[2], concat_.buffer()}});
}

size_t WeightCache::packed_bytes() const {
  size_t packed = concat_.bytes();
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
