// AVX-512 kernels: 16 float32 lanes (bfloat16 and float16 weights widened
// on load), masked tails; bfloat16 dot products with vdpbf16ps (32 weights
// per instruction) where the CPU has AVX512_BF16.
#include "mlp/kernel_util.h"
#include "mlp/kernels.h"
#include "platform/float16.h"

#if SPARSE_MLP_X86
#include <immintrin.h>

// GCC 12's avx512fintrin.h passes intentionally undefined vectors into its
// widening conversions and reductions, then warns about them where they
// inline; the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <cstdint>

#define SPARSE_MLP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define SPARSE_MLP_AVX512_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))

namespace sparse_mlp::mlp::internal {
namespace {

template <DType D>
SPARSE_MLP_AVX512 inline __m512 Load16(const void* p, size_t i) {
  if constexpr (D == DType::kFloat32) {
    return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m256i h =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (D == DType::kBFloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}

// Lanes outside `m` read nothing and are zero.
template <DType D>
SPARSE_MLP_AVX512 inline __m512 Load16(const void* p, size_t i, __mmask16 m) {
  if constexpr (D == DType::kFloat32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(p) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(p) + i);
    if constexpr (D == DType::kBFloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}

SPARSE_MLP_AVX512 inline __mmask16 TailMask16(size_t left) {
  return static_cast<__mmask16>((1u << left) - 1u);
}

// R rows x TB tokens of accumulators (at most 16 of the 32 registers):
// each weight vector is loaded once for TB tokens, each x vector once for R
// rows.
template <DType W, DType V, int R, int TB>
SPARSE_MLP_AVX512 inline void DotBlock(const void* const* rows, const void* v, size_t v_stride,
                                       size_t len, float* out, size_t out_stride) {
  __m512 acc[R][TB];
  SPARSE_MLP_UNROLL
  for (int r = 0; r < R; ++r) {
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  size_t i = 0;
  for (; i + 16 <= len; i += 16) {
    __m512 w[R];
    SPARSE_MLP_UNROLL
    for (int r = 0; r < R; ++r) w[r] = Load16<W>(rows[r], i);
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512 x = Load16<V>(v, t * v_stride + i);
      SPARSE_MLP_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(w[r], x, acc[r][t]);
    }
  }
  if (i < len) {  // masked tail (unmasked loads above: measured faster)
    const __mmask16 m = TailMask16(len - i);
    __m512 w[R];
    SPARSE_MLP_UNROLL
    for (int r = 0; r < R; ++r) w[r] = Load16<W>(rows[r], i, m);
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512 x = Load16<V>(v, t * v_stride + i, m);
      SPARSE_MLP_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(w[r], x, acc[r][t]);
    }
  }
  SPARSE_MLP_UNROLL
  for (int r = 0; r < R; ++r) {
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) out[r * out_stride + t] = _mm512_reduce_add_ps(acc[r][t]);
  }
}

template <DType W, DType V, int R>
SPARSE_MLP_AVX512 void DotRows(const void* const* rows, const void* v, size_t v_stride,
                               size_t tokens, size_t len, float* out) {
  const auto* v8 = static_cast<const uint8_t*>(v);
#define SPARSE_MLP_DOT_BLOCK(TB, t) \
  DotBlock<W, V, R, TB>(rows, v8 + (t) * v_stride * DTypeSize(V), v_stride, len, out + (t), tokens)
  SPARSE_MLP_FOR_TOKEN_BLOCKS(tokens, SPARSE_MLP_DOT_BLOCK)
#undef SPARSE_MLP_DOT_BLOCK
}

template <DType W, DType V>
SPARSE_MLP_AVX512 void Dot(const void* const* rows, size_t nrows, const void* v,
                           size_t v_stride, size_t tokens, size_t len, float* out) {
#define SPARSE_MLP_DOT_ROWS(R) DotRows<W, V, R>(rows, v, v_stride, tokens, len, out)
  SPARSE_MLP_FOR_DOT_ROWS(nrows, SPARSE_MLP_DOT_ROWS)
#undef SPARSE_MLP_DOT_ROWS
}

// bfloat16 x bfloat16 with vdpbf16ps: each 32-bit lane adds the products
// of one pair of adjacent elements, 32 weights per instruction.
template <int R, int TB>
SPARSE_MLP_AVX512_BF16 inline void DotBf16Block(const void* const* rows, const uint16_t* v,
                                                size_t v_stride, size_t len, float* out,
                                                size_t out_stride) {
  __m512 acc[R][TB];
  SPARSE_MLP_UNROLL
  for (int r = 0; r < R; ++r) {
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  size_t i = 0;
  for (; i + 32 <= len; i += 32) {
    __m512bh w[R];
    SPARSE_MLP_UNROLL
    for (int r = 0; r < R; ++r) {
      w[r] = (__m512bh)_mm512_loadu_si512(static_cast<const uint16_t*>(rows[r]) + i);
    }
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512(v + t * v_stride + i);
      SPARSE_MLP_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[r], x);
    }
  }
  if (i < len) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << (len - i)) - 1);
    __m512bh w[R];
    SPARSE_MLP_UNROLL
    for (int r = 0; r < R; ++r) {
      w[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, static_cast<const uint16_t*>(rows[r]) + i);
    }
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512bh x = (__m512bh)_mm512_maskz_loadu_epi16(m, v + t * v_stride + i);
      SPARSE_MLP_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w[r], x);
    }
  }
  SPARSE_MLP_UNROLL
  for (int r = 0; r < R; ++r) {
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) out[r * out_stride + t] = _mm512_reduce_add_ps(acc[r][t]);
  }
}

