#include "mlp/forward_core.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "gather/partition.h"
#include "gather/stream_copy.h"
#include "memory/size_math.h"
#include "mlp/kernel_util.h"
#include "mlp/kernels.h"
#include "mlp/quant_kernels.h"
#include "platform/float16.h"
#include "platform/store_fence.h"
#include "platform/threads.h"

namespace sparse_mlp::mlp {
namespace {

using internal::Kernels;
using internal::kMaxAxpyRows;
using internal::NeuronPtrs;
using internal::VectorDType;

using internal::kMaxDotRows;
// Neurons per block: the axpy's rows per pass over the partial sums.
constexpr size_t kBlock = kMaxAxpyRows;
// From this many tokens on, one dot call takes two neurons' rows: each x
// vector then serves four rows (loads per FMA halve, and x, which no
// longer fits L1 beyond a few tokens, is swept half as often). At one
// token a call keeps to one neuron: two concurrent read streams, the
// pattern the T = 1 measurements favoured (docs/performance.md); four rows
// at one token were not measured.
constexpr size_t kPairedNeuronTokens = 2;

// Scratch floats per thread after the partial sums: the block's
// coefficients and one dot call's results.
constexpr size_t ScratchFloats(size_t chunk) { return (kBlock + kMaxDotRows) * chunk; }
// Prefetched lines at the start of the next neuron's rows: enough for the
// hardware prefetcher to pick the row up, which it cannot do before its
// first misses (direct-index rows are scattered).
constexpr size_t kPrefetchHeadBytes = 1024;

size_t AlignUp64(size_t n) { return (n + 63) / 64 * 64; }

float Load(const void* p, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kBFloat16:
      return internal::Elem<DType::kBFloat16>(p, i);
    case DType::kFloat16:
      return internal::Elem<DType::kFloat16>(p, i);
    case DType::kFloat32:
      break;
  }
  return internal::Elem<DType::kFloat32>(p, i);
}

void Store(void* p, DType dtype, size_t i, float v) {
  switch (dtype) {
    case DType::kBFloat16:
      static_cast<uint16_t*>(p)[i] = FloatToBFloat16(v);
      return;
    case DType::kFloat16:
      static_cast<uint16_t*>(p)[i] = FloatToFloat16(v);
      return;
    case DType::kFloat32:
      break;
  }
  static_cast<float*>(p)[i] = v;
}

const uint8_t* TokenRow(const ConstTokens& x, size_t t) {
  return static_cast<const uint8_t*>(x.data) + t * x.stride * DTypeSize(x.dtype);
}
uint8_t* TokenRow(const Tokens& y, size_t t) {
  return static_cast<uint8_t*>(y.data) + t * y.stride * DTypeSize(y.dtype);
}

bool ValidDType(DType d) {
  return d == DType::kFloat32 || d == DType::kBFloat16 || d == DType::kFloat16;
}

bool ValidActivation(Activation a) {
  return a == Activation::kSiLU || a == Activation::kGeluTanh || a == Activation::kReLU;
}

absl::Status CheckTokens(const char* name, const void* data, size_t tokens, size_t stride,
                         DType dtype, DType weights, size_t hidden) {
  if (data == nullptr) return absl::InvalidArgumentError(absl::StrFormat("%s is null", name));
  if (tokens == 0) {
    return absl::InvalidArgumentError(absl::StrFormat("%s has 0 tokens", name));
  }
  if (stride < hidden) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s row stride %u is smaller than hidden_size %u", name, stride, hidden));
  }
  if (dtype != DType::kFloat32 && dtype != weights) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s is %s; with %s weights it must be float32 or %s", name,
        ValidDType(dtype) ? DTypeName(dtype) : "of an unknown type", DTypeName(weights),
        DTypeName(weights)));
  }
  absl::StatusOr<size_t> elements = memory::CheckedMul(tokens - 1, stride);
  if (elements.ok()) elements = memory::CheckedAdd(*elements, hidden);
  if (elements.ok()) elements = memory::CheckedMul(*elements, DTypeSize(dtype));
  return elements.status();
}

