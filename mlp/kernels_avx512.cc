// AVX-512 kernels: 16 float32 lanes (bfloat16 and float16 weights widened
// on load), masked tails; bfloat16 dot products with vdpbf16ps (32 weights
// per instruction) where the CPU has AVX512_BF16.
#include "mlp/kernels.h"
#include "mlp/kernel_util.h"

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

template <DType W, DType V, int TB, bool kA>
SPARSE_MLP_AVX512 inline void Dot2Block(const void* a, const void* b, const void* v,
                                        size_t v_stride, size_t len, float* out_a,
                                        float* out_b) {
  __m512 acc_a[TB], acc_b[TB];
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) acc_a[t] = acc_b[t] = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= len; i += 16) {
    const __m512 wb = Load16<W>(b, i);
    const __m512 wa = kA ? Load16<W>(a, i) : wb;
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512 x = Load16<V>(v, t * v_stride + i);
      if (kA) acc_a[t] = _mm512_fmadd_ps(wa, x, acc_a[t]);
      acc_b[t] = _mm512_fmadd_ps(wb, x, acc_b[t]);
    }
  }
  if (i < len) {
    const __mmask16 m = TailMask16(len - i);
    const __m512 wb = Load16<W>(b, i, m);
    const __m512 wa = kA ? Load16<W>(a, i, m) : wb;
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512 x = Load16<V>(v, t * v_stride + i, m);
      if (kA) acc_a[t] = _mm512_fmadd_ps(wa, x, acc_a[t]);
      acc_b[t] = _mm512_fmadd_ps(wb, x, acc_b[t]);
    }
  }
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) {
    if (kA) out_a[t] = _mm512_reduce_add_ps(acc_a[t]);
    out_b[t] = _mm512_reduce_add_ps(acc_b[t]);
  }
}

template <DType W, DType V, bool kA>
SPARSE_MLP_AVX512 void Dot2Tokens(const void* a, const void* b, const void* v, size_t v_stride,
                                  size_t tokens, size_t len, float* out_a, float* out_b) {
  const auto* v8 = static_cast<const uint8_t*>(v);
#define SPARSE_MLP_DOT2_BLOCK(TB, t)                                                   \
  Dot2Block<W, V, TB, kA>(a, b, v8 + (t) * v_stride * DTypeSize(V), v_stride, len, \
                          out_a + (t), out_b + (t))
  SPARSE_MLP_FOR_TOKEN_BLOCKS(tokens, SPARSE_MLP_DOT2_BLOCK)
#undef SPARSE_MLP_DOT2_BLOCK
}

template <DType W, DType V>
SPARSE_MLP_AVX512 void Dot2(const void* a, const void* b, const void* v, size_t v_stride,
                            size_t tokens, size_t len, float* out_a, float* out_b) {
  if (a != nullptr) {
    Dot2Tokens<W, V, true>(a, b, v, v_stride, tokens, len, out_a, out_b);
  } else {
    Dot2Tokens<W, V, false>(a, b, v, v_stride, tokens, len, out_a, out_b);
  }
}

