// The dense forward in nn.Linear's layout (internal to //mlp), over float
// or quantized rows: every neuron's activation h = act(gate x) x (up x)
// into the workspace, then each output as a dot of a down row (I weights)
// with h. Two phases with a barrier between them; no partial sums.
#include <omp.h>

#include <algorithm>
#include <functional>

#include "mlp/forward_core.h"
#include "mlp/forward_util.h"
#include "mlp/kernels.h"
#include "mlp/quant_kernels.h"
#include "platform/float16.h"

namespace sparse_mlp::mlp::internal {
namespace {

// neuron_dots(j, g, t0, tc, dots): the dots of neurons [j, j + g) (gate
// then up row of each, or up alone) for tokens [t0, t0 + tc);
// store_h(t, q, h): token t's activation of neuron q into the workspace;
// down_dots(r, n, tc, dots): outputs [r, r + n) against the stored h;
// between(tc), if not null: run by one thread between the phases;
// rows_at_one_token: down rows per call at T = 1.
template <typename NeuronDots, typename StoreH, typename DownDots>
void LinearPhases(size_t hidden, size_t inter, bool has_gate, const ConstTokens& x, const Tokens& y,
                  const ForwardOptions& o, int threads, NeuronDots neuron_dots, StoreH store_h,
                  DownDots down_dots, const std::function<void(size_t)>* between,
                  size_t rows_at_one_token) {
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int team = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    size_t begin, end, r0, r1;
    Share(inter, tid, team, 1, &begin, &end);
    Share(hidden, tid, team, 1, &r0, &r1);
    float dots[kMaxDotRows * kTokenChunk], hv[kTokenChunk];
    for (size_t t0 = 0; t0 < x.tokens; t0 += kTokenChunk) {
      const size_t tc = std::min(kTokenChunk, x.tokens - t0);
      const size_t group = tc >= kPairedNeuronTokens ? 2 : 1;
      // Phase 1: every neuron's activation, [tc, I].
      for (size_t j = begin; j < end; j += group) {
        const size_t g = std::min(group, end - j);
        neuron_dots(j, g, t0, tc, dots);
        for (size_t q = j; q < j + g; ++q) {
          const size_t first = (q - j) * (has_gate ? 2 : 1);
          Activations(o.activation, has_gate, false, dots + first * tc,
                      dots + (first + (has_gate ? 1 : 0)) * tc, tc, hv);
          for (size_t t = 0; t < tc; ++t) store_h(t, q, hv[t]);
        }
      }
#pragma omp barrier
      if (between != nullptr) {
#pragma omp single
        (*between)(tc);
      }
      // Phase 2: output r of every token is <down row r, h_t>; several
      // rows per call from kPairedNeuronTokens tokens on.
      const size_t rows_per_call = tc >= kPairedNeuronTokens ? kMaxDotRows : rows_at_one_token;
      for (size_t r = r0; r < r1; r += rows_per_call) {
        const size_t n = std::min(rows_per_call, r1 - r);
        down_dots(r, n, tc, dots);
        for (size_t q = 0; q < n; ++q) {
          for (size_t t = 0; t < tc; ++t) {
            uint8_t* yt = TokenRow(y, t0 + t);
            const float before = o.accumulate ? Load(yt, y.dtype, r + q) : 0.0f;
            Store(yt, y.dtype, r + q, before + dots[q * tc + t]);
          }
        }
      }
#pragma omp barrier
    }
  }
}

}  // namespace