// The activation of neuron pre-activations for tc tokens; with bfloat16
// weights rounded to bfloat16 (the down projection multiplies bfloat16 by
// bfloat16, mlp_forward.h).
void Activations(Activation act, bool has_gate, bool round_bf16, const float* ga,
                 const float* ua, size_t tc, float* out) {
  for (size_t t = 0; t < tc; ++t) {
    const float h = has_gate ? Activate(act, ga[t]) * ua[t] : Activate(act, ua[t]);
    out[t] = round_bf16 ? BFloat16ToFloat(FloatToBFloat16(h)) : h;
  }
}

// h[t] = ga[t x stride] x ua[t]: the gate's activations given (a
// gate-first step computed them while selecting the neurons).
void GivenGate(const float* ga, size_t stride, bool round_bf16, const float* ua, size_t tc,
               float* out) {
  for (size_t t = 0; t < tc; ++t) {
    const float h = ga[t * stride] * ua[t];
    out[t] = round_bf16 ? BFloat16ToFloat(FloatToBFloat16(h)) : h;
  }
}

// One dot call on vectors in the kernels' form for the weights: bfloat16
// pairs (v16) with bfloat16 weights, float32 (v32) otherwise.
void DotVectors(const Kernels& k, bool bf16, const void* const* rows, size_t n,
                const uint16_t* v16, const float* v32, size_t stride, size_t tc, size_t len,
                float* dots) {
  if (bf16) {
    k.dot(rows, n, v16, stride, tc, len, dots);
  } else {
    k.dot_f32(rows, n, v32, stride, tc, len, dots);
  }
}

void PrefetchHead(const uint8_t* row, size_t row_bytes) {
  if (row == nullptr) return;
  const size_t n = std::min(row_bytes, kPrefetchHeadBytes);
  for (size_t o = 0; o < n; o += 64) __builtin_prefetch(row + o, 0, 2);
}

// x in the kernels' vector form: x itself, or converted into the workspace.
struct Vectors {
  const void* data;
  size_t stride;
};

Vectors PrepareVectors(DType weights, const ConstTokens& x, size_t hidden, Workspace* ws) {
  const DType form = VectorDType(weights);
  if (x.dtype == form) return {x.data, x.stride};
  uint8_t* out = WorkspaceAccess::Vectors(ws);
  for (size_t t = 0; t < x.tokens; ++t) {
    const uint8_t* row = TokenRow(x, t);
    void* dst = out + t * hidden * DTypeSize(form);
    for (size_t i = 0; i < hidden; ++i) Store(dst, form, i, Load(row, x.dtype, i));
  }
  return {out, hidden};
}

const uint8_t* VectorRow(const Vectors& v, DType weights, size_t t) {
  return static_cast<const uint8_t*>(v.data) + t * v.stride * DTypeSize(VectorDType(weights));
}

// A contiguous share of [0, n) for member `tid` of a team of `team`;
// `align` rounds the boundaries (not the end).
void Share(size_t n, int tid, int team, size_t align, size_t* begin, size_t* end) {
  auto bound = [&](int k) {
    if (k >= team) return n;
    const size_t b = n * static_cast<size_t>(k) / static_cast<size_t>(team) / align * align;
    return std::min(b, n);
  };
  *begin = bound(tid);
  *end = bound(tid + 1);
}

// y rows [t0, t0 + tc), columns [c0, c1): the sum of the team's partials in
// thread order (plus y with accumulate).
// Partial rows are `width` floats in the kernels' column order (`paired`:
// internal::YIndex).
void Reduce(const Tokens& y, bool accumulate, size_t t0, size_t tc, size_t c0, size_t c1,
            const uint8_t* partials, size_t per_thread, int team, size_t width, bool paired) {
  for (size_t t = 0; t < tc; ++t) {
    uint8_t* yt = TokenRow(y, t0 + t);
    for (size_t c = c0; c < c1; ++c) {
      float s = accumulate ? Load(yt, y.dtype, c) : 0.0f;
      const size_t at = t * width + internal::YIndex(c, paired);
      for (int k = 0; k < team; ++k) {
        s += reinterpret_cast<const float*>(partials + k * per_thread)[at];
      }
      Store(yt, y.dtype, c, s);
    }
  }
}

