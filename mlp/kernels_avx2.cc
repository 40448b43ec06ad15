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

// R rows x TB tokens of accumulators (at most 8 of the 16 registers).
template <DType W, DType V, int R, int TB>
SPARSE_MLP_AVX2 inline void DotBlock(const void* const* rows, const void* v, size_t v_stride,
                                     size_t len, float* out, size_t out_stride) {
  __m256 acc[R][TB];
  SPARSE_MLP_UNROLL
  for (int r = 0; r < R; ++r) {
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) acc[r][t] = _mm256_setzero_ps();
  }
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    __m256 w[R];
    SPARSE_MLP_UNROLL
    for (int r = 0; r < R; ++r) w[r] = Load8<W>(rows[r], i);
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      const __m256 x = Load8<V>(v, t * v_stride + i);
      SPARSE_MLP_UNROLL
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(w[r], x, acc[r][t]);
    }
  }
  SPARSE_MLP_UNROLL
  for (int r = 0; r < R; ++r) {
    SPARSE_MLP_UNROLL
    for (int t = 0; t < TB; ++t) {
      float s = HorizontalSum(acc[r][t]);
      for (size_t k = i; k < len; ++k) s += Elem<W>(rows[r], k) * Elem<V>(v, t * v_stride + k);
      out[r * out_stride + t] = s;
    }
  }
}

template <DType W, DType V, int R>
SPARSE_MLP_AVX2 void DotRows(const void* const* rows, const void* v, size_t v_stride,
                             size_t tokens, size_t len, float* out) {
  const auto* v8 = static_cast<const uint8_t*>(v);
#define SPARSE_MLP_DOT_BLOCK(TB, t) \
  DotBlock<W, V, R, TB>(rows, v8 + (t) * v_stride * DTypeSize(V), v_stride, len, out + (t), tokens)
  SPARSE_MLP_FOR_TOKEN_BLOCKS_OF(tokens, R <= 2 ? 4 : 2, SPARSE_MLP_DOT_BLOCK)
#undef SPARSE_MLP_DOT_BLOCK
}

template <DType W, DType V>
SPARSE_MLP_AVX2 void Dot(const void* const* rows, size_t nrows, const void* v,
                         size_t v_stride, size_t tokens, size_t len, float* out) {
#define SPARSE_MLP_DOT_ROWS(R) DotRows<W, V, R>(rows, v, v_stride, tokens, len, out)
  SPARSE_MLP_FOR_DOT_ROWS(nrows, SPARSE_MLP_DOT_ROWS)
#undef SPARSE_MLP_DOT_ROWS
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
  for (size_t j = 0; j < n; j += 8) {
    const size_t nb = n - j < 8 ? n - j : 8;
#define SPARSE_MLP_AXPY_ROWS(N) \
  AxpyRows<W, N>(rows + j, coef + j * tokens, tokens, len, y, y_stride)
    SPARSE_MLP_FOR_ROW_COUNT(nb, SPARSE_MLP_AXPY_ROWS)
#undef SPARSE_MLP_AXPY_ROWS
  }
}

}  // namespace

Kernels Avx2Kernels(DType dtype) {
  return ForDType(dtype, [](auto w) {
    constexpr DType W = decltype(w)::value;
    return MakeKernels(Dot<W, VectorDType(W)>, Dot<W, DType::kFloat32>, Axpy<W>,
                       SimdLevel::kAvx2);
  });
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
