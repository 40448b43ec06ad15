// Pieces shared by the per-ISA kernel files of mlp/ (internal): scalar
// element reads for tails and the reference, and the dispatch of runtime
// block sizes to the template arguments the register-blocked loops need.
// Macros, not templates taking a lambda: a lambda does not inherit its
// enclosing function's target attribute, and the intrinsics inside would
// not compile.
#ifndef SPARSE_MLP_MLP_KERNEL_UTIL_H_
#define SPARSE_MLP_MLP_KERNEL_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "mlp/kernels.h"
#include "platform/dtype.h"
#include "platform/float16.h"

namespace sparse_mlp::mlp::internal {

template <DType D>
inline float Elem(const void* p, size_t i) {
  if constexpr (D == DType::kFloat32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (D == DType::kBFloat16) {
    return BFloat16ToFloat(static_cast<const uint16_t*>(p)[i]);
  } else {
    return Float16ToFloat(static_cast<const uint16_t*>(p)[i]);
  }
}

// A level's kernel table (the flags default to off).
inline Kernels MakeKernels(DotFn dot, DotFn dot_f32, AxpyFn axpy, SimdLevel level) {
  Kernels k;
  k.dot = dot;
  k.dot_f32 = dot_f32;
  k.axpy = axpy;
  k.level = level;
  return k;
}

// make(std::integral_constant<DType, D>{}) for D == dtype: the one switch
// from a runtime weight type to the per-type kernels of every level.
template <typename Make>
Kernels ForDType(DType dtype, Make make) {
  switch (dtype) {
    case DType::kBFloat16:
      return make(std::integral_constant<DType, DType::kBFloat16>{});
    case DType::kFloat16:
      return make(std::integral_constant<DType, DType::kFloat16>{});
    case DType::kFloat32:
      break;
  }
  return make(std::integral_constant<DType, DType::kFloat32>{});
}

}  // namespace sparse_mlp::mlp::internal

// Before every loop over a compile-time count of tokens or rows: -O2 does
// not unroll them by itself, and a rolled loop keeps its per-iteration
// vectors (weights, accumulators) in memory instead of registers, well
// below the read floor (docs/performance.md).
#define SPARSE_MLP_UNROLL _Pragma("GCC unroll 16")

// `case k: CALL(k, arg); break;` for k = 1..4 and 5..8: the one list every
// dispatch below expands.
#define SPARSE_MLP_CASES_1_TO_4(CALL, arg) \
  case 1:                                  \
    CALL(1, arg);                          \
    break;                                 \
  case 2:                                  \
    CALL(2, arg);                          \
    break;                                 \
  case 3:                                  \
    CALL(3, arg);                          \
    break;                                 \
  case 4:                                  \
    CALL(4, arg);                          \
    break;
#define SPARSE_MLP_CASES_5_TO_8(CALL, arg) \
  case 5:                                  \
    CALL(5, arg);                          \
    break;                                 \
  case 6:                                  \
    CALL(6, arg);                          \
    break;                                 \
  case 7:                                  \
    CALL(7, arg);                          \
    break;                                 \
  case 8:                                  \
    CALL(8, arg);                          \
    break;

// Runs CALL(TB, t) for token blocks [t, t + TB) of [0, tokens): TB =
// max_tb (at most 4, or 8 with the _8 form) except for the last block. With
// up to 4 rows, blocks of 4 tokens are 16 accumulators.
#define SPARSE_MLP_FOR_TOKEN_BLOCKS_OF(tokens, max_tb, CALL)          \
  for (size_t t_ = 0; t_ < (tokens); t_ += (max_tb)) {                \
    switch ((tokens) - t_ < (max_tb) ? (tokens) - t_ : (max_tb)) {    \
      SPARSE_MLP_CASES_1_TO_4(CALL, t_)                               \
      default:                                                        \
        break;                                                        \
    }                                                                 \
  }
#define SPARSE_MLP_FOR_TOKEN_BLOCKS(tokens, CALL) SPARSE_MLP_FOR_TOKEN_BLOCKS_OF(tokens, 4, CALL)
#define SPARSE_MLP_FOR_TOKEN_BLOCKS_8(tokens, CALL)              \
  for (size_t t_ = 0; t_ < (tokens); t_ += 8) {                  \
    switch ((tokens) - t_ < 8 ? (tokens) - t_ : 8) {             \
      SPARSE_MLP_CASES_1_TO_4(CALL, t_)                          \
      SPARSE_MLP_CASES_5_TO_8(CALL, t_)                          \
      default:                                                   \
        break;                                                   \
    }                                                            \
  }

// Runs CALL(N) for the compile-time N == n: n in [0, kMaxDotRows] for dot
// rows, [0, 8] for axpy rows (0: no call).
#define SPARSE_MLP_CALL_WITH(N, CALL) CALL(N)
#define SPARSE_MLP_FOR_DOT_ROWS(n, CALL)                 \
  switch (n) {                                           \
    SPARSE_MLP_CASES_1_TO_4(SPARSE_MLP_CALL_WITH, CALL) \
    default:                                             \
      break;                                             \
  }
#define SPARSE_MLP_FOR_ROW_COUNT(n, CALL)                \
  switch (n) {                                           \
    SPARSE_MLP_CASES_1_TO_4(SPARSE_MLP_CALL_WITH, CALL) \
    SPARSE_MLP_CASES_5_TO_8(SPARSE_MLP_CALL_WITH, CALL) \
    default:                                             \
      break;                                             \
  }

#endif  // SPARSE_MLP_MLP_KERNEL_UTIL_H_
