// Per-ISA entry points behind diff/mask_kernels.h. Not part of the public
// API: call the dispatching functions in mask_kernels.h instead.
#ifndef SPARSE_MLP_DIFF_MASK_KERNELS_INTERNAL_H_
#define SPARSE_MLP_DIFF_MASK_KERNELS_INTERNAL_H_

#include <cstddef>
#include <cstdint>

#include "diff/mask_kernels.h"

namespace sparse_mlp::diff::internal {

#define SPARSE_MLP_DECLARE_MASK_KERNELS(suffix)                                \
  void PackBytes##suffix(const uint8_t* bytes, size_t n, uint64_t* words);    \
  void PackBytesUnion##suffix(const uint8_t* bytes, size_t rows, size_t n,    \
                              uint64_t* words);                               \
  size_t CountDifferentBits##suffix(const uint64_t* a, const uint64_t* b,     \
                                    size_t num_words);                        \
  size_t CountSetBits##suffix(const uint64_t* a, size_t num_words);           \
  size_t ExtractAndNotBits##suffix(const uint64_t* a, const uint64_t* b,      \
                                   size_t num_words, uint32_t first_index,    \
                                   uint32_t* out);

SPARSE_MLP_DECLARE_MASK_KERNELS(Scalar)
#if SPARSE_MLP_X86
SPARSE_MLP_DECLARE_MASK_KERNELS(Avx2)
SPARSE_MLP_DECLARE_MASK_KERNELS(Avx512)
#endif

#undef SPARSE_MLP_DECLARE_MASK_KERNELS

}  // namespace sparse_mlp::diff::internal

#endif  // SPARSE_MLP_DIFF_MASK_KERNELS_INTERNAL_H_
