// The forward's kernels over quantized rows (quant/format.h), internal to
// //mlp: the same two operations as kernels.h, reading int8 or q4 rows with
// their float16 group scales and float32 vectors:
//   dot:  out[r x tokens + t] = <w_r, v_t> for rows r < nrows <= kMaxDotRows;
//   axpy: y_t[c] += sum_{j < n} coef[j x tokens + t] x w_j[c] (n <= kMaxAxpyRows),
// where w is the row dequantized, q x scale. Each 16 (AVX-512) or 8 (AVX2)
// weights are widened to float32 and multiplied by their group's scale in
// registers, once for all tokens of the call, then enter the same float32
// FMAs as float weights: at one token the loads bound the time (a quantized
// row is 1/2 to 1/4 of a bfloat16 one), and a block of tokens re-uses each
// dequantized vector. The dot products are float32 throughout (x is not
// quantized), so every level agrees with the float64 reference on the
// dequantized weights to float32 rounding.
// Thread-safe (pure functions); no allocation.
#ifndef SPARSE_MLP_MLP_QUANT_KERNELS_H_
#define SPARSE_MLP_MLP_QUANT_KERNELS_H_

#include <cstddef>

#include "platform/simd_level.h"
#include "quant/format.h"

namespace sparse_mlp::mlp::internal {

// v_t at v + t x v_stride floats.
using QuantDotFn = void (*)(const void* const* rows, size_t nrows, const float* v, size_t v_stride,
                            size_t tokens, const quant::RowLayout& layout, float* out);
// y_t at y + t x y_stride floats.
using QuantAxpyFn = void (*)(const void* const* rows, size_t n, const float* coef, size_t tokens,
                             const quant::RowLayout& layout, float* y, size_t y_stride);

struct QuantKernels {
  QuantDotFn dot = nullptr;
  QuantAxpyFn axpy = nullptr;
  SimdLevel level = SimdLevel::kScalar;  // the level that runs
};

// The kernels of `level` (resolved; kAvx2 also needs FMA and F16C, else the
// scalar ones run) for rows of `type`.
QuantKernels SelectQuantKernels(quant::QuantType type, SimdLevel level);

QuantKernels ScalarQuantKernels(quant::QuantType type);
#if SPARSE_MLP_X86
QuantKernels Avx2QuantKernels(quant::QuantType type);
QuantKernels Avx512QuantKernels(quant::QuantType type);
#endif

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_MLP_QUANT_KERNELS_H_
