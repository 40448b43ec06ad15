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
#include "mlp/kernels.h"

#define SPARSE_MLP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

namespace sparse_mlp::mlp::internal {
namespace {

using quant::QuantType;

// The quants [c, c + 16) of a row as float32, unscaled (c a multiple of
// 16; for q4 a 32-weight block's low half at c % 32 == 0, its high half at
// 16). Scales are applied once per group, not per vector (the loops below).
template <QuantType Q>
SPARSE_MLP_AVX512 inline __m512 Quants16(const uint8_t* row, size_t c) {
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
  return _mm512_cvtepi32_ps(q);
}

// int8 quants [c, c + n), n < 16, the rest zero, unscaled.
SPARSE_MLP_AVX512 inline __m512 Quants16Tail(const uint8_t* row, size_t c, size_t n) {
  const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
  const __m512i q = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, row + c));
  return _mm512_cvtepi32_ps(q);
}

// The float16 scale of group g of a row.
SPARSE_MLP_AVX512 inline float ScaleOf(const uint8_t* row, const quant::RowLayout& l, size_t g) {
  uint16_t bits;
  std::memcpy(&bits, row + l.scale_offset() + 2 * g, 2);
  return _cvtsh_ss(bits);
}

// Scales of groups [g0, g0 + 16) of a row as float32 into out[16] (one
// conversion; groups past the row's end read as garbage and are not used).
SPARSE_MLP_AVX512 inline void Scales16(const uint8_t* row, const quant::RowLayout& l, size_t g0,
                                       float* out) {
  const size_t n = l.groups() - g0 < 16 ? l.groups() - g0 : 16;
  const __mmask16 m = static_cast<__mmask16>(n == 16 ? 0xFFFF : (1u << n) - 1);
  const __m256i h = _mm256_maskz_loadu_epi16(m, row + l.scale_offset() + 2 * g0);
  _mm512_storeu_ps(out, _mm512_cvtph_ps(h));
}

// One vector of 16 weights at `at` of NR rows, times TB tokens' x, into gacc.
template <QuantType Q, int NR, int TB>
SPARSE_MLP_AVX512 inline void VectorDot(const uint8_t* const* rows, const float* v,
                                        size_t v_stride, size_t at, __m512 (&gacc)[NR][TB]) {
  __m512 x[TB];
  SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) x[k] = _mm512_loadu_ps(v + k * v_stride + at);
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    const __m512 w = Quants16<Q>(rows[r], at);
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      gacc[r][k] = _mm512_fmadd_ps(w, x[k], gacc[r][k]);
    }
  }
}

// One group's products of NR rows x TB tokens, unscaled: CG vectors of 16
// (CG > 0: the group's width / 16, unrolled) or `width` weights (CG == 0).
template <QuantType Q, int NR, int TB, int CG>
SPARSE_MLP_AVX512 inline void GroupDot(const uint8_t* const* rows, const float* v,
                                       size_t v_stride, size_t c, size_t width,
                                       __m512 (&gacc)[NR][TB]) {
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) gacc[r][k] = _mm512_setzero_ps();
  }
  if constexpr (CG > 0) {
    SPARSE_MLP_UNROLL for (int q = 0; q < CG; ++q) {
      VectorDot<Q, NR, TB>(rows, v, v_stride, c + 16 * static_cast<size_t>(q), gacc);
    }
  } else {
    const size_t end = c + width;
    for (; c + 16 <= end; c += 16) VectorDot<Q, NR, TB>(rows, v, v_stride, c, gacc);
    if (c < end) {  // a whole-row int8 group of any width
      const size_t n = end - c;
      const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
      SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
        const __m512 w = Quants16Tail(rows[r], c, n);
        SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
          gacc[r][k] =
              _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, v + k * v_stride + c), gacc[r][k]);
        }
      }
    }
  }
}

// NR rows x TB tokens of dot products at once (NR x TB <= 8 accumulators):
// each group's products summed unscaled, then added in with the group's
// scale (one FMA per group instead of a multiply per vector), the scales
// converted 16 at a time.
template <QuantType Q, int NR, int TB, int CG>
SPARSE_MLP_AVX512 void DotBlockG(const uint8_t* const* rows, const float* v, size_t v_stride,
                                 size_t tokens, const quant::RowLayout& l, float* out) {
  __m512 acc[NR][TB];
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) acc[r][k] = _mm512_setzero_ps();
  }
  const size_t group = l.group();
  alignas(64) float scales[NR][16];
  for (size_t g = 0; g < l.groups(); ++g) {
    if (g % 16 == 0) {
      SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) Scales16(rows[r], l, g, scales[r]);
    }
    __m512 gacc[NR][TB];
    GroupDot<Q, NR, TB, CG>(rows, v, v_stride, g * group, group, gacc);
    SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
      const __m512 s = _mm512_set1_ps(scales[r][g % 16]);
      SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
        acc[r][k] = _mm512_fmadd_ps(gacc[r][k], s, acc[r][k]);
      }
    }
  }
  SPARSE_MLP_UNROLL for (int r = 0; r < NR; ++r) {
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      out[r * tokens + k] = _mm512_reduce_add_ps(acc[r][k]);
    }
  }
}

