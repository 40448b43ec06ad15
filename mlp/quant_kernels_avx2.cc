// AVX2 quantized kernels: 8 weights widened to float32 and scaled in
// registers per step; whole-row int8 tails through a zero-padded copy.
#include "mlp/quant_kernels.h"

#if SPARSE_MLP_X86
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "mlp/kernel_util.h"

#define SPARSE_MLP_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace sparse_mlp::mlp::internal {
namespace {

using quant::QuantType;

SPARSE_MLP_AVX2 inline __m256 Scale(const uint8_t* row, const quant::RowLayout& l, size_t g) {
  uint16_t bits;
  std::memcpy(&bits, row + l.scale_offset() + 2 * g, 2);
  return _mm256_set1_ps(_cvtsh_ss(bits));
}

SPARSE_MLP_AVX2 inline float Sum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Weights [c, c + 8) of a row, dequantized (c a multiple of 8).
template <QuantType Q>
SPARSE_MLP_AVX2 inline __m256 Deq8(const uint8_t* row, size_t c, __m256 scale) {
  __m256i q;
  if constexpr (Q == QuantType::kInt8) {
    q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c)));
  } else {
    const __m128i bytes =
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + c / 32 * 16 + c % 16));
    const __m128i nib = (c % 32) < 16
                            ? _mm_and_si128(bytes, _mm_set1_epi8(0x0F))
                            : _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
    q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(nib), _mm256_set1_epi32(8));
  }
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale);
}

// int8 weights [c, c + n), n < 8, the rest zero.
SPARSE_MLP_AVX2 inline __m256 Deq8Tail(const uint8_t* row, size_t c, size_t n, __m256 scale) {
  alignas(16) uint8_t pad[16] = {};
  std::memcpy(pad, row + c, n);
  return Deq8<QuantType::kInt8>(pad, 0, scale);
}

SPARSE_MLP_AVX2 inline __m256 LoadTail(const float* p, size_t n) {
  alignas(32) float pad[8] = {};
  std::memcpy(pad, p, n * sizeof(float));
  return _mm256_load_ps(pad);
}

template <QuantType Q, int NR, int TB>
SPARSE_MLP_AVX2 void DotBlock(const uint8_t* const* rows, const float* v, size_t v_stride,
                              size_t tokens, const quant::RowLayout& l, float* out) {
  __m256 acc[NR][TB];
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) acc[r][k] = _mm256_setzero_ps();
  }
  const size_t group = l.group();
  for (size_t g = 0; g < l.groups(); ++g) {
    __m256 s[NR];
    SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) s[r] = Scale(rows[r], l, g);
    const size_t end = (g + 1) * group;
    size_t c = g * group;
    for (; c + 8 <= end; c += 8) {
      SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
        const __m256 w = Deq8<Q>(rows[r], c, s[r]);
        SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
          acc[r][k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + k * v_stride + c), acc[r][k]);
        }
      }
    }
    if (c < end) {
      const size_t n = end - c;
      SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
        const __m256 w = Deq8Tail(rows[r], c, n, s[r]);
        SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
          acc[r][k] = _mm256_fmadd_ps(w, LoadTail(v + k * v_stride + c, n), acc[r][k]);
        }
      }
    }
  }
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) out[r * tokens + k] = Sum(acc[r][k]);
  }
}

