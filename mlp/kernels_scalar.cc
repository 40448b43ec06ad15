// Portable reference kernels (and the dispatch): plain loops, one float32
// accumulator per output.
#include <cstdint>

#include "mlp/kernel_util.h"
#include "mlp/kernels.h"

namespace sparse_mlp::mlp::internal {
namespace {

template <DType W, DType V>
void Dot(const void* const* rows, size_t nrows, const void* v, size_t v_stride, size_t tokens,
         size_t len, float* out) {
  const size_t vsize = DTypeSize(V);
  for (size_t r = 0; r < nrows; ++r) {
    for (size_t t = 0; t < tokens; ++t) {
      const void* vt = static_cast<const uint8_t*>(v) + t * v_stride * vsize;
      float s = 0.0f;
      for (size_t i = 0; i < len; ++i) s += Elem<W>(rows[r], i) * Elem<V>(vt, i);
      out[r * tokens + t] = s;
    }
  }
}

template <DType W>
void Axpy(const void* const* rows, size_t n, const float* coef, size_t tokens, size_t len,
          float* y, size_t y_stride) {
  for (size_t t = 0; t < tokens; ++t) {
    float* yt = y + t * y_stride;
    for (size_t j = 0; j < n; ++j) {
      const float c = coef[j * tokens + t];
      for (size_t i = 0; i < len; ++i) yt[i] += c * Elem<W>(rows[j], i);
    }
  }
}

}  // namespace

Kernels ScalarKernels(DType dtype) {
  return ForDType(dtype, [](auto w) {
    constexpr DType W = decltype(w)::value;
    return MakeKernels(Dot<W, VectorDType(W)>, Dot<W, DType::kFloat32>, Axpy<W>,
                       SimdLevel::kScalar);
  });
}

Kernels SelectKernels(DType dtype, SimdLevel level) {
#if SPARSE_MLP_X86
  switch (Resolve(level)) {
    case SimdLevel::kAvx512:
      return Avx512Kernels(dtype, HasCpuFeature(CpuFeature::kAvx512Bf16));
    case SimdLevel::kAvx2:
      if (HasCpuFeature(CpuFeature::kFma) && HasCpuFeature(CpuFeature::kF16c)) {
        return Avx2Kernels(dtype);
      }
      break;
    default:
      break;
  }
#else
  (void)level;
#endif
  return ScalarKernels(dtype);
}

}  // namespace sparse_mlp::mlp::internal
