// Dispatch from a SimdLevel to the per-ISA kernel. Levels the CPU lacks fall
// back to the best one it has (Resolve), so a caller can never reach an
// illegal instruction.
#include "diff/mask_kernels.h"

#include "diff/mask_kernels_internal.h"

namespace sparse_mlp::diff {

#define SPARSE_MLP_DISPATCH(name, ...)            \
  switch (Resolve(level)) {                       \
    case SimdLevel::kAvx512:                      \
      return internal::name##Avx512(__VA_ARGS__); \
    case SimdLevel::kAvx2:                        \
      return internal::name##Avx2(__VA_ARGS__);   \
    default:                                      \
      return internal::name##Scalar(__VA_ARGS__); \
  }

void PackBytes(const uint8_t* bytes, size_t n, uint64_t* words,
               SimdLevel level) {
  SPARSE_MLP_DISPATCH(PackBytes, bytes, n, words)
}

void PackBytesUnion(const uint8_t* bytes, size_t rows, size_t n,
                    uint64_t* words, SimdLevel level) {
  SPARSE_MLP_DISPATCH(PackBytesUnion, bytes, rows, n, words)
}

size_t CountDifferentBits(const uint64_t* a, const uint64_t* b,
                          size_t num_words, SimdLevel level) {
  SPARSE_MLP_DISPATCH(CountDifferentBits, a, b, num_words)
}

size_t CountSetBits(const uint64_t* a, size_t num_words, SimdLevel level) {
  SPARSE_MLP_DISPATCH(CountSetBits, a, num_words)
}

size_t ExtractAndNotBits(const uint64_t* a, const uint64_t* b,
                         size_t num_words, uint32_t first_index, uint32_t* out,
                         SimdLevel level) {
  SPARSE_MLP_DISPATCH(ExtractAndNotBits, a, b, num_words, first_index, out)
}

#undef SPARSE_MLP_DISPATCH

}  // namespace sparse_mlp::diff