void RunLinear(const LinearWeights& w, const ConstTokens& x, const Tokens& y,
               const ForwardOptions& o, Workspace* ws) {
  const size_t hidden = w.hidden_size;
  const size_t inter = w.intermediate_size;
  const Kernels k = SelectKernels(w.dtype, o.simd);
  const Vectors v = PrepareVectors(w.dtype, x, hidden, ws);
  const size_t elem = DTypeSize(w.dtype);
  const size_t row_bytes = hidden * elem;
  // Every neuron's activation, [chunk, I]: bfloat16 for bfloat16 weights
  // (the down dot then runs bfloat16 x bfloat16), float32 otherwise.
  float* h = WorkspaceAccess::Hidden(ws);
  auto* h16 = reinterpret_cast<uint16_t*>(h);
  const bool bf16 = w.dtype == DType::kBFloat16;
  const auto* gate = static_cast<const uint8_t*>(w.gate);
  const auto* up = static_cast<const uint8_t*>(w.up);
  const auto* down = static_cast<const uint8_t*>(w.down);
  LinearPhases(
      hidden, inter, gate != nullptr, x, y, o,
      ThreadsFor(inter * (w.gate ? 3 : 2) * row_bytes, o.num_threads),
      [&](size_t j, size_t g, size_t t0, size_t tc, float* dots) {
        const void* rows[kMaxDotRows];
        size_t num_rows = 0;
        for (size_t q = j; q < j + g; ++q) {
          if (gate != nullptr) rows[num_rows++] = gate + q * row_bytes;
          rows[num_rows++] = up + q * row_bytes;
        }
        k.dot(rows, num_rows, VectorRow(v, w.dtype, t0), v.stride, tc, hidden, dots);
      },
      [&](size_t t, size_t q, float hv) {
        if (bf16) {
          h16[t * inter + q] = FloatToBFloat16(hv);
        } else {
          h[t * inter + q] = hv;
        }
      },
      [&](size_t r, size_t n, size_t tc, float* dots) {
        const void* rows[kMaxDotRows];
        for (size_t q = 0; q < n; ++q) rows[q] = down + (r + q) * inter * elem;
        DotVectors(k, bf16, rows, n, h16, h, inter, tc, inter, dots);
      },
      nullptr, 1);
}

void RunLinearQuant(const quant::RowLayout& rows_layout, const quant::RowLayout& down_layout,
                    size_t intermediate, const void* gate_rows, const void* up_rows,
                    const void* down_rows, const ConstTokens& x, const Tokens& y,
                    const ForwardOptions& o, Workspace* ws) {
  const size_t hidden = rows_layout.hidden();
  const QuantKernels k = SelectQuantKernels(rows_layout.type(), o.simd);
  const Vectors v = PrepareVectors(DType::kFloat32, x, hidden, ws);
  const uint8_t* int8_x = o.quantize_x ? RoundX(x, hidden, ws) : nullptr;
  const size_t rb = rows_layout.row_bytes(), db = down_layout.row_bytes();
  float* h = WorkspaceAccess::Hidden(ws);  // [chunk, I] float32
  // quantize_x with I a multiple of 32: h rounded per block of 32 neurons
  // too (as llama.cpp feeds its down projection), so the down rows are
  // integer dots as well; stored after x's records.
  uint8_t* int8_h = int8_x != nullptr && intermediate % 32 == 0
                        ? WorkspaceAccess::Int8X(ws) + x.tokens * Int8XBytes(hidden)
                        : nullptr;
  const size_t h_bytes = int8_h != nullptr ? Int8XBytes(intermediate) : 0;
  const std::function<void(size_t)> round_h = [&](size_t tc) {
    for (size_t t = 0; t < tc; ++t) {
      QuantizeX(h + t * intermediate, intermediate, int8_h + t * h_bytes);
    }
  };
  const auto* gate = static_cast<const uint8_t*>(gate_rows);
  const auto* up = static_cast<const uint8_t*>(up_rows);
  const auto* down = static_cast<const uint8_t*>(down_rows);
  LinearPhases(
      hidden, intermediate, gate != nullptr, x, y, o,
      ThreadsFor(intermediate * (gate != nullptr ? 2 : 1) * rb + hidden * db, o.num_threads),
      [&](size_t j, size_t g, size_t t0, size_t tc, float* dots) {
        const void* rows[kMaxDotRows];
        size_t num_rows = 0;
        for (size_t q = j; q < j + g; ++q) {
          if (gate != nullptr) rows[num_rows++] = gate + q * rb;
          rows[num_rows++] = up + q * rb;
        }
        if (int8_x != nullptr) {
          return DotRoundedX(k, rows, num_rows, int8_x, t0, tc, rows_layout, dots);
        }
        k.dot(rows, num_rows, reinterpret_cast<const float*>(VectorRow(v, DType::kFloat32, t0)),
              v.stride, tc, rows_layout, dots);
      },
      [&](size_t t, size_t q, float hv) { h[t * intermediate + q] = hv; },
      [&](size_t r, size_t n, size_t tc, float* dots) {
        const void* rows[kMaxDotRows];
        for (size_t q = 0; q < n; ++q) rows[q] = down + (r + q) * db;
        if (int8_h != nullptr) return DotRoundedX(k, rows, n, int8_h, 0, tc, down_layout, dots);
        k.dot(rows, n, h, intermediate, tc, down_layout, dots);
      },
      int8_h != nullptr ? &round_h : nullptr,
      // The integer dot reads a call's rows side by side: more rows, more
      // streams in flight (the float kernels measured best at one).
      int8_h != nullptr ? kMaxDotRows : 1);
}

}  // namespace sparse_mlp::mlp::internal