void WriteEmpty(const Tokens& y, bool accumulate, size_t hidden) {
  if (accumulate) return;  // y += 0
  for (size_t t = 0; t < y.tokens; ++t) {
    std::memset(TokenRow(y, t), 0, hidden * DTypeSize(y.dtype));
  }
}

int ThreadsFor(size_t weight_bytes, int requested) {
  return weight_bytes >= gather::kParallelMinBytes ? requested : 1;
}

}  // namespace

absl::Status WorkspaceAccess::Grow(Workspace* w, size_t per_thread_bytes, int threads,
                                   size_t vector_bytes, size_t hidden_bytes) {
  const size_t per_thread = std::max(per_thread_bytes, w->per_thread_bytes_);
  absl::StatusOr<size_t> partial_bytes =
      memory::CheckedMul(per_thread, static_cast<size_t>(threads));
  if (!partial_bytes.ok()) return partial_bytes.status();
  // *out = a buffer of `bytes` when `current` is smaller (else left empty).
  auto bigger = [](size_t bytes, const memory::AlignedBuffer& current,
                   memory::AlignedBuffer* out) -> absl::Status {
    if (bytes <= current.size()) return absl::OkStatus();
    absl::StatusOr<memory::AlignedBuffer> b = memory::AlignedBuffer::Allocate(bytes);
    if (!b.ok()) return b.status();
    *out = *std::move(b);
    return absl::OkStatus();
  };
  memory::AlignedBuffer partials, vectors, hidden;
  if (absl::Status s = bigger(*partial_bytes, w->partials_, &partials); !s.ok()) return s;
  if (absl::Status s = bigger(vector_bytes, w->vectors_, &vectors); !s.ok()) return s;
  if (absl::Status s = bigger(hidden_bytes, w->hidden_, &hidden); !s.ok()) return s;
  // Every allocation succeeded: commit.
  w->per_thread_bytes_ = per_thread;
  if (partials.size() != 0) w->partials_ = std::move(partials);
  if (vectors.size() != 0) w->vectors_ = std::move(vectors);
  if (hidden.size() != 0) w->hidden_ = std::move(hidden);
  return absl::OkStatus();
}

absl::Status Workspace::Reserve(size_t tokens, size_t hidden_size, size_t intermediate_size,
                                int num_threads) {
  if (absl::Status s = ValidateNumThreads(num_threads); !s.ok()) return s;
  const size_t chunk = std::min(tokens, kTokenChunk);
  // x converted for every token (the widest form, float32), the linear
  // path's activations, and per thread the partial sums and scratch.
  absl::StatusOr<size_t> all = memory::CheckedMul(tokens, hidden_size);
  if (all.ok()) all = memory::CheckedMul(*all, 4);
  if (!all.ok()) return all.status();
  absl::StatusOr<size_t> hidden = memory::CheckedMul(chunk, intermediate_size);
  if (hidden.ok()) hidden = memory::CheckedMul(*hidden, 4);
  if (!hidden.ok()) return hidden.status();
  absl::StatusOr<size_t> sums_bytes =
      memory::CheckedMul(chunk * 4, internal::PaddedWidth(hidden_size));
  if (!sums_bytes.ok()) return sums_bytes.status();
  const size_t per_thread = AlignUp64(*sums_bytes + ScratchFloats(chunk) * 4);
  return WorkspaceAccess::Grow(this, per_thread, num_threads, *all, *hidden);
}

namespace internal {

absl::Status ValidateCall(DType dtype, size_t hidden, const ConstTokens& x, const Tokens& y,
                          const ForwardOptions& options) {
  if (!ValidDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("unsupported weight type %d", static_cast<int>(dtype)));
  }
  if (hidden == 0) return absl::InvalidArgumentError("hidden_size must be positive, got 0");
  if (absl::Status s = CheckTokens("x", x.data, x.tokens, x.stride, x.dtype, dtype, hidden);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CheckTokens("y", y.data, y.tokens, y.stride, y.dtype, dtype, hidden);
      !s.ok()) {
    return s;
  }
  if (y.tokens != x.tokens) {
    return absl::InvalidArgumentError(
        absl::StrFormat("y has %u tokens but x has %u", y.tokens, x.tokens));
  }
  if (!ValidActivation(options.activation)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "unknown activation %d", static_cast<int>(options.activation)));
  }
  return ValidateNumThreads(options.num_threads);
}