template <int R>
SPARSE_MLP_AVX512_BF16 void DotBf16Rows(const void* const* rows, const uint16_t* v,
                                        size_t v_stride, size_t tokens, size_t len, float* out) {
#define SPARSE_MLP_DOT_BLOCK(TB, t) \
  DotBf16Block<R, TB>(rows, v + (t) * v_stride, v_stride, len, out + (t), tokens)
  SPARSE_MLP_FOR_TOKEN_BLOCKS(tokens, SPARSE_MLP_DOT_BLOCK)
#undef SPARSE_MLP_DOT_BLOCK
}

SPARSE_MLP_AVX512_BF16 void DotBf16(const void* const* rows, size_t nrows, const void* v,
                                    size_t v_stride, size_t tokens, size_t len, float* out) {
  const auto* v16 = static_cast<const uint16_t*>(v);
#define SPARSE_MLP_DOT_ROWS(R) DotBf16Rows<R>(rows, v16, v_stride, tokens, len, out)
  SPARSE_MLP_FOR_DOT_ROWS(nrows, SPARSE_MLP_DOT_ROWS)
#undef SPARSE_MLP_DOT_ROWS
}

// N rows at once: each y vector is loaded and stored once per N rows; two
// accumulators halve the dependency chain at one token.
// From this many tokens on, Axpy keeps the tokens' sums in registers
// (AxpyColumns) rather than the rows' weights (AxpyRows): measured T = 16
// -10% time, T = 4 +15% (//bench:mlp, docs/performance.md).
constexpr size_t kColumnAxpyTokens = 8;

