// AVX2 + FMA + F16C kernels: 8 float32 lanes (bfloat16 and float16 weights
// widened on load), scalar tails.
#include "mlp/kernels.h"

#if SPARSE_MLP_X86
#include <immintrin.h>

#include <cstdint>

#include "mlp/kernel_util.h"

#define SPARSE_MLP_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace sparse_mlp::mlp::internal {
namespace {

template <DType D>
SPARSE_MLP_AVX2 inline __m256 Load8(const void* p, size_t i) {
  if constexpr (D == DType::kFloat32) {
    return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
    if constexpr (D == DType::kBFloat16) {
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    } else {
      return _mm256_cvtph_ps(h);
    }
  }
}

SPARSE_MLP_AVX2 inline float HorizontalSum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 d = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
}

template <DType W, DType V, int TB, bool kA>
SPARSE_MLP_AVX2 inline void Dot2Block(const void* a, const void* b, const void* v,
                                      size_t v_stride, size_t len, float* out_a,
                                      float* out_b) {
  __m256 acc_a[TB], acc_b[TB];
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) acc_a[t] = acc_b[t] = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 wb = Load8<W>(b, i);
    const __m256 wa = kA ? Load8<W>(a, i) : wb;
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m256 x = Load8<V>(v, t * v_stride + i);
      if (kA) acc_a[t] = _mm256_fmadd_ps(wa, x, acc_a[t]);
      acc_b[t] = _mm256_fmadd_ps(wb, x, acc_b[t]);
    }
  }
  SPARSE_MLP_UNROLL
  for (int t = 0; t < TB; ++t) {
    float sa = kA ? HorizontalSum(acc_a[t]) : 0.0f;
    float sb = HorizontalSum(acc_b[t]);
    for (size_t k = i; k < len; ++k) {
      const float x = Elem<V>(v, t * v_stride + k);
      if (kA) sa += Elem<W>(a, k) * x;
      sb += Elem<W>(b, k) * x;
    }
    if (kA) out_a[t] = sa;
    out_b[t] = sb;
  }
}

template <DType W, DType V, bool kA>
SPARSE_MLP_AVX2 void Dot2Tokens(const void* a, const void* b, const void* v, size_t v_stride,
                                size_t tokens, size_t len, float* out_a, float* out_b) {
  const auto* v8 = static_cast<const uint8_t*>(v);
#define SPARSE_MLP_DOT2_BLOCK(TB, t)                                                   \
  Dot2Block<W, V, TB, kA>(a, b, v8 + (t) * v_stride * DTypeSize(V), v_stride, len, \
                          out_a + (t), out_b + (t))
  SPARSE_MLP_FOR_TOKEN_BLOCKS(tokens, SPARSE_MLP_DOT2_BLOCK)
#undef SPARSE_MLP_DOT2_BLOCK
}

template <DType W, DType V>
SPARSE_MLP_AVX2 void Dot2(const void* a, const void* b, const void* v, size_t v_stride,
                          size_t tokens, size_t len, float* out_a, float* out_b) {
  if (a != nullptr) {
    Dot2Tokens<W, V, true>(a, b, v, v_stride, tokens, len, out_a, out_b);
  } else {
    Dot2Tokens<W, V, false>(a, b, v, v_stride, tokens, len, out_a, out_b);
  }
}

template <DType W, int N>
SPARSE_MLP_AVX2 void AxpyRows(const void* const* rows, const float* coef, size_t tokens,
                              size_t len, float* y, size_t y_stride) {
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    __m256 w[N];
    SPARSE_MLP_UNROLL
    for (int j = 0; j < N; ++j) w[j] = Load8<W>(rows[j], i);
    for (size_t t = 0; t < tokens; ++t) {
      float* yt = y + t * y_stride + i;
      __m256 acc0 = _mm256_loadu_ps(yt);
      __m256 acc1 = _mm256_setzero_ps();
      SPARSE_MLP_UNROLL
      for (int j = 0; j < N; ++j) {
        const __m256 c = _mm256_set1_ps(coef[j * tokens + t]);
        if (j % 2 == 0) {
          acc0 = _mm256_fmadd_ps(c, w[j], acc0);
        } else {
          acc1 = _mm256_fmadd_ps(c, w[j], acc1);
        }
      }
      _mm256_storeu_ps(yt, N > 1 ? _mm256_add_ps(acc0, acc1) : acc0);
    }
  }
  for (size_t t = 0; t < tokens; ++t) {
    float* yt = y + t * y_stride;
    for (size_t k = i; k < len; ++k) {
      float acc = yt[k];
      SPARSE_MLP_UNROLL
      for (int j = 0; j < N; ++j) acc += coef[j * tokens + t] * Elem<W>(rows[j], k);
      yt[k] = acc;
    }
  }
}

template <DType W>
SPARSE_MLP_AVX2 void Axpy(const void* const* rows, size_t n, const float* coef,
                          size_t tokens, size_t len, float* y, size_t y_stride) {
#define SPARSE_MLP_AXPY_ROWS(N) AxpyRows<W, N>(rows, coef, tokens, len, y, y_stride)
  SPARSE_MLP_FOR_ROW_COUNT(n, SPARSE_MLP_AXPY_ROWS)
#undef SPARSE_MLP_AXPY_ROWS
}

template <DType W>
Kernels Make() {
  Kernels k;
  k.dot2 = Dot2<W, VectorDType(W)>;
  k.dot2_f32 = Dot2<W, DType::kFloat32>;
  k.axpy = Axpy<W>;
  k.level = SimdLevel::kAvx2;
  return k;
}

}  // namespace

Kernels Avx2Kernels(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
      return Make<DType::kBFloat16>();
    case DType::kFloat16:
      return Make<DType::kFloat16>();
    case DType::kFloat32:
      break;
  }
  return Make<DType::kFloat32>();
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
