// Helpers the forward's drivers share (internal to //mlp): the block and
// token constants of the parallel loops, element loads and stores, x in the
// kernels' vector form, a thread's share of a range, the reduction of
// per-thread partial sums and the activation of pre-activations. Pure
// functions; no allocation (PrepareVectors writes into the workspace's
// vector buffer, which PrepareWorkspace sized).
#ifndef SPARSE_MLP_MLP_FORWARD_UTIL_H_
#define SPARSE_MLP_MLP_FORWARD_UTIL_H_

#include <cstddef>
#include <cstdint>

#include "mlp/activation.h"
#include "mlp/kernels.h"
#include "mlp/mlp_forward.h"
#include "mlp/quant_kernels.h"
#include "platform/dtype.h"

namespace sparse_mlp::mlp::internal {

// Neurons per block: the axpy's rows per pass over the partial sums.
inline constexpr size_t kBlock = kMaxAxpyRows;
// From this many tokens on, one dot call takes two neurons' rows: each x
// vector then serves four rows (loads per FMA halve, and x, which no
// longer fits L1 beyond a few tokens, is swept half as often). At one
// token a call keeps to one neuron: two concurrent read streams, the
// pattern the T = 1 measurements favoured (docs/performance.md); four rows
// at one token were not measured.
inline constexpr size_t kPairedNeuronTokens = 2;
// Prefetched lines at the start of the next neuron's rows: enough for the
// hardware prefetcher to pick the row up, which it cannot do before its
// first misses (direct-index rows are scattered).
inline constexpr size_t kPrefetchHeadBytes = 1024;

float Load(const void* p, DType dtype, size_t i);
void Store(void* p, DType dtype, size_t i, float v);
const uint8_t* TokenRow(const ConstTokens& x, size_t t);
uint8_t* TokenRow(const Tokens& y, size_t t);

// The activation of neuron pre-activations for tc tokens (ga: the gate's,
// ua: the up's); rounded to bfloat16 with round_bf16 (the down projection
// of bfloat16 weights multiplies bfloat16 by bfloat16, mlp_forward.h).
void Activations(Activation act, bool has_gate, bool round_bf16, const float* ga, const float* ua,
                 size_t tc, float* out);

// h[t] = ga[t x stride] x ua[t]: the gate's activations given (a
// gate-first step computed them while selecting the neurons).
void GivenGate(const float* ga, size_t stride, bool round_bf16, const float* ua, size_t tc,
               float* out);

// One dot call on vectors in the kernels' form for the weights: bfloat16
// pairs (v16) with bfloat16 weights, float32 (v32) otherwise.
void DotVectors(const Kernels& k, bool bf16, const void* const* rows, size_t n, const uint16_t* v16,
                const float* v32, size_t stride, size_t tc, size_t len, float* dots);

// The dot of quantized rows on x rounded to int8 (tokens [t0, t0 + tc) of
// the Int8X records RoundX wrote at int8_x): the integer kernel where there
// is one, else the float kernel on the rounded x.
void DotRoundedX(const QuantKernels& k, const void* const* rows, size_t n, const uint8_t* int8_x,
                 size_t t0, size_t tc, const quant::RowLayout& layout, float* dots);

// Prefetches the first kPrefetchHeadBytes of a row (null: nothing).
void PrefetchHead(const uint8_t* row, size_t row_bytes);

// x in the kernels' vector form: x itself, or converted into the workspace.
struct Vectors {
  const void* data;
  size_t stride;
};
Vectors PrepareVectors(DType weights, const ConstTokens& x, size_t hidden, Workspace* ws);
const uint8_t* VectorRow(const Vectors& v, DType weights, size_t t);

// A contiguous share of [0, n) for member `tid` of a team of `team`;
// `align` rounds the boundaries (not the end).
void Share(size_t n, int tid, int team, size_t align, size_t* begin, size_t* end);

// y rows [t0, t0 + tc), columns [c0, c1): the sum of the team's partials in
// thread order (plus y with accumulate). Partial rows are `width` floats in
// the kernels' column order (`paired`: YIndex).
void Reduce(const Tokens& y, bool accumulate, size_t t0, size_t tc, size_t c0, size_t c1,
            const uint8_t* partials, size_t per_thread, int team, size_t width, bool paired);

// y = 0 (nothing with accumulate): the forward over no neurons.
void WriteEmpty(const Tokens& y, bool accumulate, size_t hidden);

// `requested` threads for a call reading `weight_bytes`, or 1 below the
// size where a team pays for its start.
int ThreadsFor(size_t weight_bytes, int requested);

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_MLP_FORWARD_UTIL_H_