template <DType W, int N>
SPARSE_MLP_AVX512 void AxpyRows(const void* const* rows, const float* coef, size_t tokens,
                                size_t len, float* y, size_t y_stride) {
  for (size_t i = 0; i < len; i += 16) {
    const bool tail = i + 16 > len;
    const __mmask16 m = tail ? TailMask16(len - i) : static_cast<__mmask16>(0xffff);
    __m512 w[N];
    SPARSE_MLP_UNROLL
    for (int j = 0; j < N; ++j) w[j] = tail ? Load16<W>(rows[j], i, m) : Load16<W>(rows[j], i);
    for (size_t t = 0; t < tokens; ++t) {
      float* yt = y + t * y_stride + i;
      __m512 acc0 = tail ? _mm512_maskz_loadu_ps(m, yt) : _mm512_loadu_ps(yt);
      __m512 acc1 = _mm512_setzero_ps();
      SPARSE_MLP_UNROLL
      for (int j = 0; j < N; ++j) {
        const __m512 c = _mm512_set1_ps(coef[j * tokens + t]);
        if (j % 2 == 0) {
          acc0 = _mm512_fmadd_ps(c, w[j], acc0);
        } else {
          acc1 = _mm512_fmadd_ps(c, w[j], acc1);
        }
      }
      if (N > 1) acc0 = _mm512_add_ps(acc0, acc1);
      if (tail) {
        _mm512_mask_storeu_ps(yt, m, acc0);
      } else {
        _mm512_storeu_ps(yt, acc0);
      }
    }
  }
}

// Several tokens: for each vector of 16 columns, the sums of TB tokens stay
// in registers while all n rows pass (one weight load serves TB FMAs), so
// y is read and written once per call, not once per 8 rows.
template <DType W, int TB>
SPARSE_MLP_AVX512 void AxpyColumns(const void* const* rows, size_t n, const float* coef,
                                   size_t tokens, size_t len, float* y, size_t y_stride) {
  for (size_t i = 0; i < len; i += 16) {
    const bool tail = i + 16 > len;
    const __mmask16 m = tail ? TailMask16(len - i) : static_cast<__mmask16>(0xffff);
    __m512 acc[TB];
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) acc[t] = _mm512_maskz_loadu_ps(m, y + t * y_stride + i);
    for (size_t j = 0; j < n; ++j) {
      const __m512 w = tail ? Load16<W>(rows[j], i, m) : Load16<W>(rows[j], i);
      const float* c = coef + j * tokens;
      SPARSE_MLP_UNROLL
      for (int t = 0; t < TB; ++t) acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(c[t]), w, acc[t]);
    }
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) _mm512_mask_storeu_ps(y + t * y_stride + i, m, acc[t]);
  }
}

template <DType W>
SPARSE_MLP_AVX512 void Axpy(const void* const* rows, size_t n, const float* coef,
                            size_t tokens, size_t len, float* y, size_t y_stride) {
  if (tokens >= kColumnAxpyTokens) {
#define SPARSE_MLP_AXPY_COLUMNS(TB, t) \
  AxpyColumns<W, TB>(rows, n, coef + (t), tokens, len, y + (t) * y_stride, y_stride)
    SPARSE_MLP_FOR_TOKEN_BLOCKS_8(tokens, SPARSE_MLP_AXPY_COLUMNS)
#undef SPARSE_MLP_AXPY_COLUMNS
    return;
  }
  for (size_t j = 0; j < n; j += 8) {
    const size_t nb = n - j < 8 ? n - j : 8;
#define SPARSE_MLP_AXPY_ROWS(N) \
  AxpyRows<W, N>(rows + j, coef + j * tokens, tokens, len, y, y_stride)
    SPARSE_MLP_FOR_ROW_COUNT(nb, SPARSE_MLP_AXPY_ROWS)
#undef SPARSE_MLP_AXPY_ROWS
  }
}

