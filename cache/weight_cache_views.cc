// WeightCache: views of the packed rows, the seed API's concatenation, and
// Verify.
#include <cstring>

#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "cache/weight_cache_internal.h"
#include "gather/parallel_copy.h"
#include "gather/row_gather.h"

namespace sparse_mlp::cache {

using internal::PartData;

absl::StatusOr<MatrixView> WeightCache::concatenated_gate_up() const {
  if (!options_.concat_gate_up) {
    return absl::FailedPreconditionError(
        "concatenated_gate_up() needs WeightCacheOptions::concat_gate_up");
  }
  const size_t h = options_.hidden_size;
  if (options_.quant.has_value()) {
    return MatrixView{concat_.data(), 2 * num_active(), h, row_bytes(), 0,
                      options_.dtype, options_.quant};
  }
  return MatrixView{concat_.data(), 2 * num_active(), h, h, 1, options_.dtype, std::nullopt};
}

MatrixView WeightCache::PartView(Part part) const {
  const int b = slots_.buffer[part];
  if (options_.quant.has_value()) {
    return {PartData(*packed_[b], slots_.offset[part]),
            num_active(),
            options_.hidden_size,
            slots_.slot_bytes[b],
            0,
            options_.dtype,
            options_.quant};
  }
  return {PartData(*packed_[b], slots_.offset[part]),
          num_active(),
          options_.hidden_size,
          slots_.slot_bytes[b] / DTypeSize(options_.dtype),
          1,
          options_.dtype,
          std::nullopt};
}

size_t WeightCache::RowStrideBytes(const MatrixView& view) const {
  return view.quant.has_value() ? view.row_stride : view.row_stride * DTypeSize(view.dtype);
}

MatrixView WeightCache::gate() const {
  const size_t h = options_.hidden_size;
  if (!options_.has_gate) return {nullptr, 0, h, h, 1, options_.dtype, options_.quant};
  return PartView(kGatePart);
}

MatrixView WeightCache::up() const { return PartView(kUpPart); }

MatrixView WeightCache::down_rows() const { return PartView(kDownPart); }

MatrixView WeightCache::down_hidden_major() const {
  const MatrixView rows = PartView(kDownPart);
  // A quantized row has no column view: its weights share group scales.
  if (rows.quant.has_value()) return {nullptr, 0, rows.rows, 0, 0, rows.dtype, rows.quant};
  return {rows.data,       rows.cols,  rows.rows,   rows.col_stride,
          rows.row_stride, rows.dtype, std::nullopt};
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
    return absl::InvalidArgumentError(
        absl::StrFormat("output has %u bytes, [2 x %u, %u] of %s needs %u", out.size(), active,
                        options_.hidden_size,
                        options_.quant.has_value() ? quant::QuantTypeName(options_.quant->type)
                                                   : DTypeName(options_.dtype),
                        2 * active * rb));
  }
  if (active == 0) return absl::OkStatus();
  // Each part's rows into its half: one contiguous copy where the part's
  // rows are contiguous (kSplit), a strided row copy otherwise.
  for (const Part part : {kGatePart, kUpPart}) {
    const MatrixView rows = PartView(part);
    uint8_t* dst = out.data() + (part == kGatePart ? 0 : active * rb);
    const size_t stride = RowStrideBytes(rows);
    const absl::Status s =
        stride == rb ? gather::ParallelCopy(dst, rows.data, active * rb, options_.num_threads)
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
        "the cache holds %u slots but its applied mask has %u active neurons", active, in_mask));
  }
  const size_t rb = row_bytes();
  struct Checked {
    const char* name;
    MatrixView view;
    const uint8_t* src;
    size_t src_stride;
  };
  const Checked parts[3] = {{"gate", gate(), src_[kGatePart], src_stride_[kGatePart]},
                            {"up", up(), src_[kUpPart], src_stride_[kUpPart]},
                            {"down", down_rows(), src_[kDownPart], src_stride_[kDownPart]}};
  for (size_t s = 0; s < active; ++s) {
    const uint32_t n = map_.slot_to_neuron[s];
    if (n >= num_neurons || !applied_.Test(n) || map_.neuron_to_slot[n] != s) {
      return absl::DataLossError(absl::StrFormat("slot %u holds neuron %u, which is %s", s, n,
                                                 n >= num_neurons    ? "out of range"
                                                 : !applied_.Test(n) ? "not in the applied mask"
                                                                     : "mapped to another slot"));
    }
    for (const Checked& part : parts) {
      if (part.view.data == nullptr) continue;  // no gate
      const auto* row = static_cast<const uint8_t*>(part.view.data) + s * RowStrideBytes(part.view);
      if (std::memcmp(row, part.src + size_t{n} * part.src_stride, rb) != 0) {
        return absl::DataLossError(absl::StrFormat(
            "the %s row of slot %u differs from neuron %u's row in the sources", part.name, s, n));
      }
    }
  }
  if (options_.concat_gate_up && active != 0) {
    const uint8_t* base = concat_.data();
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

}  // namespace sparse_mlp::cache
