#include "mlp/forward_util.h"

#include <algorithm>
#include <cstring>

#include "gather/partition.h"
#include "mlp/forward_core.h"
#include "mlp/kernel_util.h"
#include "platform/float16.h"

namespace sparse_mlp::mlp::internal {

float Load(const void* p, DType dtype, size_t i) {
  switch (dtype) {
    case DType::kBFloat16:
      return Elem<DType::kBFloat16>(p, i);
    case DType::kFloat16:
      return Elem<DType::kFloat16>(p, i);
    case DType::kFloat32:
      break;
  }
  return Elem<DType::kFloat32>(p, i);
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

void Activations(Activation act, bool has_gate, bool round_bf16, const float* ga, const float* ua,
                 size_t tc, float* out) {
  for (size_t t = 0; t < tc; ++t) {
    const float h = has_gate ? Activate(act, ga[t]) * ua[t] : Activate(act, ua[t]);
    out[t] = round_bf16 ? BFloat16ToFloat(FloatToBFloat16(h)) : h;
  }
}

void GivenGate(const float* ga, size_t stride, bool round_bf16, const float* ua, size_t tc,
               float* out) {
  for (size_t t = 0; t < tc; ++t) {
    const float h = ga[t * stride] * ua[t];
    out[t] = round_bf16 ? BFloat16ToFloat(FloatToBFloat16(h)) : h;
  }
}

void DotVectors(const Kernels& k, bool bf16, const void* const* rows, size_t n, const uint16_t* v16,
                const float* v32, size_t stride, size_t tc, size_t len, float* dots) {
  if (bf16) {
    k.dot(rows, n, v16, stride, tc, len, dots);
  } else {
    k.dot_f32(rows, n, v32, stride, tc, len, dots);
  }
}

void DotRoundedX(const QuantKernels& k, const void* const* rows, size_t n, const uint8_t* int8_x,
                 size_t t0, size_t tc, const quant::RowLayout& layout, float* dots) {
  const size_t bytes = Int8XBytes(layout.hidden());
  if (k.dot_int8 != nullptr) {
    Int8X xs[kTokenChunk];
    for (size_t t = 0; t < tc; ++t) xs[t] = Int8XAt(int8_x + (t0 + t) * bytes, layout.hidden());
    k.dot_int8(rows, n, xs, tc, layout, dots);
    return;
  }
  k.dot(rows, n, Int8XAt(int8_x + t0 * bytes, layout.hidden()).dequant, bytes / sizeof(float),
        tc, layout, dots);
}

void PrefetchHead(const uint8_t* row, size_t row_bytes) {
  if (row == nullptr) return;
  const size_t n = std::min(row_bytes, kPrefetchHeadBytes);
  for (size_t o = 0; o < n; o += 64) __builtin_prefetch(row + o, 0, 2);
}

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

void Share(size_t n, int tid, int team, size_t align, size_t* begin, size_t* end) {
  auto bound = [&](int k) {
    if (k >= team) return n;
    const size_t b = n * static_cast<size_t>(k) / static_cast<size_t>(team) / align * align;
    return std::min(b, n);
  };
  *begin = bound(tid);
  *end = bound(tid + 1);
}

void Reduce(const Tokens& y, bool accumulate, size_t t0, size_t tc, size_t c0, size_t c1,
            const uint8_t* partials, size_t per_thread, int team, size_t width, bool paired) {
  for (size_t t = 0; t < tc; ++t) {
    uint8_t* yt = TokenRow(y, t0 + t);
    for (size_t c = c0; c < c1; ++c) {
      float s = accumulate ? Load(yt, y.dtype, c) : 0.0f;
      const size_t at = t * width + YIndex(c, paired);
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

}  // namespace sparse_mlp::mlp::internal