template <QuantType Q, int NR, int TB>
SPARSE_MLP_AVX512 void DotBlock(const uint8_t* const* rows, const float* v, size_t v_stride,
                                size_t tokens, const quant::RowLayout& l, float* out) {
  switch (l.group()) {
    case 32: return DotBlockG<Q, NR, TB, 2>(rows, v, v_stride, tokens, l, out);
    case 64: return DotBlockG<Q, NR, TB, 4>(rows, v, v_stride, tokens, l, out);
    case 128: return DotBlockG<Q, NR, TB, 8>(rows, v, v_stride, tokens, l, out);
    default: return DotBlockG<Q, NR, TB, 0>(rows, v, v_stride, tokens, l, out);
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

// TB tokens of y, 64 columns (four vectors) at a time in registers, every
// row added in with its coefficient times the group's scale (one scalar
// product per row and group: the vectors only widen and FMA). The rows'
// scales are converted 16 groups at a time into a table first.
template <QuantType Q, int TB>
SPARSE_MLP_AVX512 void AxpyBlock(const uint8_t* const* rows, size_t n, const float* coef,
                                 size_t tokens, const quant::RowLayout& l, float* y,
                                 size_t y_stride) {
  const size_t h = l.hidden(), group = l.group();
  alignas(64) float scales[kMaxAxpyRows][16];
  size_t table_first = ~size_t{0};  // the first group the table holds
  size_t c = 0;
  for (; c + 64 <= h; c += 64) {
    __m512 acc[4][TB];
    SPARSE_MLP_UNROLL for (int q = 0; q < 4; ++q) {
      SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
        acc[q][k] = _mm512_loadu_ps(y + k * y_stride + c + 16 * q);
      }
    }
    // The groups of the four vectors: one (group >= 64) or two (group 32).
    const size_t g0 = c / group, g1 = (c + 32) / group;
    if (table_first == ~size_t{0} || g1 >= table_first + 16) {  // the table covers g1
      table_first = g1 / 16 * 16;
      for (size_t j = 0; j < n; ++j) Scales16(rows[j], l, table_first, scales[j]);
    }
    // g0 is g1 or the group before it, in the table unless g1 opened it.
    const bool g0_in_table = g0 >= table_first;
    // The rows are up to 32 independent streams, each read 64 columns at
    // a time (a cache line of int8, half of one of q4): more than the
    // hardware prefetcher follows when they are scattered (direct index),
    // so each row's next lines are asked for ahead.
    constexpr size_t kAheadColumns = 512;
    const size_t ahead = Q == QuantType::kInt8 ? c + kAheadColumns : (c + kAheadColumns) / 2;
    for (size_t j = 0; j < n; ++j) {
      if (ahead < l.quant_bytes()) {
        _mm_prefetch(reinterpret_cast<const char*>(rows[j] + ahead), _MM_HINT_T0);
      }
      const float s1 = scales[j][g1 - table_first];
      const float s0 = g0 == g1        ? s1
                       : g0_in_table ? scales[j][g0 - table_first]
                                     : ScaleOf(rows[j], l, g0);
      __m512 c0[TB], c1[TB];
      SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
        const float a = coef[j * tokens + k];
        c0[k] = _mm512_set1_ps(a * s0);
        c1[k] = _mm512_set1_ps(a * s1);
      }
      SPARSE_MLP_UNROLL for (int q = 0; q < 4; ++q) {
        const __m512 w = Quants16<Q>(rows[j], c + 16 * q);
        SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
          acc[q][k] = _mm512_fmadd_ps(w, q < 2 ? c0[k] : c1[k], acc[q][k]);
        }
      }
    }
    SPARSE_MLP_UNROLL for (int q = 0; q < 4; ++q) {
      SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
        _mm512_storeu_ps(y + k * y_stride + c + 16 * q, acc[q][k]);
      }
    }
  }
  for (; c < h; c += 16) {  // the last columns, 16 (or fewer) at a time
    const size_t width = h - c >= 16 ? 16 : h - c;
    const __mmask16 m = static_cast<__mmask16>(width == 16 ? 0xFFFF : (1u << width) - 1);
    __m512 acc[TB];
    SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
      acc[k] = _mm512_maskz_loadu_ps(m, y + k * y_stride + c);
    }
    const size_t g = c / group;
    for (size_t j = 0; j < n; ++j) {
      const float s = ScaleOf(rows[j], l, g);
      const __m512 w = width == 16 ? Quants16<Q>(rows[j], c) : Quants16Tail(rows[j], c, width);
      SPARSE_MLP_UNROLL for (int k = 0; k < TB; ++k) {
        acc[k] = _mm512_fmadd_ps(w, _mm512_set1_ps(coef[j * tokens + k] * s), acc[k]);
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
    return {&Dot<QuantType::kInt8>, &Axpy<QuantType::kInt8>, SimdLevel::kAvx512, nullptr};
  }
  return {&Dot<QuantType::kQ4>, &Axpy<QuantType::kQ4>, SimdLevel::kAvx512, nullptr};
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
