#include "mlp/mlp_forward.h"

#include "absl/strings/str_format.h"
#include "memory/size_math.h"
#include "mlp/forward_core.h"

namespace sparse_mlp::mlp {
namespace {

using internal::NeuronPtrs;

// Rows 0..count-1 of strided arrays.
class StridedRows final : public internal::RowSource {
 public:
  explicit StridedRows(const NeuronRows& rows) {
    const size_t elem = DTypeSize(rows.dtype);
    base_[0] = static_cast<const uint8_t*>(rows.gate);
    base_[1] = static_cast<const uint8_t*>(rows.up);
    base_[2] = static_cast<const uint8_t*>(rows.down);
    stride_[0] = rows.gate_stride * elem;
    stride_[1] = rows.up_stride * elem;
    stride_[2] = rows.down_stride * elem;
  }
  void Locate(size_t first, size_t n, NeuronPtrs* out) const override {
    for (size_t k = 0; k < n; ++k) Row(first + k, &out[k]);
  }
  void Row(size_t r, NeuronPtrs* out) const {
    for (int p = 0; p < 3; ++p) {
      out->row[p] = base_[p] == nullptr ? nullptr : base_[p] + r * stride_[p];
    }
    out->neuron = static_cast<uint32_t>(r);
  }

 private:
  const uint8_t* base_[3];
  size_t stride_[3];
};

// Rows indices[0..n) of the same arrays.
// (neuron_of: row -> the neuron whose gate activation it takes, for rows
// that are slots of a cache; null: the row index itself.)
class IndexedRows final : public internal::RowSource {
 public:
  IndexedRows(const NeuronRows& rows, absl::Span<const uint32_t> indices,
              const uint32_t* neuron_of = nullptr)
      : rows_(rows), indices_(indices), neuron_of_(neuron_of) {}
  void Locate(size_t first, size_t n, NeuronPtrs* out) const override {
    for (size_t k = 0; k < n; ++k) {
      const uint32_t r = indices_[first + k];
      rows_.Row(r, &out[k]);
      if (neuron_of_ != nullptr) out[k].neuron = neuron_of_[r];
    }
  }

 private:
  StridedRows rows_;
  absl::Span<const uint32_t> indices_;
  const uint32_t* neuron_of_;
};

internal::Problem ProblemOf(const NeuronRows& rows, size_t count) {
  internal::Problem p;
  p.dtype = rows.dtype;
  p.hidden_size = rows.hidden_size;
  p.count = count;
  p.has_gate = rows.gate != nullptr;
  return p;
}

// ForwardIndexed, with the gate's activations given when gate_act is not
// null (rows.gate must then be null; row r takes neuron neuron_of[r]'s, or
// r's without a map).
absl::Status IndexedForward(const NeuronRows& rows, absl::Span<const uint32_t> indices,
                            const float* gate_act, size_t gate_act_stride,
                            const uint32_t* neuron_of, const ConstTokens& x, const Tokens& y,
                            const ForwardOptions& options, Workspace* workspace) {
  if (absl::Status s = internal::ValidateCall(rows.dtype, rows.hidden_size, x, y, options);
      !s.ok()) {
    return s;
  }
  if (gate_act != nullptr && rows.gate != nullptr) {
    return absl::InvalidArgumentError(
        "a forward with given gate activations reads up and down rows only; gate must be null");
  }
  if (absl::Status s = internal::ValidateRows(rows); !s.ok()) return s;
  if (absl::Status s = internal::ValidateIndices(indices, rows.count); !s.ok()) return s;
  if (absl::Status s =
          internal::PrepareWorkspace(rows.dtype, rows.hidden_size, 0, x, options, workspace);
      !s.ok()) {
    return s;
  }
  internal::Problem p = ProblemOf(rows, indices.size());
  p.prefetch = true;
  p.gate_act = gate_act;
  p.gate_act_stride = gate_act_stride;
  internal::Run(IndexedRows(rows, indices, neuron_of), p, x, y, options, workspace);
  return absl::OkStatus();
}

}  // namespace

absl::Status Forward(const NeuronRows& rows, const ConstTokens& x, const Tokens& y,
                     const ForwardOptions& options, Workspace* workspace) {
  if (absl::Status s = internal::ValidateCall(rows.dtype, rows.hidden_size, x, y, options);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = internal::ValidateRows(rows); !s.ok()) return s;
  if (absl::Status s =
          internal::PrepareWorkspace(rows.dtype, rows.hidden_size, 0, x, options, workspace);
      !s.ok()) {
    return s;
  }
  internal::Run(StridedRows(rows), ProblemOf(rows, rows.count), x, y, options, workspace);
  return absl::OkStatus();
}

absl::Status ForwardIndexed(const NeuronRows& rows, absl::Span<const uint32_t> indices,
                            const ConstTokens& x, const Tokens& y,
                            const ForwardOptions& options, Workspace* workspace) {
  return IndexedForward(rows, indices, nullptr, 0, nullptr, x, y, options, workspace);
}

absl::Status ForwardLinear(const LinearWeights& w, const ConstTokens& x, const Tokens& y,
                           const ForwardOptions& options, Workspace* workspace) {
  if (absl::Status s = internal::ValidateCall(w.dtype, w.hidden_size, x, y, options);
      !s.ok()) {
    return s;
  }
  if (w.intermediate_size == 0) {
    return absl::InvalidArgumentError("intermediate_size must be positive, got 0");
  }
  if (w.up == nullptr) return absl::InvalidArgumentError("up weight is null");
  if (w.down == nullptr) return absl::InvalidArgumentError("down weight is null");
  absl::StatusOr<size_t> bytes = memory::CheckedMul(w.hidden_size, w.intermediate_size);
  if (bytes.ok()) bytes = memory::CheckedMul(*bytes, DTypeSize(w.dtype));
  if (!bytes.ok()) return bytes.status();
  if (absl::Status s = internal::PrepareWorkspace(w.dtype, w.hidden_size, w.intermediate_size,
                                                  x, options, workspace);
      !s.ok()) {
    return s;
  }
  internal::RunLinear(w, x, y, options, workspace);
  return absl::OkStatus();
}

namespace internal {

absl::Status ValidateIndices(absl::Span<const uint32_t> indices, size_t num_rows) {
  for (size_t k = 0; k < indices.size(); ++k) {
    if (indices[k] >= num_rows) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "indices[%u] = %u is out of range for %u neurons", k, indices[k], num_rows));
    }
    if (k > 0 && indices[k] <= indices[k - 1]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "indices[%u] = %u follows indices[%u] = %u: indices must be ascending and "
          "distinct",
          k, indices[k], k - 1, indices[k - 1]));
    }
  }
  return absl::OkStatus();
}

absl::Status ForwardIndexedGivenGate(const NeuronRows& rows, absl::Span<const uint32_t> indices,
                                     const float* gate_act, size_t gate_act_stride,
                                     const ConstTokens& x, const Tokens& y,
                                     const ForwardOptions& options, Workspace* workspace,
                                     const uint32_t* neuron_of) {
  if (gate_act == nullptr) return absl::InvalidArgumentError("gate activations are null");
  return IndexedForward(rows, indices, gate_act, gate_act_stride, neuron_of, x, y, options,
                        workspace);
}

}  // namespace internal
}  // namespace sparse_mlp::mlp
