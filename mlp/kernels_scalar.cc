// Portable reference kernels (and the dispatch): plain loops, one float32
// accumulator per output.
#include <cstdint>

#include "mlp/kernel_util.h"
#include "mlp/kernels.h"

namespace sparse_mlp::mlp::internal {
namespace {

template <DType W, DType V>
void Dot2(const void* a, const void* b, const void* v, size_t v_stride, size_t tokens,
          size_t len, float* out_a, float* out_b) {
  const size_t vsize = DTypeSize(V);
  for (size_t t = 0; t < tokens; ++t) {
    const void* vt = static_cast<const uint8_t*>(v) + t * v_stride * vsize;
    float sa = 0.0f, sb = 0.0f;
    for (size_t i = 0; i < len; ++i) {
      const float x = Elem<V>(vt, i);
      if (a != nullptr) sa += Elem<W>(a, i) * x;
      sb += Elem<W>(b, i) * x;
    }
    if (a != nullptr) out_a[t] = sa;
    out_b[t] = sb;
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

template <DType W>
Kernels Make() {
  Kernels k;
  k.dot2 = Dot2<W, VectorDType(W)>;
  k.dot2_f32 = Dot2<W, DType::kFloat32>;
  k.axpy = Axpy<W>;
  k.level = SimdLevel::kScalar;
  return k;
}

}  // namespace

Kernels ScalarKernels(DType dtype) {
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
