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

// One token's x rounded to int8 per block of 32 (ForwardOptions::
// quantize_x), as QuantizeX lays it out in Int8XBytes(hidden) bytes:
//   q[c]       round(x[c] / scale[c / 32]), in [-127, 127]
//   scale[b]   max |x| of block b / 127 (0 for a block of zeros)
//   bias[k]    -128 x (q[4k] + ... + q[4k + 3]): the offset of unsigned
//              weights (w + 128) in a u8 x s8 dot, per 32-bit lane
//   dequant[c] q[c] x scale[c / 32]: the rounded x for float kernels
//   q4[]       q in the order of q4 rows' nibbles, per 128 weights (four
//              blocks): the blocks' first 16 values (the low nibbles'),
//              then their last 16 (the high nibbles'); zero-padded
//   q4_bias[]  per 128 weights, 16 lanes: -8 x the sum of the 8 values a
//              lane's low and high nibbles meet (q4 stores q + 8)
struct Int8X {
  const int8_t* q;
  const float* scale;
  const int32_t* bias;
  const float* dequant;
  const int8_t* q4;
  const int32_t* q4_bias;
};

// Bytes of one token's Int8X (a multiple of 64); hidden % 32 == 0.
size_t Int8XBytes(size_t hidden);
// Rounds x (hidden floats) into `out` (Int8XBytes(hidden) bytes, 64-byte
// aligned) and returns the views.
Int8X QuantizeX(const float* x, size_t hidden, void* out);
// The views of a token QuantizeX wrote at `at`.
Int8X Int8XAt(const void* at, size_t hidden);

// out[r x tokens + t] = <w_r, x_t> on int8 rows and rounded x, integer
// products per block (x[t] for token t).
using QuantDotInt8Fn = void (*)(const void* const* rows, size_t nrows, const Int8X* x,
                                size_t tokens, const quant::RowLayout& layout, float* out);

struct QuantKernels {
  QuantDotFn dot = nullptr;
  QuantAxpyFn axpy = nullptr;
  SimdLevel level = SimdLevel::kScalar;  // the level that runs
  // The integer dot where the CPU has one (AVX-512 VNNI); null: `dot`
  // runs on Int8X::dequant.
  QuantDotInt8Fn dot_int8 = nullptr;
};

// The kernels of `level` (resolved; kAvx2 also needs FMA and F16C, else the
// scalar ones run) for rows of `type`.
QuantKernels SelectQuantKernels(quant::QuantType type, SimdLevel level);

QuantKernels ScalarQuantKernels(quant::QuantType type);
#if SPARSE_MLP_X86
QuantKernels Avx2QuantKernels(quant::QuantType type);
QuantKernels Avx512QuantKernels(quant::QuantType type);
// The AVX-512 VNNI integer dot of rows of `type` (null without VNNI).
QuantDotInt8Fn VnniDotInt8(quant::QuantType type);
#endif

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_MLP_QUANT_KERNELS_H_
