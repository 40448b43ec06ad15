// The forward's driver (internal to //mlp): validation, workspace sizing
// and the parallel loop over a set of neurons whose rows a RowSource
// locates, so that dense rows, indices, a cache's packed rows and the fused
// layer step (rows half in the cache, half in the sources, some stored into
// their slots on the way) share one loop and one set of kernels.
#ifndef SPARSE_MLP_MLP_FORWARD_CORE_H_
#define SPARSE_MLP_MLP_FORWARD_CORE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "mlp/mlp_forward.h"
#include "quant/format.h"

namespace sparse_mlp::mlp {

// The driver's view of a Workspace's buffers.
struct WorkspaceAccess {
  static uint8_t* Partials(Workspace* w) { return w->partials_.data(); }
  static size_t PerThreadBytes(const Workspace* w) { return w->per_thread_bytes_; }
  static uint8_t* Vectors(Workspace* w) { return w->vectors_.data(); }
  static uint8_t* Int8X(Workspace* w) { return w->int8_x_.data(); }
  static float* Hidden(Workspace* w) { return reinterpret_cast<float*>(w->hidden_.data()); }
  // Grows each buffer to at least the given size (per-thread partials for
  // `threads` threads); ResourceExhausted leaves the workspace unchanged.
  static absl::Status Grow(Workspace* w, size_t per_thread_bytes, int threads,
                           size_t vector_bytes, size_t hidden_bytes, size_t int8_x_bytes = 0);
};

namespace internal {

// Neuron k's rows (gate, up, down; gate null without one) and, where the
// driver must also store a row into a cache slot, its destination (null:
// no store). Stores happen once per call, with streaming stores, while the
// row is still in the core's caches.
struct NeuronPtrs {
  const uint8_t* row[3] = {nullptr, nullptr, nullptr};
  uint8_t* store[3] = {nullptr, nullptr, nullptr};
  // The neuron's index in the layer: read only with Problem::gate_act.
  uint32_t neuron = 0;
};

class RowSource {
 public:
  virtual ~RowSource() = default;
  // Fills out[0, n) for neurons [first, first + n) of the set.
  virtual void Locate(size_t first, size_t n, NeuronPtrs* out) const = 0;
};

struct Problem {
  DType dtype = DType::kFloat32;
  size_t hidden_size = 0;
  size_t count = 0;       // neurons in the set
  bool has_gate = true;
  bool prefetch = false;  // rows scattered: prefetch the next neuron's
  bool stores = false;    // some NeuronPtrs carry stores
  // Gate activations computed beforehand (a gate-first step): token t's
  // act(<gate_j, x_t>) at gate_act[t x gate_act_stride + j] for neuron j
  // (NeuronPtrs::neuron); then h_j[t] = gate_act[..] x <up_j, x_t>, no
  // gate rows are read (has_gate must be false) and no activation applied.
  const float* gate_act = nullptr;
  size_t gate_act_stride = 0;
  // Quantized rows (mlp/quant_forward.h): every row is one row of this
  // layout, x and y are float32, and dtype is ignored. Null: rows of dtype.
  const quant::RowLayout* quant = nullptr;
};

// Checks the weights' type and width, x, y and the options.
absl::Status ValidateCall(DType dtype, size_t hidden_size, const ConstTokens& x,
                          const Tokens& y, const ForwardOptions& options);

// ForwardOptions::quantize_x needs H a multiple of 32 (InvalidArgument
// naming H otherwise).
absl::Status CheckQuantizeX(size_t hidden_size, const ForwardOptions& options);

// Rounds tokens [0, x.tokens) of float32 x into the workspace's Int8X
// buffer (ForwardOptions::quantize_x; after PrepareWorkspace); returns it.
const uint8_t* RoundX(const ConstTokens& x, size_t hidden, Workspace* workspace);

// Checks that indices are ascending, distinct and below num_rows.
absl::Status ValidateIndices(absl::Span<const uint32_t> indices, size_t num_rows);

// Checks strided neuron-major rows of `count` neurons.
absl::Status ValidateRows(const NeuronRows& rows);

// Grows the workspace for this call (intermediate_size: ForwardLinear's
// I, else 0).
absl::Status PrepareWorkspace(DType dtype, size_t hidden_size, size_t intermediate_size,
                              const ConstTokens& x, const ForwardOptions& options,
                              Workspace* workspace);

// Computes y (after ValidateCall and PrepareWorkspace succeeded; cannot
// fail then).
void Run(const RowSource& source, const Problem& problem, const ConstTokens& x,
         const Tokens& y, const ForwardOptions& options, Workspace* workspace);

// act(<row_j, x_t>) for the `rows.count` rows of rows.up (gate and down
// unused) and every token: out[t x out_stride + j], float32 (x in the
// kernels' form, as Run reads it). abs_out (optional): the magnitudes too.
// After ValidateCall and PrepareWorkspace; cannot fail then.
void RunActivations(const NeuronRows& rows, const ConstTokens& x, const ForwardOptions& options,
                    Workspace* workspace, float* out, float* abs_out, size_t out_stride);

// RunActivations over `count` quantized rows of `layout`, row j at
// rows + j x stride bytes (x float32, as the quantized forward reads it).
void RunQuantActivations(const quant::RowLayout& layout, size_t count, const void* rows,
                         size_t stride, const ConstTokens& x, const ForwardOptions& options,
                         Workspace* workspace, float* out, float* abs_out, size_t out_stride);

// B (A x_t) for A [r, H] (rows a, stride a_stride) and B [I, r] (rows b,
// stride b_stride), both of `dtype`: out[t x out_stride + i], float32. The
// rank-r intermediate is float32, rounded to bfloat16 for bfloat16 weights
// (as the forward rounds activations before down). z_scratch: tokens x r
// floats. After ValidateCall and PrepareWorkspace.
void RunLowRank(DType dtype, size_t hidden, size_t rank, size_t outputs, const void* a,
                size_t a_stride, const void* b, size_t b_stride, const ConstTokens& x,
                const ForwardOptions& options, Workspace* workspace, float* z_scratch,
                float* out, size_t out_stride);

// ForwardIndexed over up and down rows (rows.gate null) with the gate's
// activations given (Problem::gate_act); validates as ForwardIndexed. Row
// r takes neuron neuron_of[r]'s activations (null: neuron r's).
absl::Status ForwardIndexedGivenGate(const NeuronRows& rows, absl::Span<const uint32_t> indices,
                                     const float* gate_act, size_t gate_act_stride,
                                     const ConstTokens& x, const Tokens& y,
                                     const ForwardOptions& options, Workspace* workspace,
                                     const uint32_t* neuron_of = nullptr);

// The nn.Linear-layout forward (after validation and PrepareWorkspace with
// the intermediate size).
void RunLinear(const LinearWeights& weights, const ConstTokens& x, const Tokens& y,
               const ForwardOptions& options, Workspace* workspace);

// The same over quantized rows: gate (null: none) and up rows of
// rows_layout (H weights), down's H rows of down_layout (I weights),
// contiguous; x and y float32.
void RunLinearQuant(const quant::RowLayout& rows_layout, const quant::RowLayout& down_layout,
                    size_t intermediate, const void* gate, const void* up, const void* down,
                    const ConstTokens& x, const Tokens& y, const ForwardOptions& options,
                    Workspace* workspace);

}  // namespace internal
}  // namespace sparse_mlp::mlp

#endif  // SPARSE_MLP_MLP_FORWARD_CORE_H_
