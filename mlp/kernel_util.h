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

#include "cache/dtype.h"
#include "mlp/float16.h"

namespace sparse_mlp::mlp::internal {

template <cache::DType D>
inline float Elem(const void* p, size_t i) {
  if constexpr (D == cache::DType::kFloat32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (D == cache::DType::kBFloat16) {
    return BFloat16ToFloat(static_cast<const uint16_t*>(p)[i]);
  } else {
    return Float16ToFloat(static_cast<const uint16_t*>(p)[i]);
  }
}

}  // namespace sparse_mlp::mlp::internal

// Before every loop over a compile-time count of tokens or rows: -O2 does
// not unroll them by itself, and a rolled loop keeps its per-iteration
// vectors (weights, accumulators) in memory instead of registers (measured:
// the T = 1 axpy ran at 0.65x the read floor that way).
#define SPARSE_MLP_UNROLL _Pragma("GCC unroll 16")

// Runs CALL(TB, t) for token blocks [t, t + TB) of [0, tokens), TB = 4
// except the last (1 to 4): with up to 4 rows, 16 accumulators.
#define SPARSE_MLP_FOR_TOKEN_BLOCKS(tokens, CALL) \
  SPARSE_MLP_FOR_TOKEN_BLOCKS_OF(tokens, 4, CALL)

// The same with blocks of at most `max_tb` (1 to 4) tokens.
#define SPARSE_MLP_FOR_TOKEN_BLOCKS_OF(tokens, max_tb, CALL)  \
  for (size_t t_ = 0; t_ < (tokens); t_ += (max_tb)) {        \
    switch ((tokens) - t_ < (max_tb) ? (tokens) - t_ : (max_tb)) { \
      case 1:                                                 \
        CALL(1, t_);                                          \
        break;                                                \
      case 2:                                                 \
        CALL(2, t_);                                          \
        break;                                                \
      case 3:                                                 \
        CALL(3, t_);                                          \
        break;                                                \
      default:                                                \
        CALL(4, t_);                                          \
        break;                                                \
    }                                                         \
  }

// Runs CALL(TB, t) for token blocks of up to 8 tokens (kernels that keep
// one accumulator pair per token).
#define SPARSE_MLP_FOR_TOKEN_BLOCKS_8(tokens, CALL)        \
  for (size_t t_ = 0; t_ < (tokens); t_ += 8) {            \
    switch ((tokens) - t_ < 8 ? (tokens) - t_ : 8) {       \
      case 1:                                              \
        CALL(1, t_);                                       \
        break;                                             \
      case 2:                                              \
        CALL(2, t_);                                       \
        break;                                             \
      case 3:                                              \
        CALL(3, t_);                                       \
        break;                                             \
      case 4:                                              \
        CALL(4, t_);                                       \
        break;                                             \
      case 5:                                              \
        CALL(5, t_);                                       \
        break;                                             \
      case 6:                                              \
        CALL(6, t_);                                       \
        break;                                             \
      case 7:                                              \
        CALL(7, t_);                                       \
        break;                                             \
      default:                                             \
        CALL(8, t_);                                       \
        break;                                             \
    }                                                      \
  }

// Runs CALL(R) for the compile-time R == n, n in [1, kMaxDotRows] (0: no
// call).
#define SPARSE_MLP_FOR_DOT_ROWS(n, CALL) \
  switch (n) {                           \
    case 0:                              \
      break;                             \
    case 1:                              \
      CALL(1);                           \
      break;                             \
    case 2:                              \
      CALL(2);                           \
      break;                             \
    case 3:                              \
      CALL(3);                           \
      break;                             \
    default:                             \
      CALL(4);                           \
      break;                             \
  }

// Runs CALL(N) for the compile-time N == n, n in [1, 8] (0: no
// call).
#define SPARSE_MLP_FOR_ROW_COUNT(n, CALL) \
  switch (n) {                            \
    case 0:                               \
      break;                              \
    case 1:                               \
      CALL(1);                            \
      break;                              \
    case 2:                               \
      CALL(2);                            \
      break;                              \
    case 3:                               \
      CALL(3);                            \
      break;                              \
    case 4:                               \
      CALL(4);                            \
      break;                              \
    case 5:                               \
      CALL(5);                            \
      break;                              \
    case 6:                               \
      CALL(6);                            \
      break;                              \
    case 7:                               \
      CALL(7);                            \
      break;                              \
    default:                              \
      CALL(8);                            \
      break;                              \
  }

#endif  // SPARSE_MLP_MLP_KERNEL_UTIL_H_