// bfloat16 x bfloat16 with vdpbf16ps: each 32-bit lane adds the products
// of one pair of adjacent elements.
template <int TB, bool kA>
SPARSE_MLP_AVX512_BF16 inline void Dot2Bf16Block(const uint16_t* a, const uint16_t* b,
                                                 const uint16_t* v, size_t v_stride,
                                                 size_t len, float* out_a, float* out_b) {
  __m512 acc_a[TB], acc_b[TB];
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) acc_a[t] = acc_b[t] = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= len; i += 32) {
    const __m512bh wb = (__m512bh)_mm512_loadu_si512(b + i);
    const __m512bh wa = kA ? (__m512bh)_mm512_loadu_si512(a + i) : wb;
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512bh x = (__m512bh)_mm512_loadu_si512(v + t * v_stride + i);
      if (kA) acc_a[t] = _mm512_dpbf16_ps(acc_a[t], wa, x);
      acc_b[t] = _mm512_dpbf16_ps(acc_b[t], wb, x);
    }
  }
  if (i < len) {
    const __mmask32 m = static_cast<__mmask32>((uint64_t{1} << (len - i)) - 1);
    const __m512bh wb = (__m512bh)_mm512_maskz_loadu_epi16(m, b + i);
    const __m512bh wa = kA ? (__m512bh)_mm512_maskz_loadu_epi16(m, a + i) : wb;
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m512bh x = (__m512bh)_mm512_maskz_loadu_epi16(m, v + t * v_stride + i);
      if (kA) acc_a[t] = _mm512_dpbf16_ps(acc_a[t], wa, x);
      acc_b[t] = _mm512_dpbf16_ps(acc_b[t], wb, x);
    }
  }
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) {
    if (kA) out_a[t] = _mm512_reduce_add_ps(acc_a[t]);
    out_b[t] = _mm512_reduce_add_ps(acc_b[t]);
  }
}

template <bool kA>
SPARSE_MLP_AVX512_BF16 void Dot2Bf16Tokens(const uint16_t* a, const uint16_t* b,
                                           const uint16_t* v, size_t v_stride, size_t tokens,
                                           size_t len, float* out_a, float* out_b) {
#define SPARSE_MLP_DOT2_BLOCK(TB, t) \
  Dot2Bf16Block<TB, kA>(a, b, v + (t) * v_stride, v_stride, len, out_a + (t), out_b + (t))
  SPARSE_MLP_FOR_TOKEN_BLOCKS(tokens, SPARSE_MLP_DOT2_BLOCK)
#undef SPARSE_MLP_DOT2_BLOCK
}

SPARSE_MLP_AVX512_BF16 void Dot2Bf16(const void* a, const void* b, const void* v,
                                     size_t v_stride, size_t tokens, size_t len, float* out_a,
                                     float* out_b) {
  const auto* a16 = static_cast<const uint16_t*>(a);
  const auto* b16 = static_cast<const uint16_t*>(b);
  const auto* v16 = static_cast<const uint16_t*>(v);
  if (a != nullptr) {
    Dot2Bf16Tokens<true>(a16, b16, v16, v_stride, tokens, len, out_a, out_b);
  } else {
    Dot2Bf16Tokens<false>(a16, b16, v16, v_stride, tokens, len, out_a, out_b);
  }
}

// N rows at once: each y vector is loaded and stored once per N rows; two
// accumulators halve the dependency chain at one token.
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

template <DType W>
SPARSE_MLP_AVX512 void Axpy(const void* const* rows, size_t n, const float* coef,
                            size_t tokens, size_t len, float* y, size_t y_stride) {
#define SPARSE_MLP_AXPY_ROWS(N) AxpyRows<W, N>(rows, coef, tokens, len, y, y_stride)
  SPARSE_MLP_FOR_ROW_COUNT(n, SPARSE_MLP_AXPY_ROWS)
#undef SPARSE_MLP_AXPY_ROWS
}

template <DType W>
Kernels Make(bool bf16_dot) {
  Kernels k;
  k.dot2 = Dot2<W, VectorDType(W)>;
  k.dot2_f32 = Dot2<W, DType::kFloat32>;
  k.axpy = Axpy<W>;
  k.level = SimdLevel::kAvx512;
  if (W == DType::kBFloat16 && bf16_dot) {
    k.dot2 = Dot2Bf16;
    k.bf16_dot = true;
  }
  return k;
}

}  // namespace

Kernels Avx512Kernels(DType dtype, bool bf16_dot) {
  switch (dtype) {
    case DType::kBFloat16:
      return Make<DType::kBFloat16>(bf16_dot);
    case DType::kFloat16:
      return Make<DType::kFloat16>(bf16_dot);
    case DType::kFloat32:
      break;
  }
  return Make<DType::kFloat32>(bf16_dot);
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
