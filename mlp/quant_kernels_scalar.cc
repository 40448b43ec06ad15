// Portable quantized kernels and the runtime choice among the levels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "mlp/quant_kernels.h"
#include "platform/float16.h"

namespace sparse_mlp::mlp::internal {
namespace {

// Row `row`'s weights [c0, c0 + n) dequantized into w.
void Dequantize(const quant::RowLayout& l, const uint8_t* row, size_t c0, size_t n, float* w) {
  for (size_t i = 0; i < n; ++i) {
    const size_t c = c0 + i;
    int q;
    if (l.type() == quant::QuantType::kInt8) {
      q = static_cast<int8_t>(row[c]);
    } else {
      const uint8_t byte = row[c / 32 * 16 + c % 16];
      q = ((c % 32) < 16 ? (byte & 0xF) : (byte >> 4)) - 8;
    }
    uint16_t bits;
    std::memcpy(&bits, row + l.scale_offset() + 2 * (c / l.group()), 2);
    w[i] = static_cast<float>(q) * Float16ToFloat(bits);
  }
}

constexpr size_t kPiece = 64;  // weights dequantized at a time

void Dot(const void* const* rows, size_t nrows, const float* v, size_t v_stride, size_t tokens,
         const quant::RowLayout& l, float* out) {
  float w[kPiece];
  for (size_t r = 0; r < nrows; ++r) {
    const auto* row = static_cast<const uint8_t*>(rows[r]);
    for (size_t t = 0; t < tokens; ++t) out[r * tokens + t] = 0.0f;
    for (size_t c0 = 0; c0 < l.hidden(); c0 += kPiece) {
      const size_t n = l.hidden() - c0 < kPiece ? l.hidden() - c0 : kPiece;
      Dequantize(l, row, c0, n, w);
      for (size_t t = 0; t < tokens; ++t) {
        const float* vt = v + t * v_stride + c0;
        float s = 0.0f;
        for (size_t i = 0; i < n; ++i) s += w[i] * vt[i];
        out[r * tokens + t] += s;
      }
    }
  }
}

void Axpy(const void* const* rows, size_t n, const float* coef, size_t tokens,
          const quant::RowLayout& l, float* y, size_t y_stride) {
  float w[kPiece];
  for (size_t j = 0; j < n; ++j) {
    const auto* row = static_cast<const uint8_t*>(rows[j]);
    for (size_t c0 = 0; c0 < l.hidden(); c0 += kPiece) {
      const size_t m = l.hidden() - c0 < kPiece ? l.hidden() - c0 : kPiece;
      Dequantize(l, row, c0, m, w);
      for (size_t t = 0; t < tokens; ++t) {
        const float a = coef[j * tokens + t];
        float* yt = y + t * y_stride + c0;
        for (size_t i = 0; i < m; ++i) yt[i] += a * w[i];
      }
    }
  }
}

}  // namespace

QuantKernels ScalarQuantKernels(quant::QuantType) { return {&Dot, &Axpy, SimdLevel::kScalar, nullptr}; }

namespace {

size_t Up64(size_t n) { return (n + 63) / 64 * 64; }

// The parts' offsets in a token's record: q (H), scales (H / 32 floats),
// biases (H / 4 int32), dequant (H floats), q4 (chunks of 128), q4 biases
// (16 int32 per chunk), each from a 64-byte boundary.
struct Int8XOffsets {
  size_t scale, bias, dequant, q4, q4_bias, end;
  explicit Int8XOffsets(size_t hidden) {
    const size_t chunks = (hidden + 127) / 128;
    scale = Up64(hidden);
    bias = scale + Up64(hidden / 32 * 4);
    dequant = bias + Up64(hidden);
    q4 = dequant + Up64(hidden * 4);
    q4_bias = q4 + chunks * 128;
    end = q4_bias + chunks * 64;
  }
};

}  // namespace

size_t Int8XBytes(size_t hidden) { return Int8XOffsets(hidden).end; }

Int8X Int8XAt(const void* at, size_t hidden) {
  const Int8XOffsets o(hidden);
  const auto* base = static_cast<const uint8_t*>(at);
  return {reinterpret_cast<const int8_t*>(base),
          reinterpret_cast<const float*>(base + o.scale),
          reinterpret_cast<const int32_t*>(base + o.bias),
          reinterpret_cast<const float*>(base + o.dequant),
          reinterpret_cast<const int8_t*>(base + o.q4),
          reinterpret_cast<const int32_t*>(base + o.q4_bias)};
}

Int8X QuantizeX(const float* x, size_t hidden, void* out) {
  const Int8X v = Int8XAt(out, hidden);
  auto* q = const_cast<int8_t*>(v.q);
  auto* scale = const_cast<float*>(v.scale);
  auto* bias = const_cast<int32_t*>(v.bias);
  auto* deq = const_cast<float*>(v.dequant);
  for (size_t b = 0; b < hidden / 32; ++b) {
    float m = 0.0f;
    for (size_t c = 32 * b; c < 32 * b + 32; ++c) m = std::max(m, std::fabs(x[c]));
    const float s = m / 127.0f;
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    scale[b] = s;
    for (size_t c = 32 * b; c < 32 * b + 32; ++c) {
      const long r = std::lrint(x[c] * inv);
      q[c] = static_cast<int8_t>(r < -127 ? -127 : r > 127 ? 127 : r);
      deq[c] = static_cast<float>(q[c]) * s;
    }
  }
  for (size_t k = 0; k < hidden / 4; ++k) {
    bias[k] = -128 * (q[4 * k] + q[4 * k + 1] + q[4 * k + 2] + q[4 * k + 3]);
  }
  // The q4 order: per chunk of four blocks, each block's values 0-15 (its
  // low nibbles' partners), then each block's values 16-31.
  auto* q4 = const_cast<int8_t*>(v.q4);
  auto* q4_bias = const_cast<int32_t*>(v.q4_bias);
  const size_t blocks = hidden / 32;
  for (size_t k = 0; k < (blocks + 3) / 4; ++k) {
    int8_t* lo = q4 + 128 * k;
    int8_t* hi = lo + 64;
    int32_t* lanes = q4_bias + 16 * k;
    for (size_t b = 0; b < 4; ++b) {
      const size_t block = 4 * k + b;
      for (size_t i = 0; i < 16; ++i) {
        lo[16 * b + i] = block < blocks ? q[32 * block + i] : 0;
        hi[16 * b + i] = block < blocks ? q[32 * block + 16 + i] : 0;
      }
      for (size_t m = 0; m < 4; ++m) {
        int32_t sum = 0;
        for (size_t i = 0; i < 4; ++i) sum += lo[16 * b + 4 * m + i] + hi[16 * b + 4 * m + i];
        lanes[4 * b + m] = -8 * sum;
      }
    }
  }
  return v;
}

QuantKernels SelectQuantKernels(quant::QuantType type, SimdLevel level) {
#if SPARSE_MLP_X86
  switch (Resolve(level)) {
    case SimdLevel::kAvx512: {
      QuantKernels k = Avx512QuantKernels(type);
      k.dot_int8 = VnniDotInt8(type);
      return k;
    }
    case SimdLevel::kAvx2:
      if (HasCpuFeature(CpuFeature::kFma) && HasCpuFeature(CpuFeature::kF16c)) {
        return Avx2QuantKernels(type);
      }
      break;
    default:
      break;
  }
#else
  (void)level;
#endif
  return ScalarQuantKernels(type);
}

}  // namespace sparse_mlp::mlp::internal