template <QuantType Q>
SPARSE_MLP_AVX2 void Dot(const void* const* rows_in, size_t nrows, const float* v, size_t v_stride,
                         size_t tokens, const quant::RowLayout& l, float* out) {
  const auto* rows = reinterpret_cast<const uint8_t* const*>(rows_in);
  if (tokens == 1) {
    switch (nrows) {
      case 1:
        return DotBlock<Q, 1, 1>(rows, v, v_stride, 1, l, out);
      case 2:
        return DotBlock<Q, 2, 1>(rows, v, v_stride, 1, l, out);
      case 3:
        return DotBlock<Q, 3, 1>(rows, v, v_stride, 1, l, out);
      default:
        return DotBlock<Q, 4, 1>(rows, v, v_stride, 1, l, out);
    }
  }
  for (size_t r = 0; r < nrows; ++r) {
    for (size_t t0 = 0; t0 < tokens; t0 += 4) {
      const size_t tb = tokens - t0 >= 4 ? 4 : tokens - t0;
      const float* vt = v + t0 * v_stride;
      float* o = out + r * tokens + t0;
      switch (tb) {
        case 1:
          DotBlock<Q, 1, 1>(rows + r, vt, v_stride, tokens, l, o);
          break;
        case 2:
          DotBlock<Q, 1, 2>(rows + r, vt, v_stride, tokens, l, o);
          break;
        case 3:
          DotBlock<Q, 1, 3>(rows + r, vt, v_stride, tokens, l, o);
          break;
        default:
          DotBlock<Q, 1, 4>(rows + r, vt, v_stride, tokens, l, o);
          break;
      }
    }
  }
}

template <QuantType Q, int TB>
SPARSE_MLP_AVX2 void AxpyBlock(const uint8_t* const* rows, size_t n, const float* coef,
                               size_t tokens, const quant::RowLayout& l, float* y,
                               size_t y_stride) {
  const size_t h = l.hidden(), group = l.group();
  for (size_t c = 0; c < h; c += 8) {
    const size_t width = h - c >= 8 ? 8 : h - c;
    __m256 acc[TB];
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      acc[k] = width == 8 ? _mm256_loadu_ps(y + k * y_stride + c)
                          : LoadTail(y + k * y_stride + c, width);
    }
    const size_t g = c / group;
    for (size_t j = 0; j < n; ++j) {
      const __m256 s = Scale(rows[j], l, g);
      const __m256 w = width == 8 ? Deq8<Q>(rows[j], c, s) : Deq8Tail(rows[j], c, width, s);
      SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
        acc[k] = _mm256_fmadd_ps(w, _mm256_set1_ps(coef[j * tokens + k]), acc[k]);
      }
    }
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      if (width == 8) {
        _mm256_storeu_ps(y + k * y_stride + c, acc[k]);
      } else {
        alignas(32) float pad[8];
        _mm256_store_ps(pad, acc[k]);
        std::memcpy(y + k * y_stride + c, pad, width * sizeof(float));
      }
    }
  }
}

template <QuantType Q>
SPARSE_MLP_AVX2 void Axpy(const void* const* rows_in, size_t n, const float* coef, size_t tokens,
                          const quant::RowLayout& l, float* y, size_t y_stride) {
  const auto* rows = reinterpret_cast<const uint8_t* const*>(rows_in);
  for (size_t t0 = 0; t0 < tokens; t0 += 4) {
    const size_t tb = tokens - t0 >= 4 ? 4 : tokens - t0;
    float* yt = y + t0 * y_stride;
    const float* ct = coef + t0;
    switch (tb) {
      case 1:
        AxpyBlock<Q, 1>(rows, n, ct, tokens, l, yt, y_stride);
        break;
      case 2:
        AxpyBlock<Q, 2>(rows, n, ct, tokens, l, yt, y_stride);
        break;
      case 3:
        AxpyBlock<Q, 3>(rows, n, ct, tokens, l, yt, y_stride);
        break;
      default:
        AxpyBlock<Q, 4>(rows, n, ct, tokens, l, yt, y_stride);
        break;
    }
  }
}

}  // namespace

QuantKernels Avx2QuantKernels(QuantType type) {
  if (type == QuantType::kInt8) {
    return {&Dot<QuantType::kInt8>, &Axpy<QuantType::kInt8>, SimdLevel::kAvx2, nullptr};
  }
  return {&Dot<QuantType::kQ4>, &Axpy<QuantType::kQ4>, SimdLevel::kAvx2, nullptr};
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
