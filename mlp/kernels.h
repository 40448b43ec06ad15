// The MLP forward's inner kernels and their runtime dispatch (internal to
// //mlp). Two operations cover every source of rows and both layouts of
// down:
//   dot2: for tokens t, out_a[t] = <a, v_t> and out_b[t] = <b, v_t> (a may
//         be null: only out_b), a and b rows of `len` weights, read once
//         for all tokens (token blocks of 4 re-read them from L1);
//   axpy: for tokens t, y_t += sum_{j < n} coef[j x tokens + t] x row_j
//         (n <= kMaxAxpyRows rows, y in float32, in the kernel's column
//         order: Kernels::bf16_dot).
// Weights are float32, bfloat16 or float16, converted to float32 exactly
// (bfloat16 and float16 embed in float32); products accumulate in float32.
// Vectors v are float32, or bfloat16 in dot2 of bfloat16 weights (the
// caller rounds x once; bfloat16 x bfloat16 products are exact in float32,
// and vdpbf16ps computes them two at a time).
//
// Every level's kernels compute the same sums in a different order
// (vector lanes, then a horizontal sum): results agree to float32 rounding,
// not bit for bit; tests bound the difference against a float64 reference.
// Thread-safe (pure functions); no allocation.
#ifndef SPARSE_MLP_MLP_KERNELS_H_
#define SPARSE_MLP_MLP_KERNELS_H_

#include <cstddef>

#include "platform/dtype.h"
#include "platform/simd_level.h"

namespace sparse_mlp::mlp::internal {

inline constexpr size_t kMaxAxpyRows = 32;
inline constexpr size_t kMaxDotRows = 4;

// v_t at v + t x v_stride elements.
using DotFn = void (*)(const void* const* rows, size_t nrows, const void* v, size_t v_stride,
                       size_t tokens, size_t len, float* out);
// y_t at y + t x y_stride floats.
using AxpyFn = void (*)(const void* const* rows, size_t n, const float* coef, size_t tokens,
                        size_t len, float* y, size_t y_stride);

struct Kernels {
  DotFn dot = nullptr;      // v in the weights' vector form (VectorDType)
  DotFn dot_f32 = nullptr;  // v float32 whatever the weights
  AxpyFn axpy = nullptr;
  SimdLevel level = SimdLevel::kScalar;  // the level that runs
  // bfloat16 weights with vdpbf16ps: dot multiplies bfloat16 pairs, and
  // axpy multiplies pairs of rows, reading the coefficients as bfloat16
  // (callers round them first) and keeping y rows in pair order,
  // PaddedWidth(len) floats whose column c is at YIndex(c). Why: one unpack
  // per 32 weights interleaves two rows' elements for vdpbf16ps (32
  // multiply-adds per instruction), where widening to float32 takes a
  // load-convert, a shift and an FMA per 16.
  bool bf16_dot = false;
};

// Columns of a y row in pair order (a multiple of 32).
constexpr size_t PaddedWidth(size_t hidden) { return (hidden + 31) / 32 * 32; }

// Where column c lives in a y row: in pair order, the unpacks of each
// 32-column block put columns 8L + 0..3 (L = 0..3, one per 128-bit lane) in
// its first 16 floats and 8L + 4..7 in the next 16.
constexpr size_t YIndex(size_t c, bool paired) {
  if (!paired) return c;
  const size_t block = c / 32 * 32, lane = (c % 32) / 8, k = c % 8;
  return block + (k < 4 ? 0 : 16) + lane * 4 + k % 4;
}

// bfloat16 for bfloat16 weights, float32 otherwise.
constexpr DType VectorDType(DType weights) {
  return weights == DType::kBFloat16 ? DType::kBFloat16 : DType::kFloat32;
}

// The kernels of `level` (resolved; kAvx2 also needs FMA and F16C, else the
// scalar ones run) for weights of `dtype`.
Kernels SelectKernels(DType dtype, SimdLevel level);

Kernels ScalarKernels(DType dtype);
#if SPARSE_MLP_X86
Kernels Avx2Kernels(DType dtype);
Kernels Avx512Kernels(DType dtype, bool bf16_dot);
#endif

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_MLP_KERNELS_H_
