// The sparse MLP forward: y = down(act(gate x) * (up x)) over a set of
// neurons, for x of T >= 1 tokens, as fast as reading the weights allows.
//
// A gated MLP layer has gate[I, H], up[I, H] and down[H, I]; a gate-less
// one (OPT, ReLU-style) computes y = down(act(up x)). For the neurons of a
// set S (all I, the active ones of a contextual-sparsity predictor, or the
// packed rows of a cache/ WeightCache):
//   h_j[t] = act(<gate_j, x_t>) * <up_j, x_t>     (gate-less: act(<up_j, x_t>))
//   y_t    = sum_{j in S} h_j[t] * down_j          (+ y_t itself with accumulate)
// where down_j is neuron j's column of down (a row of the neuron-major
// down). Three sources of rows, one kernel family (mlp/kernels.h):
//   Forward        neuron-major rows 0..count-1 of strided arrays (the
//                  dense weights with down transposed once, or a cache's
//                  views: step/layer_step.h);
//   ForwardIndexed sorted active indices into the full neuron-major arrays
//                  (no cache; the next neuron's rows are prefetched);
//   ForwardLinear  all neurons in PyTorch's nn.Linear layout (down [H, I]
//                  as given: h for every neuron, then one dot per output).
// Weights and x are read once per call for up to kTokenChunk tokens (more
// tokens run in chunks of kTokenChunk, each reading the weights again: for
// prefill-sized T use a GEMM library).
//
// Types: weights float32, bfloat16 or float16; x and y float32 or the
// weights' type (independently). Sums accumulate in float32.
//
// Precision contract (tests/mlp_test.cc checks it against float64):
//   - float32 and float16 weights: products are exact in float32 (float16
//     widens exactly), so the error is float32 summation only: per output
//     |y - y_exact| <= 2^-24 x (H + count + 16) x M, where M is the sum of
//     the magnitudes of the terms involved (|weights| x |inputs|, through
//     the activation's slope);
//   - bfloat16 weights: x is rounded to bfloat16 once per call, and each
//     neuron's activation h_j[t] before the down projection, as bf16 GEMMs
//     (and PyTorch's bf16 MLP) do and as vdpbf16ps needs; then as above
//     (bfloat16 x bfloat16 products are exact in float32). Each rounding
//     adds up to 2^-9 relative to its term;
//   - a bfloat16 or float16 y is the float32 result rounded to nearest even.
// Determinism: the same inputs, thread team size and SIMD level give the
// same bits (fixed partition of the neurons, partial sums added in thread
// order). Different levels or team sizes differ within the bound above.
//
// Threading: options.num_threads OpenMP threads in one parallel region per
// call (none below ~1 MiB of weights), work split over the team the runtime
// actually starts. Thread-compatible: concurrent calls need distinct
// Workspaces and outputs.
//
// Allocation: only in the Workspace, when a call needs more than it holds
// (Workspace::Reserve sizes it up front); calls that fit never allocate.
//
// Errors (InvalidArgument naming the value unless noted): hidden_size 0, a
// dtype outside the three, null up/down (or gate where a gate is given
// through NeuronRows' gate stride), a stride smaller than H, tokens 0 or
// x/y token counts differing, x or y of an unsupported type, indices out of
// range, unsorted or repeated, an activation outside the enum, num_threads
// outside [1, kMaxThreads], sizes that overflow (OutOfRange), workspace
// allocation failure (ResourceExhausted). Nothing is written on error.
// y may be x itself (in place: y is written only after every read of x);
// any other overlap of y with x or the weights is undefined.
#ifndef SPARSE_MLP_MLP_MLP_FORWARD_H_
#define SPARSE_MLP_MLP_MLP_FORWARD_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "memory/aligned_buffer.h"
#include "mlp/activation.h"
#include "platform/dtype.h"
#include "platform/simd_level.h"