// bfloat16 rows in pairs with vdpbf16ps (Kernels::bf16_dot): the two rows'
// elements interleaved by one unpack per 32 columns meet (h_j, h_j+1)
// coefficient pairs, two multiply-adds per 32-bit lane. For each 32-column
// block the sums of up to 8 tokens stay in registers while all row pairs
// pass. An odd last row pairs with itself under a zero coefficient.
template <int TB>
SPARSE_MLP_AVX512_BF16 void AxpyBf16PairBlock(const uint16_t* const* rows, size_t pairs,
                                              const uint32_t* cpair, size_t tokens, size_t i,
                                              __mmask32 m, float* y, size_t y_stride) {
  __m512 lo[TB], hi[TB];
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) {
    lo[t] = _mm512_loadu_ps(y + t * y_stride + i);
    hi[t] = _mm512_loadu_ps(y + t * y_stride + i + 16);
  }
  for (size_t q = 0; q < pairs; ++q) {
    const __m512i a = _mm512_maskz_loadu_epi16(m, rows[2 * q] + i);
    const __m512i b = _mm512_maskz_loadu_epi16(m, rows[2 * q + 1] + i);
    const __m512bh ab_lo = (__m512bh)_mm512_unpacklo_epi16(a, b);
    const __m512bh ab_hi = (__m512bh)_mm512_unpackhi_epi16(a, b);
    const uint32_t* c = cpair + q * tokens;
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512bh ct = (__m512bh)_mm512_set1_epi32(static_cast<int>(c[t]));
      lo[t] = _mm512_dpbf16_ps(lo[t], ab_lo, ct);
      hi[t] = _mm512_dpbf16_ps(hi[t], ab_hi, ct);
    }
  }
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) {
    _mm512_storeu_ps(y + t * y_stride + i, lo[t]);
    _mm512_storeu_ps(y + t * y_stride + i + 16, hi[t]);
  }
}

SPARSE_MLP_AVX512_BF16 void AxpyBf16Pairs(const void* const* rows, size_t n, const float* coef,
                                          size_t tokens, size_t len, float* y,
                                          size_t y_stride) {
  if (n == 0) return;
  const uint16_t* paired[kMaxAxpyRows + 1];
  uint32_t cpair[(kMaxAxpyRows + 1) / 2 * 32];  // [pair][token], tokens <= 32
  const size_t pairs = (n + 1) / 2;
  for (size_t q = 0; q < pairs; ++q) {
    const size_t j = 2 * q, j1 = j + 1 < n ? j + 1 : j;
    paired[j] = static_cast<const uint16_t*>(rows[j]);
    paired[j + 1] = static_cast<const uint16_t*>(rows[j1]);
    for (size_t t = 0; t < tokens; ++t) {
      const uint32_t h0 = FloatToBFloat16(coef[j * tokens + t]);
      const uint32_t h1 = j + 1 < n ? FloatToBFloat16(coef[(j + 1) * tokens + t]) : 0;
      cpair[q * tokens + t] = h0 | (h1 << 16);
    }
  }
  // All pairs in one pass over each block of y: with fewer rows per pass
  // the y traffic dominates (T = 1, one thread: 8 pairs 1.5x the read
  // floor, 2 pairs 2.6x, 1 pair 3.6x; docs/performance.md).
  for (size_t i = 0; i < len; i += 32) {
    const __mmask32 m = len - i >= 32 ? static_cast<__mmask32>(0xffffffffu)
                                      : static_cast<__mmask32>((uint64_t{1} << (len - i)) - 1);
#define SPARSE_MLP_PAIR_BLOCK(TB, t) \
  AxpyBf16PairBlock<TB>(paired, pairs, cpair + (t), tokens, i, m, y + (t) * y_stride, y_stride)
    SPARSE_MLP_FOR_TOKEN_BLOCKS_8(tokens, SPARSE_MLP_PAIR_BLOCK)
#undef SPARSE_MLP_PAIR_BLOCK
  }
}

}  // namespace

Kernels Avx512Kernels(DType dtype, bool bf16_dot) {
  return ForDType(dtype, [bf16_dot](auto w) {
    constexpr DType W = decltype(w)::value;
    Kernels k = MakeKernels(Dot<W, VectorDType(W)>, Dot<W, DType::kFloat32>, Axpy<W>,
                            SimdLevel::kAvx512);
    if (W == DType::kBFloat16 && bf16_dot) {
      k.dot = DotBf16;
      k.bf16_dot = true;
      k.axpy = AxpyBf16Pairs;
    }
    return k;
  });
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
