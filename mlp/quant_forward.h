// The sparse MLP forward over quantized rows (quant/format.h: int8 or q4
// with float16 group scales): y = down(act(gate x) * (up x)) over a set of
// neurons, as mlp/mlp_forward.h computes it on float rows, reading about a
// quarter (int8) or an eighth (q4) of the float32 bytes.
//
// Rows are neuron-major quantized rows of quant::RowLayout(format, H): a
// neuron's gate row, up row and down column (its down column is quantized
// along H, the way quant::QuantizeRow quantizes any row), each
// layout.row_bytes() bytes, strides in bytes. x and y are float32
// [tokens, H]; sums are float32 over the dequantized weights q x scale, so
// the result matches a float64 forward on those weights to float32
// rounding (tests check every SIMD level and thread count against it).
//
// Errors (InvalidArgument naming the value; nothing written to y): those of
// the format (quant::RowLayout::Create), of x, y and the options as in
// mlp_forward.h (x and y must be float32), null rows, strides smaller than
// a row, indices out of range or not ascending. Thread-compatible
// (the workspace is the caller's); no allocation once the workspace fits.
#ifndef SPARSE_MLP_MLP_QUANT_FORWARD_H_
#define SPARSE_MLP_MLP_QUANT_FORWARD_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "mlp/mlp_forward.h"
#include "quant/format.h"

namespace sparse_mlp::mlp {

struct QuantNeuronRows {
  quant::QuantFormat format;
  size_t hidden_size = 0;
  size_t count = 0;            // rows in the arrays
  const void* gate = nullptr;  // null: a gate-less MLP
  size_t gate_stride = 0;      // bytes from one row to the next
  const void* up = nullptr;
  size_t up_stride = 0;
  const void* down = nullptr;  // neuron-major: down's column j as a quantized row
  size_t down_stride = 0;
};

// Every one of rows.count neurons.
absl::Status ForwardQuant(const QuantNeuronRows& rows, const ConstTokens& x, const Tokens& y,
                          const ForwardOptions& options, Workspace* workspace);

// The neurons `indices` (ascending, distinct, < rows.count), read in place.
absl::Status ForwardIndexedQuant(const QuantNeuronRows& rows, absl::Span<const uint32_t> indices,
                                 const ConstTokens& x, const Tokens& y,
                                 const ForwardOptions& options, Workspace* workspace);

// nn.Linear's layout, dense: gate (null: none) and up are I quantized rows
// of H weights each, down is H quantized rows of I weights each (the
// nn.Linear [H, I] down matrix quantized along its rows, so the format's
// group must divide I as well as H), all contiguous. Every neuron.
struct QuantLinearWeights {
  quant::QuantFormat format;
  size_t hidden_size = 0;
  size_t intermediate_size = 0;
  const void* gate = nullptr;
  const void* up = nullptr;
  const void* down = nullptr;
};

absl::Status ForwardLinearQuant(const QuantLinearWeights& weights, const ConstTokens& x,
                                const Tokens& y, const ForwardOptions& options,
                                Workspace* workspace);

namespace internal {

// ForwardIndexedQuant over up and down rows (rows.gate null) with the
// gate's activations given, as mlp::internal::ForwardIndexedGivenGate
// (forward_core.h) for float rows: for the gate-first steps of step/.
absl::Status ForwardIndexedQuantGivenGate(const QuantNeuronRows& rows,
                                          absl::Span<const uint32_t> indices, const float* gate_act,
                                          size_t gate_act_stride, const ConstTokens& x,
                                          const Tokens& y, const ForwardOptions& options,
                                          Workspace* workspace,
                                          const uint32_t* neuron_of = nullptr);

}  // namespace internal
}  // namespace sparse_mlp::mlp

#endif  // SPARSE_MLP_MLP_QUANT_FORWARD_H_