namespace sparse_mlp::mlp {

using ::sparse_mlp::DType;  // mlp::DType, as callers have always spelled it

// Tokens processed per pass over the weights.
inline constexpr size_t kTokenChunk = 32;

// Neuron-major rows of `count` neurons: row j of a part starts at
// part + j x part_stride elements and holds hidden_size elements.
struct NeuronRows {
  DType dtype = DType::kFloat32;
  size_t hidden_size = 0;
  size_t count = 0;
  const void* gate = nullptr;  // null: a gate-less MLP
  size_t gate_stride = 0;
  const void* up = nullptr;
  size_t up_stride = 0;
  const void* down = nullptr;  // neuron-major: down's column j as a row
  size_t down_stride = 0;
};

// PyTorch nn.Linear layout, contiguous: gate and up [I, H], down [H, I].
struct LinearWeights {
  DType dtype = DType::kFloat32;
  size_t hidden_size = 0;
  size_t intermediate_size = 0;
  const void* gate = nullptr;  // null: a gate-less MLP
  const void* up = nullptr;
  const void* down = nullptr;
};

// [tokens, H] activations; token t starts at data + t x stride elements.
struct ConstTokens {
  const void* data = nullptr;
  size_t tokens = 0;
  size_t stride = 0;
  DType dtype = DType::kFloat32;
};

struct Tokens {
  void* data = nullptr;
  size_t tokens = 0;
  size_t stride = 0;
  DType dtype = DType::kFloat32;
};

struct ForwardOptions {
  Activation activation = Activation::kSiLU;
  bool accumulate = false;  // y += MLP(x) (a residual add), else y = MLP(x)
  int num_threads = 1;      // [1, kMaxThreads]
  SimdLevel simd = SimdLevel::kBest;
  // Quantized rows only (mlp/quant_forward.h; ignored for float rows): x is
  // rounded to int8 per block of 32 (scale max|x| / 127, llama.cpp's q8_0)
  // and the gate and up dots of int8 rows sum integer products (AVX-512
  // VNNI where the CPU has it; elsewhere the float kernels on the rounded
  // x). Results are then those of float64 on the dequantized weights and
  // the rounded x, to float32 rounding. The neuron-major down projection is
  // unchanged; in the nn.Linear layout (ForwardLinearQuant, I a multiple of
  // 32) the activations h are rounded the same way, per block of 32
  // neurons, and down's rows are integer dots too (llama.cpp's order).
  // H must be a multiple of 32. The default, false, keeps x float32.
  bool quantize_x = false;
};

// Scratch of the forward: per-thread partial sums, x in the kernels' form
// and the linear path's activations. Grows when a call needs more, never
// shrinks. Move-only; one call at a time.
class Workspace {
 public:
  Workspace() = default;

  // Sizes the workspace for calls of up to `tokens` tokens of hidden_size
  // on num_threads threads (intermediate_size: for ForwardLinear; 0
  // otherwise), so that such calls never allocate. OutOfRange on overflow,
  // ResourceExhausted on allocation failure (workspace unchanged), and the
  // thread-count error.
  absl::Status Reserve(size_t tokens, size_t hidden_size, size_t intermediate_size,
                       int num_threads);

  size_t bytes() const {
    return partials_.size() + vectors_.size() + hidden_.size() + int8_x_.size();
  }

 private:
  friend struct WorkspaceAccess;
  memory::AlignedBuffer partials_;  // per thread: [chunk, H] sums, coefficients
  memory::AlignedBuffer vectors_;   // x in the kernels' vector form
  memory::AlignedBuffer hidden_;    // ForwardLinear: [chunk, I] activations
  memory::AlignedBuffer int8_x_;    // quantize_x: x rounded per block
  size_t per_thread_bytes_ = 0;     // of partials_
};

absl::Status Forward(const NeuronRows& rows, const ConstTokens& x, const Tokens& y,
                     const ForwardOptions& options, Workspace* workspace);

// rows.count is the number of rows in the arrays (I); the set is `indices`
// (ascending, distinct, < rows.count).
absl::Status ForwardIndexed(const NeuronRows& rows, absl::Span<const uint32_t> indices,
                            const ConstTokens& x, const Tokens& y,
                            const ForwardOptions& options, Workspace* workspace);

absl::Status ForwardLinear(const LinearWeights& weights, const ConstTokens& x, const Tokens& y,
                           const ForwardOptions& options, Workspace* workspace);

}  // namespace sparse_mlp::mlp

#endif  // SPARSE_MLP_MLP_MLP_FORWARD_H_