absl::Status ValidateRows(const NeuronRows& rows) {
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
    if (p.stride < rows.hidden_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s row stride %u is smaller than hidden_size %u", p.name, p.stride,
          rows.hidden_size));
    }
    absl::StatusOr<size_t> bytes = memory::CheckedMul(rows.count, p.stride);
    if (bytes.ok()) bytes = memory::CheckedMul(*bytes, DTypeSize(rows.dtype));
    if (!bytes.ok()) return bytes.status();
  }
  return absl::OkStatus();
}

absl::Status PrepareWorkspace(DType dtype, size_t hidden, size_t intermediate,
                              const ConstTokens& x, const ForwardOptions& options,
                              Workspace* ws) {
  if (ws == nullptr) return absl::InvalidArgumentError("workspace is null");
  const size_t chunk = std::min(x.tokens, kTokenChunk);
  // Sizes: validated above (x fits a size_t; chunk <= 32).
  const size_t per_thread =
      AlignUp64((chunk * internal::PaddedWidth(hidden) + ScratchFloats(chunk)) * 4);
  const DType form = VectorDType(dtype);
  const size_t vector_bytes = x.dtype == form ? 0 : x.tokens * hidden * DTypeSize(form);
  absl::StatusOr<size_t> hidden_bytes = memory::CheckedMul(chunk * 4, intermediate);
  if (!hidden_bytes.ok()) return hidden_bytes.status();
  // ForwardLinear keeps no partial sums.
  return WorkspaceAccess::Grow(ws, intermediate != 0 ? 0 : per_thread, options.num_threads,
                               vector_bytes, *hidden_bytes);
}

