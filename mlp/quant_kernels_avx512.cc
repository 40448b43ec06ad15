// AVX-512 quantized kernels: 16 weights widened to float32 and scaled in
// registers per step (int8: one sign-extending load; q4: one 128-bit load
// of a 32-weight block, its low or high nibbles); masked tails for
// whole-row int8 groups of any width.
#include "mlp/quant_kernels.h"

#if SPARSE_MLP_X86
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <cstdint>
#include <cstring>

#include "mlp/kernel_util.h"

#define SPARSE_MLP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace sparse_mlp::mlp::internal {
namespace {

using quant::QuantType;

SPARSE_MLP_AVX512 inline __m512 Scale(const uint8_t* row, const quant::RowLayout& l, size_t g) {
  uint16_t bits;
  std::memcpy(&bits, row + l.scale_offset() + 2 * g, 2);
  return _mm512_set1_ps(_cvtsh_ss(bits));
}

// Weights [c, c + 16) of a row, dequantized (c a multiple of 16; for q4 a
// 32-weight block's low half at c % 32 == 0, its high half at 16).
template <QuantType Q>
SPARSE_MLP_AVX512 inline __m512 Deq16(const uint8_t* row, size_t c, __m512 scale) {
  __m512i q;
  if constexpr (Q == QuantType::kInt8) {
    q = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
  } else {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c / 32 * 16));
    const __m128i nib = (c % 32) == 0
                            ? _mm_and_si128(bytes, _mm_set1_epi8(0x0F))
                            : _mm_and_si128(_mm_srli_epi16(bytes, 4), _mm_set1_epi8(0x0F));
    q = _mm512_sub_epi32(_mm512_cvtepu8_epi32(nib), _mm512_set1_epi32(8));
  }
  return _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale);
}

// int8 weights [c, c + n), n < 16, the rest zero.
SPARSE_MLP_AVX512 inline __m512 Deq16Tail(const uint8_t* row, size_t c, size_t n, __m512 scale) {
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
  const __m512i q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row + c));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(q), scale);
}

// NR rows x TB tokens of dot products at once (NR x TB <= 8 accumulators).
template <QuantType Q, int NR, int TB>
SPARSE_MLP_AVX512 void DotBlock(const uint8_t* const* rows, const float* v, size_t v_stride,
                                size_t tokens, const quant::RowLayout& l, float* out) {
  __m512 acc[NR][TB];
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) acc[r][k] = _mm512_setzero_ps();
  }
  const size_t h = l.hidden(), group = l.group();
  for (size_t g = 0; g < l.groups(); ++g) {
    __m512 s[NR];
    SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) s[r] = Scale(rows[r], l, g);
    const size_t end = (g + 1) * group;
    size_t c = g * group;
    for (; c + 16 <= end; c += 16) {
      SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
        const __m512 w = Deq16<Q>(rows[r], c, s[r]);
        SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
          acc[r][k] = _mm512_fmadd_ps(w, _mm512_loadu_ps(v + k * v_stride + c), acc[r][k]);
        }
      }
    }
    if (c < end) {  // a whole-row int8 group of any width
      const size_t n = end - c;
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
      SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
        const __m512 w = Deq16Tail(rows[r], c, n, s[r]);
        SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
          acc[r][k] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, v + k * v_stride + c), acc[r][k]);
        }
      }
    }
  }
  (void)h;
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      out[r * tokens + k] = _mm512_reduce_add_ps(acc[r][k]);
    }
  }
}

template <QuantType Q>
SPARSE_MLP_AVX512 void Dot(const void* const* rows_in, size_t nrows, const float* v,
                           size_t v_stride, size_t tokens, const quant::RowLayout& l, float* out) {
  const auto* rows = reinterpret_cast<const uint8_t* const*>(rows_in);
  if (tokens == 1) {
    // Every row of the call at once: concurrent read streams.
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
  for (size_t r = 0; r < nrows; r += 2) {
    const size_t nr = nrows - r >= 2 ? 2 : 1;
    for (size_t t0 = 0; t0 < tokens; t0 += 4) {
      const size_t tb = tokens - t0 >= 4 ? 4 : tokens - t0;
      const float* vt = v + t0 * v_stride;
      float* o = out + r * tokens + t0;
#define SPARSE_MLP_DOT_BLOCK(NR, TB) DotBlock<Q, NR, TB>(rows + r, vt, v_stride, tokens, l, o)
      if (nr == 2) {
        switch (tb) {
          case 1:
            SPARSE_MLP_DOT_BLOCK(2, 1);
            break;
          case 2:
            SPARSE_MLP_DOT_BLOCK(2, 2);
            break;
          case 3:
            SPARSE_MLP_DOT_BLOCK(2, 3);
            break;
          default:
            SPARSE_MLP_DOT_BLOCK(2, 4);
            break;
        }
      } else {
        switch (tb) {
          case 1:
            SPARSE_MLP_DOT_BLOCK(1, 1);
            break;
          case 2:
            SPARSE_MLP_DOT_BLOCK(1, 2);
            break;
          case 3:
            SPARSE_MLP_DOT_BLOCK(1, 3);
            break;
          default:
            SPARSE_MLP_DOT_BLOCK(1, 4);
            break;
        }
      }
#undef SPARSE_MLP_DOT_BLOCK
    }
  }
}

// TB tokens of y, 16 columns at a time in registers, every row added in.
template <QuantType Q, int TB>
SPARSE_MLP_AVX512 void AxpyBlock(const uint8_t* const* rows, size_t n, const float* coef,
                                 size_t tokens, const quant::RowLayout& l, float* y,
                                 size_t y_stride) {
  const size_t h = l.hidden(), group = l.group();
  for (size_t c = 0; c < h; c += 16) {
    const size_t width = h - c >= 16 ? 16 : h - c;
    const __mmask16 m = static_cast<__mmask16>(width == 16 ? 0xFFFF : (1u << width) - 1);
    __m512 acc[TB];
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      acc[k] = _mm512_maskz_loadu_ps(m, y + k * y_stride + c);
    }
    const size_t g = c / group;
    for (size_t j = 0; j < n; ++j) {
      const __m512 s = Scale(rows[j], l, g);
      const __m512 w = width == 16 ? Deq16<Q>(rows[j], c, s) : Deq16Tail(rows[j], c, width, s);
      SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
        acc[k] = _mm512_fmadd_ps(w, _mm512_set1_ps(coef[j * tokens + k]), acc[k]);
      }
    }
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      _mm512_mask_storeu_ps(y + k * y_stride + c, m, acc[k]);
    }
  }
}

template <QuantType Q>
SPARSE_MLP_AVX512 void Axpy(const void* const* rows_in, size_t n, const float* coef, size_t tokens,
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

QuantKernels Avx512QuantKernels(QuantType type) {
  if (type == QuantType::kInt8) {
    return {&Dot<QuantType::kInt8>, &Axpy<QuantType::kInt8>, SimdLevel::kAvx512};
  }
  return {&Dot<QuantType::kQ4>, &Axpy<QuantType::kQ4>, SimdLevel::kAvx512};
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
