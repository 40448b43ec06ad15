#include "mlp/quant_forward.h"

#include "absl/strings/str_format.h"
#include "memory/size_math.h"
#include "mlp/forward_core.h"

namespace sparse_mlp::mlp {
namespace {

using internal::NeuronPtrs;

// Rows of strided quantized arrays, all or by index.
class QuantRows final : public internal::RowSource {
 public:
  QuantRows(const QuantNeuronRows& rows, absl::Span<const uint32_t> indices, bool indexed,
            const uint32_t* neuron_of = nullptr)
      : indices_(indices), indexed_(indexed), neuron_of_(neuron_of) {
    base_[0] = static_cast<const uint8_t*>(rows.gate);
    base_[1] = static_cast<const uint8_t*>(rows.up);
    base_[2] = static_cast<const uint8_t*>(rows.down);
    stride_[0] = rows.gate_stride;
    stride_[1] = rows.up_stride;
    stride_[2] = rows.down_stride;
  }
  void Locate(size_t first, size_t n, NeuronPtrs* out) const override {
    for (size_t k = 0; k < n; ++k) {
      const size_t r = indexed_ ? indices_[first + k] : first + k;
      for (int p = 0; p < 3; ++p) {
        out[k].row[p] = base_[p] == nullptr ? nullptr : base_[p] + r * stride_[p];
      }
      out[k].neuron = neuron_of_ != nullptr ? neuron_of_[r] : static_cast<uint32_t>(r);
    }
  }

 private:
  const uint8_t* base_[3];
  size_t stride_[3];
  absl::Span<const uint32_t> indices_;
  bool indexed_;
  const uint32_t* neuron_of_;  // row -> the neuron whose gate activation it takes
};

absl::Status ValidateQuantRows(const QuantNeuronRows& rows, const quant::RowLayout& layout) {
  if (rows.count == 0) return absl::OkStatus();
  struct Part {
    const char* name;
    const void* data;
    size_t stride;
  };
  const Part parts[3] = {{"gate", rows.gate, rows.gate_stride},
                         {"up", rows.up, rows.up_stride},
                         {"down", rows.down, rows.down_stride}};
  for (const Part& p : parts) {
    if (p.data == nullptr) {
      if (p.name[0] == 'g') continue;  // gate-less
      return absl::InvalidArgumentError(absl::StrFormat("%s rows are null", p.name));
    }
    if (p.stride < layout.row_bytes()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s row stride %u bytes is smaller than a %s row of %u weights (%u bytes)", p.name,
          p.stride, quant::QuantTypeName(layout.type()), layout.hidden(), layout.row_bytes()));
    }
    absl::StatusOr<size_t> bytes = memory::CheckedMul(rows.count, p.stride);
    if (!bytes.ok()) return bytes.status();
  }
  return absl::OkStatus();
}

absl::Status RunQuant(const QuantNeuronRows& rows, absl::Span<const uint32_t> indices, bool indexed,
                      const ConstTokens& x, const Tokens& y, const ForwardOptions& options,
                      Workspace* workspace, const float* gate_act = nullptr,
                      size_t gate_act_stride = 0, const uint32_t* neuron_of = nullptr) {
  absl::StatusOr<quant::RowLayout> layout = quant::RowLayout::Create(rows.format, rows.hidden_size);
  if (!layout.ok()) return layout.status();
  // x and y float32: ValidateCall with float32 "weights" allows nothing else.
  if (absl::Status s = internal::ValidateCall(DType::kFloat32, rows.hidden_size, x, y, options);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ValidateQuantRows(rows, *layout); !s.ok()) return s;
  if (absl::Status s = internal::CheckQuantizeX(rows.hidden_size, options); !s.ok()) return s;
  if (gate_act != nullptr && rows.gate != nullptr) {
    return absl::InvalidArgumentError(
        "a forward with given gate activations reads up and down rows only; gate must be null");
  }
  if (indexed) {
    if (absl::Status s = internal::ValidateIndices(indices, rows.count); !s.ok()) return s;
  }
  if (absl::Status s =
          internal::PrepareWorkspace(DType::kFloat32, rows.hidden_size, 0, x, options, workspace);
      !s.ok()) {
    return s;
  }
  internal::Problem p;
  p.dtype = DType::kFloat32;
  p.hidden_size = rows.hidden_size;
  p.count = indexed ? indices.size() : rows.count;
  p.has_gate = rows.gate != nullptr;
  p.prefetch = indexed;
  p.quant = &*layout;
  p.gate_act = gate_act;
  p.gate_act_stride = gate_act_stride;
  internal::Run(QuantRows(rows, indices, indexed, neuron_of), p, x, y, options, workspace);
  return absl::OkStatus();
}

}  // namespace

absl::Status ForwardQuant(const QuantNeuronRows& rows, const ConstTokens& x, const Tokens& y,
                          const ForwardOptions& options, Workspace* workspace) {
  return RunQuant(rows, {}, false, x, y, options, workspace);
}

absl::Status ForwardIndexedQuant(const QuantNeuronRows& rows, absl::Span<const uint32_t> indices,
                                 const ConstTokens& x, const Tokens& y,
                                 const ForwardOptions& options, Workspace* workspace) {
  return RunQuant(rows, indices, true, x, y, options, workspace);
}

absl::Status ForwardLinearQuant(const QuantLinearWeights& w, const ConstTokens& x, const Tokens& y,
                                const ForwardOptions& options, Workspace* workspace) {
  absl::StatusOr<quant::RowLayout> rows = quant::RowLayout::Create(w.format, w.hidden_size);
  if (!rows.ok()) return rows.status();
  if (w.intermediate_size == 0) {
    return absl::InvalidArgumentError("intermediate_size must be positive, got 0");
  }
  absl::StatusOr<quant::RowLayout> down = quant::RowLayout::Create(w.format, w.intermediate_size);
  if (!down.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("down's rows of intermediate_size %u weights: %s", w.intermediate_size,
                        down.status().message()));
  }
  if (absl::Status s = internal::ValidateCall(DType::kFloat32, w.hidden_size, x, y, options);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = internal::CheckQuantizeX(w.hidden_size, options); !s.ok()) return s;
  if (w.up == nullptr) return absl::InvalidArgumentError("up rows are null");
  if (w.down == nullptr) return absl::InvalidArgumentError("down rows are null");
  absl::StatusOr<size_t> bytes = memory::CheckedMul(w.intermediate_size, rows->row_bytes());
  if (bytes.ok()) bytes = memory::CheckedMul(w.hidden_size, down->row_bytes());
  if (!bytes.ok()) return bytes.status();
  if (absl::Status s = internal::PrepareWorkspace(DType::kFloat32, w.hidden_size,
                                                  w.intermediate_size, x, options, workspace);
      !s.ok()) {
    return s;
  }
  internal::RunLinearQuant(*rows, *down, w.intermediate_size, w.gate, w.up, w.down, x, y, options,
                           workspace);
  return absl::OkStatus();
}

namespace internal {

absl::Status ForwardIndexedQuantGivenGate(const QuantNeuronRows& rows,
                                          absl::Span<const uint32_t> indices, const float* gate_act,
                                          size_t gate_act_stride, const ConstTokens& x,
                                          const Tokens& y, const ForwardOptions& options,
                                          Workspace* workspace, const uint32_t* neuron_of) {
  if (gate_act == nullptr) return absl::InvalidArgumentError("gate activations are null");
  return RunQuant(rows, indices, true, x, y, options, workspace, gate_act, gate_act_stride,
                  neuron_of);
}

}  // namespace internal
}  // namespace sparse_mlp::mlp