void Run(const RowSource& source, const Problem& p, const ConstTokens& x, const Tokens& y,
         const ForwardOptions& o, Workspace* ws) {
  const size_t hidden = p.hidden_size;
  if (p.count == 0) return WriteEmpty(y, o.accumulate, hidden);
  // Quantized rows run the quantized kernels on float32 vectors; the rest
  // of the loop is the same.
  const DType vector_dtype = p.quant != nullptr ? DType::kFloat32 : p.dtype;
  const Kernels k = SelectKernels(vector_dtype, o.simd);
  const internal::QuantKernels qk =
      p.quant != nullptr ? internal::SelectQuantKernels(p.quant->type(), o.simd)
                         : internal::QuantKernels();
  const gather::internal::RowCopyFn copy = gather::internal::SelectRowCopy(o.simd);
  const Vectors v = PrepareVectors(vector_dtype, x, hidden, ws);
  const size_t row_bytes =
      p.quant != nullptr ? p.quant->row_bytes() : hidden * DTypeSize(p.dtype);
  const size_t parts = p.has_gate ? 3 : 2;
  const int threads = ThreadsFor(p.count * parts * row_bytes, o.num_threads);
  uint8_t* partials = WorkspaceAccess::Partials(ws);
  const size_t per_thread = WorkspaceAccess::PerThreadBytes(ws);

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int team = omp_get_num_threads();
    const int tid = omp_get_thread_num();
    size_t begin, end;
    Share(p.count, tid, team, 1, &begin, &end);
    size_t c0, c1;
    Share(hidden, tid, team, 16, &c0, &c1);
    float* partial = reinterpret_cast<float*>(partials + tid * per_thread);
    for (size_t t0 = 0; t0 < x.tokens; t0 += kTokenChunk) {
      const size_t tc = std::min(kTokenChunk, x.tokens - t0);
      const size_t width = k.bf16_dot ? internal::PaddedWidth(hidden) : hidden;
      float* coef = partial + tc * width;
      float* dots = coef + kBlock * tc;
      // Neurons per dot call: rows of up to kMaxDotRows, and at one token
      // two rows (two read streams): a gated neuron's gate and up, or two
      // gate-less neurons' up rows.
      const size_t group = p.has_gate ? (tc >= kPairedNeuronTokens ? 2 : 1)
                                      : (tc >= kPairedNeuronTokens ? kMaxDotRows : 2);
      const bool store = p.stores && t0 == 0;
      std::memset(partial, 0, tc * width * sizeof(float));
      const void* xt = VectorRow(v, vector_dtype, t0);
      NeuronPtrs ptrs[kBlock + 1];
      for (size_t j0 = begin; j0 < end; j0 += kBlock) {
        const size_t nb = std::min(kBlock, end - j0);
        const size_t look = p.prefetch && j0 + nb < end ? 1 : 0;
        source.Locate(j0, nb + look, ptrs);
        const void* downs[kBlock];
        for (size_t b = 0; b < nb; b += group) {
          const size_t g = std::min(group, nb - b);
          if (p.prefetch && b + g < nb + look) {
            for (const uint8_t* r : ptrs[b + g].row) PrefetchHead(r, row_bytes);
          }
          const void* rows[kMaxDotRows];
          size_t num_rows = 0;
          for (size_t q = b; q < b + g; ++q) {
            if (p.has_gate) rows[num_rows++] = ptrs[q].row[0];
            rows[num_rows++] = ptrs[q].row[1];
          }
          if (p.quant != nullptr) {
            qk.dot(rows, num_rows, static_cast<const float*>(xt), v.stride, tc, *p.quant, dots);
          } else {
            k.dot(rows, num_rows, xt, v.stride, tc, hidden, dots);
          }
          for (size_t q = b; q < b + g; ++q) {
            const size_t first = (q - b) * (p.has_gate ? 2 : 1);  // its rows in the call
            if (p.gate_act != nullptr) {
              GivenGate(p.gate_act + t0 * p.gate_act_stride + ptrs[q].neuron,
                        p.gate_act_stride, p.dtype == DType::kBFloat16, dots + first * tc, tc,
                        coef + q * tc);
            } else {
              Activations(o.activation, p.has_gate, p.dtype == DType::kBFloat16,
                          dots + first * tc, dots + (first + (p.has_gate ? 1 : 0)) * tc, tc,
                          coef + q * tc);
            }
            if (store) {
              for (int part = 0; part < 2; ++part) {
                if (ptrs[q].store[part] != nullptr) {
                  copy(ptrs[q].store[part], ptrs[q].row[part], row_bytes, nullptr);
                }
              }
            }
            downs[q] = ptrs[q].row[2];
          }
        }
        if (p.quant != nullptr) {
          qk.axpy(downs, nb, coef, tc, *p.quant, partial, width);
        } else {
          k.axpy(downs, nb, coef, tc, hidden, partial, width);
        }
        if (store) {
          for (size_t b = 0; b < nb; ++b) {
            if (ptrs[b].store[2] != nullptr) {
              copy(ptrs[b].store[2], ptrs[b].row[2], row_bytes, nullptr);
            }
          }
        }
      }
      if (store) FinishStreamingStores();
#pragma omp barrier
      Reduce(y, o.accumulate, t0, tc, c0, c1, partials, per_thread, team, width, k.bf16_dot);
#pragma omp barrier
    }
  }
}

