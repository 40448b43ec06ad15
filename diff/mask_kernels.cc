// Dispatch from a SimdLevel to the per-ISA kernel. Levels the CPU lacks fall
// back to the best one it has (Resolve), and a kernel whose instructions go
// beyond its level is replaced by the level below's where they are missing,
// so a caller can never reach an illegal instruction.
#include "diff/mask_kernels.h"

#include "diff/mask_kernels_internal.h"

namespace sparse_mlp::diff {

// The CPU's features are detected once (platform/simd_level.h); dispatch
// itself is a switch on the resolved level with direct calls. (A table of
// kernel pointers built once was tried: its guard variables and entries
// are one or two more cold cache lines per call, and a no-change update,
// which runs on cold memory, took 0.9-1.4 us instead of 0.7-0.8.)
// avx512_usable: whether the level's AVX-512 kernel runs on this CPU (the
// AVX-512 popcounts need VPOPCNTDQ, which not every AVX-512 CPU has:
// Skylake-SP, Cascade Lake); where it does not, the AVX2 kernel serves.
#if SPARSE_MLP_X86
#define SPARSE_MLP_DISPATCH(avx512_usable, name, ...)                 \
  switch (Resolve(level)) {                                          \
    case SimdLevel::kAvx512:                                         \
      if (avx512_usable) return internal::name##Avx512(__VA_ARGS__); \
      [[fallthrough]];                                               \
    case SimdLevel::kAvx2:                                           \
      return internal::name##Avx2(__VA_ARGS__);                      \
    default:                                                         \
      return internal::name##Scalar(__VA_ARGS__);                    \
  }
#else
#define SPARSE_MLP_DISPATCH(avx512_usable, name, ...) \
  (void)level;                                        \
  return internal::name##Scalar(__VA_ARGS__);
#endif
#define SPARSE_MLP_POPCOUNT_AVX512 HasCpuFeature(CpuFeature::kAvx512Vpopcntdq)

void PackBytes(const uint8_t* bytes, size_t n, uint64_t* words,
               SimdLevel level) {
  SPARSE_MLP_DISPATCH(true, PackBytes, bytes, n, words)
}

void PackBytesUnion(const uint8_t* bytes, size_t rows, size_t n,
                    uint64_t* words, SimdLevel level) {
  SPARSE_MLP_DISPATCH(true, PackBytesUnion, bytes, rows, n, words)
}

size_t CountDifferentBits(const uint64_t* a, const uint64_t* b,
                          size_t num_words, SimdLevel level) {
  SPARSE_MLP_DISPATCH(SPARSE_MLP_POPCOUNT_AVX512, CountDifferentBits, a, b, num_words)
}

size_t CountSetBits(const uint64_t* a, size_t num_words, SimdLevel level) {
  SPARSE_MLP_DISPATCH(SPARSE_MLP_POPCOUNT_AVX512, CountSetBits, a, num_words)
}

size_t ExtractAndNotBits(const uint64_t* a, const uint64_t* b,
                         size_t num_words, uint32_t first_index, uint32_t* out,
                         SimdLevel level) {
  SPARSE_MLP_DISPATCH(true, ExtractAndNotBits, a, b, num_words, first_index, out)
}

#undef SPARSE_MLP_DISPATCH
#undef SPARSE_MLP_POPCOUNT_AVX512

}  // namespace sparse_mlp::diff
