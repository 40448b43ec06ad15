#include "mlp/forward_core.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_format.h"
#include "gather/partition.h"
#include "gather/stream_copy.h"
#include "memory/size_math.h"
#include "mlp/forward_util.h"
#include "mlp/kernel_util.h"
#include "mlp/kernels.h"
#include "mlp/quant_kernels.h"
#include "platform/float16.h"
#include "platform/store_fence.h"
#include "platform/threads.h"

namespace sparse_mlp::mlp {
namespace {

using internal::kBlock;
using internal::kMaxDotRows;

// Scratch floats per thread after the partial sums: the block's
// coefficients and one dot call's results.
constexpr size_t ScratchFloats(size_t chunk) { return (kBlock + kMaxDotRows) * chunk; }

size_t AlignUp64(size_t n) { return (n + 63) / 64 * 64; }

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

}  // namespace

absl::Status WorkspaceAccess::Grow(Workspace* w, size_t per_thread_bytes, int threads,
                                   size_t vector_bytes, size_t hidden_bytes,
                                   size_t int8_x_bytes) {
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
  memory::AlignedBuffer partials, vectors, hidden, int8_x;
  if (absl::Status s = bigger(*partial_bytes, w->partials_, &partials); !s.ok()) return s;
  if (absl::Status s = bigger(vector_bytes, w->vectors_, &vectors); !s.ok()) return s;
  if (absl::Status s = bigger(hidden_bytes, w->hidden_, &hidden); !s.ok()) return s;
  if (absl::Status s = bigger(int8_x_bytes, w->int8_x_, &int8_x); !s.ok()) return s;
  // Every allocation succeeded: commit.
  w->per_thread_bytes_ = per_thread;
  if (partials.size() != 0) w->partials_ = std::move(partials);
  if (vectors.size() != 0) w->vectors_ = std::move(vectors);
  if (hidden.size() != 0) w->hidden_ = std::move(hidden);
  if (int8_x.size() != 0) w->int8_x_ = std::move(int8_x);
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
  // x rounded to int8 (ForwardOptions::quantize_x) for every token.
  absl::StatusOr<size_t> int8_x =
      hidden_size % 32 == 0 ? memory::CheckedMul(tokens, internal::Int8XBytes(hidden_size))
                            : absl::StatusOr<size_t>(0);
  if (int8_x.ok() && *int8_x != 0 && intermediate_size != 0 && intermediate_size % 32 == 0) {
    int8_x = memory::CheckedAdd(*int8_x, chunk * internal::Int8XBytes(intermediate_size));
  }
  if (!int8_x.ok()) return int8_x.status();
  return WorkspaceAccess::Grow(this, per_thread, num_threads, *all, *hidden, *int8_x);
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
  // x rounded per token, and for the nn.Linear layout each chunk's h.
  size_t int8_x_bytes =
      options.quantize_x && hidden % 32 == 0 ? x.tokens * internal::Int8XBytes(hidden) : 0;
  if (int8_x_bytes != 0 && intermediate != 0 && intermediate % 32 == 0) {
    int8_x_bytes += chunk * internal::Int8XBytes(intermediate);
  }
  // ForwardLinear keeps no partial sums.
  return WorkspaceAccess::Grow(ws, intermediate != 0 ? 0 : per_thread, options.num_threads,
                               vector_bytes, *hidden_bytes, int8_x_bytes);
}

absl::Status CheckQuantizeX(size_t hidden, const ForwardOptions& options) {
  if (options.quantize_x && hidden % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "quantize_x rounds x in blocks of 32: hidden_size %u is not a multiple of 32", hidden));
  }
  return absl::OkStatus();
}

const uint8_t* RoundX(const ConstTokens& x, size_t hidden, Workspace* ws) {
  uint8_t* out = WorkspaceAccess::Int8X(ws);
  const size_t bytes = Int8XBytes(hidden);
  for (size_t t = 0; t < x.tokens; ++t) {
    QuantizeX(reinterpret_cast<const float*>(TokenRow(x, t)), hidden, out + t * bytes);
  }
  return out;
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
  // x rounded per block of 32 (quantize_x): every token, before the team.
  const uint8_t* int8_x = p.quant != nullptr && o.quantize_x ? RoundX(x, hidden, ws) : nullptr;
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
          if (int8_x != nullptr) {
            DotRoundedX(qk, rows, num_rows, int8_x, t0, tc, *p.quant, dots);
          } else if (p.quant != nullptr) {
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

}  // namespace internal
}  // namespace sparse_mlp::mlp