void RunActivations(const NeuronRows& rows, const ConstTokens& x, const ForwardOptions& o,
                    Workspace* ws, float* out, float* abs_out, size_t out_stride) {
  const size_t hidden = rows.hidden_size;
  const Kernels k = SelectKernels(rows.dtype, o.simd);
  const Vectors v = PrepareVectors(rows.dtype, x, hidden, ws);
  const size_t elem = DTypeSize(rows.dtype);
  const auto* base = static_cast<const uint8_t*>(rows.up);
  const int threads = ThreadsFor(rows.count * hidden * elem, o.num_threads);

#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    size_t begin, end;
    Share(rows.count, omp_get_thread_num(), omp_get_num_threads(), 1, &begin, &end);
    float dots[kMaxDotRows * kTokenChunk];
    for (size_t t0 = 0; t0 < x.tokens; t0 += kTokenChunk) {
      const size_t tc = std::min(kTokenChunk, x.tokens - t0);
      // Two rows per call at one token (two read streams, as Run), four
      // from kPairedNeuronTokens tokens on.
      const size_t group = tc >= kPairedNeuronTokens ? kMaxDotRows : 2;
      const void* xt = VectorRow(v, rows.dtype, t0);
      for (size_t j = begin; j < end; j += group) {
        const size_t g = std::min(group, end - j);
        const void* r[kMaxDotRows];
        for (size_t q = 0; q < g; ++q) r[q] = base + (j + q) * rows.up_stride * elem;
        k.dot(r, g, xt, v.stride, tc, hidden, dots);
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

void RunLowRank(DType dtype, size_t hidden, size_t rank, size_t outputs, const void* a,
                size_t a_stride, const void* b, size_t b_stride, const ConstTokens& x,
                const ForwardOptions& o, Workspace* ws, float* z, float* out,
                size_t out_stride) {
  const Kernels k = SelectKernels(dtype, o.simd);
  const Vectors v = PrepareVectors(dtype, x, hidden, ws);
  const size_t elem = DTypeSize(dtype);
  const bool bf16 = dtype == DType::kBFloat16;
  const auto* a_rows = static_cast<const uint8_t*>(a);
  const auto* b_rows = static_cast<const uint8_t*>(b);
  // z in the kernels' vector form for B's rows: bfloat16 pairs for
  // bfloat16 weights, stored over the first half of z's scratch.
  auto* z16 = reinterpret_cast<uint16_t*>(z);
  const int threads =
      ThreadsFor((rank * hidden + outputs * rank) * elem, o.num_threads);

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

void RunLinear(const LinearWeights& w, const ConstTokens& x, const Tokens& y,
               const ForwardOptions& o, Workspace* ws) {
  const size_t hidden = w.hidden_size;
  const size_t inter = w.intermediate_size;
  const Kernels k = SelectKernels(w.dtype, o.simd);
  const Vectors v = PrepareVectors(w.dtype, x, hidden, ws);
  const size_t elem = DTypeSize(w.dtype);
  const size_t row_bytes = hidden * elem;
  const int threads = ThreadsFor(inter * (w.gate ? 3 : 2) * row_bytes, o.num_threads);
  // Every neuron's activation, [chunk, I]: bfloat16 for bfloat16 weights
  // (the down dot then runs bfloat16 x bfloat16), float32 otherwise.
  float* h = WorkspaceAccess::Hidden(ws);
  auto* h16 = reinterpret_cast<uint16_t*>(h);
  const bool bf16 = w.dtype == DType::kBFloat16;
  const auto* gate = static_cast<const uint8_t*>(w.gate);
  const auto* up = static_cast<const uint8_t*>(w.up);
  const auto* down = static_cast<const uint8_t*>(w.down);

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
      const void* xt = VectorRow(v, w.dtype, t0);
      // Phase 1: every neuron's activation, [tc, I].
      for (size_t j = begin; j < end; j += group) {
        const size_t g = std::min(group, end - j);
        const void* rows[kMaxDotRows];
        size_t num_rows = 0;
        for (size_t q = j; q < j + g; ++q) {
          if (gate != nullptr) rows[num_rows++] = gate + q * row_bytes;
          rows[num_rows++] = up + q * row_bytes;
        }
        k.dot(rows, num_rows, xt, v.stride, tc, hidden, dots);
        for (size_t q = j; q < j + g; ++q) {
          const size_t first = (q - j) * (gate != nullptr ? 2 : 1);
          Activations(o.activation, gate != nullptr, false, dots + first * tc,
                      dots + (first + (gate != nullptr ? 1 : 0)) * tc, tc, hv);
          for (size_t t = 0; t < tc; ++t) {
            if (bf16) {
              h16[t * inter + q] = FloatToBFloat16(hv[t]);
            } else {
              h[t * inter + q] = hv[t];
            }
          }
        }
      }
#pragma omp barrier
      // Phase 2: output r of every token is <down row r, h_t>; several
      // rows per call from kPairedNeuronTokens tokens on.
      const size_t rows_per_call = tc >= kPairedNeuronTokens ? kMaxDotRows : 1;
      for (size_t r = r0; r < r1; r += rows_per_call) {
        const size_t n = std::min(rows_per_call, r1 - r);
        const void* rows[kMaxDotRows];
        for (size_t q = 0; q < n; ++q) rows[q] = down + (r + q) * inter * elem;
        DotVectors(k, bf16, rows, n, h16, h, inter, tc, inter, dots);
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

}  // namespace internal
}  // namespace sparse_mlp::mlp
