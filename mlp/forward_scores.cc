// The score passes of the mask sources (internal to //mlp): every neuron's
// activation act(<row_j, x>) over float or quantized rows (gate-first
// selection), and the low-rank predictor's B (A x).
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "mlp/activation.h"
#include "mlp/forward_core.h"
#include "mlp/forward_util.h"
#include "mlp/kernels.h"
#include "mlp/quant_kernels.h"
#include "platform/float16.h"

namespace sparse_mlp::mlp::internal {

namespace {

// act(dot) for rows [begin, end) of a thread's share, `group` rows per dot
// call; dot(rows, n, t0, tc, dots) computes n rows' dots for tokens
// [t0, t0 + tc).
template <typename RowAt, typename Dot>
void ActivationsOfRows(size_t count, size_t tokens, const ForwardOptions& o, int threads,
                       RowAt row_at, Dot dot, float* out, float* abs_out, size_t out_stride) {
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    size_t begin, end;
    Share(count, omp_get_thread_num(), omp_get_num_threads(), 1, &begin, &end);
    float dots[kMaxDotRows * kTokenChunk];
    for (size_t t0 = 0; t0 < tokens; t0 += kTokenChunk) {
      const size_t tc = std::min(kTokenChunk, tokens - t0);
      // Two rows per call at one token (two read streams, as Run), four
      // from kPairedNeuronTokens tokens on.
      const size_t group = tc >= kPairedNeuronTokens ? kMaxDotRows : 2;
      for (size_t j = begin; j < end; j += group) {
        const size_t g = std::min(group, end - j);
        const void* r[kMaxDotRows];
        for (size_t q = 0; q < g; ++q) r[q] = row_at(j + q);
        dot(r, g, t0, tc, dots);
        for (size_t q = 0; q < g; ++q) {
          for (size_t t = 0; t < tc; ++t) {
            const float a = Activate(o.activation, dots[q * tc + t]);
            out[(t0 + t) * out_stride + j + q] = a;
            if (abs_out != nullptr) abs_out[(t0 + t) * out_stride + j + q] = std::fabs(a);
          }
        }
      }
    }
  }
}

}  // namespace

void RunActivations(const NeuronRows& rows, const ConstTokens& x, const ForwardOptions& o,
                    Workspace* ws, float* out, float* abs_out, size_t out_stride) {
  const size_t hidden = rows.hidden_size;
  const Kernels k = SelectKernels(rows.dtype, o.simd);
  const Vectors v = PrepareVectors(rows.dtype, x, hidden, ws);
  const size_t row_bytes = rows.up_stride * DTypeSize(rows.dtype);
  const auto* base = static_cast<const uint8_t*>(rows.up);
  ActivationsOfRows(
      rows.count, x.tokens, o,
      ThreadsFor(rows.count * hidden * DTypeSize(rows.dtype), o.num_threads),
      [&](size_t j) { return base + j * row_bytes; },
      [&](const void* const* r, size_t g, size_t t0, size_t tc, float* dots) {
        k.dot(r, g, VectorRow(v, rows.dtype, t0), v.stride, tc, hidden, dots);
      },
      out, abs_out, out_stride);
}

void RunQuantActivations(const quant::RowLayout& layout, size_t count, const void* rows,
                         size_t stride, const ConstTokens& x, const ForwardOptions& o,
                         Workspace* ws, float* out, float* abs_out, size_t out_stride) {
  const size_t hidden = layout.hidden();
  const QuantKernels k = SelectQuantKernels(layout.type(), o.simd);
  const Vectors v = PrepareVectors(DType::kFloat32, x, hidden, ws);
  const auto* base = static_cast<const uint8_t*>(rows);
  ActivationsOfRows(
      count, x.tokens, o, ThreadsFor(count * layout.row_bytes(), o.num_threads),
      [&](size_t j) { return base + j * stride; },
      [&](const void* const* r, size_t g, size_t t0, size_t tc, float* dots) {
        k.dot(r, g, reinterpret_cast<const float*>(VectorRow(v, DType::kFloat32, t0)), v.stride, tc,
              layout, dots);
      },
      out, abs_out, out_stride);
}

void RunLowRank(DType dtype, size_t hidden, size_t rank, size_t outputs, const void* a,
                size_t a_stride, const void* b, size_t b_stride, const ConstTokens& x,
                const ForwardOptions& o, Workspace* ws, float* z, float* out, size_t out_stride) {
  const Kernels k = SelectKernels(dtype, o.simd);
  const Vectors v = PrepareVectors(dtype, x, hidden, ws);
  const size_t elem = DTypeSize(dtype);
  const bool bf16 = dtype == DType::kBFloat16;
  const auto* a_rows = static_cast<const uint8_t*>(a);
  const auto* b_rows = static_cast<const uint8_t*>(b);
  // z in the kernels' vector form for B's rows: bfloat16 pairs for
  // bfloat16 weights, stored over the first half of z's scratch.
  auto* z16 = reinterpret_cast<uint16_t*>(z);
  const int threads = ThreadsFor((rank * hidden + outputs * rank) * elem, o.num_threads);

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int team = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    float dots[kMaxDotRows * kTokenChunk];
    for (size_t t0 = 0; t0 < x.tokens; t0 += kTokenChunk) {
      const size_t tc = std::min(kTokenChunk, x.tokens - t0);
      const void* xt = VectorRow(v, dtype, t0);
      // z = A x: rank rows, shared over the team.
      size_t begin, end;
      Share(rank, tid, team, 1, &begin, &end);
      for (size_t j = begin; j < end; j += kMaxDotRows) {
        const size_t g = std::min(kMaxDotRows, end - j);
        const void* r[kMaxDotRows];
        for (size_t q = 0; q < g; ++q) r[q] = a_rows + (j + q) * a_stride * elem;
        k.dot(r, g, xt, v.stride, tc, hidden, dots);
        for (size_t q = 0; q < g; ++q) {
          for (size_t t = 0; t < tc; ++t) {
            const float zv = dots[q * tc + t];
            if (bf16) {
              z16[t * rank + j + q] = FloatToBFloat16(zv);
            } else {
              z[t * rank + j + q] = zv;
            }
          }
        }
      }
#pragma omp barrier
      // scores = B z: I rows of length rank.
      Share(outputs, tid, team, 1, &begin, &end);
      for (size_t i = begin; i < end; i += kMaxDotRows) {
        const size_t g = std::min(kMaxDotRows, end - i);
        const void* r[kMaxDotRows];
        for (size_t q = 0; q < g; ++q) r[q] = b_rows + (i + q) * b_stride * elem;
        DotVectors(k, bf16, r, g, z16, z, rank, tc, rank, dots);
        for (size_t q = 0; q < g; ++q) {
          for (size_t t = 0; t < tc; ++t) out[(t0 + t) * out_stride + i + q] = dots[q * tc + t];
        }
      }
#pragma omp barrier
    }
  }
}

}  // namespace sparse_mlp::mlp::internal
