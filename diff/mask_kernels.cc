// Dispatch from a SimdLevel to the per-ISA kernel. Levels the CPU lacks fall
// back to the best one it has (Resolve), and a kernel whose instructions go
// beyond its level is replaced by the level below's where they are missing,
// so a caller can never reach an illegal instruction.
#include "diff/mask_kernels.h"

#include "diff/mask_kernels_internal.h"

namespace sparse_mlp::diff {

namespace {

// The kernels of one level, chosen once per process: the AVX-512 popcounts
// need VPOPCNTDQ, which not every AVX-512 CPU has (Skylake-SP, Cascade
// Lake); there the AVX2 popcounts serve that level.
struct MaskKernelTable {
  void (*pack_bytes)(const uint8_t*, size_t, uint64_t*);
  void (*pack_bytes_union)(const uint8_t*, size_t, size_t, uint64_t*);
  size_t (*count_different_bits)(const uint64_t*, const uint64_t*, size_t);
  size_t (*count_set_bits)(const uint64_t*, size_t);
  size_t (*extract_and_not_bits)(const uint64_t*, const uint64_t*, size_t, uint32_t,
                                 uint32_t*);
};

#define SPARSE_MLP_KERNELS(suffix)                                                \
  MaskKernelTable {                                                               \
    internal::PackBytes##suffix, internal::PackBytesUnion##suffix,                \
        internal::CountDifferentBits##suffix, internal::CountSetBits##suffix,     \
        internal::ExtractAndNotBits##suffix                                       \
  }

const MaskKernelTable& KernelsFor(SimdLevel level) {
  static const MaskKernelTable scalar = SPARSE_MLP_KERNELS(Scalar);
#if SPARSE_MLP_X86
  static const MaskKernelTable avx2 = SPARSE_MLP_KERNELS(Avx2);
  static const MaskKernelTable avx512 = [] {
    MaskKernelTable t = SPARSE_MLP_KERNELS(Avx512);
    if (!HasCpuFeature(CpuFeature::kAvx512Vpopcntdq)) {
      t.count_different_bits = internal::CountDifferentBitsAvx2;
      t.count_set_bits = internal::CountSetBitsAvx2;
    }
    return t;
  }();
  switch (Resolve(level)) {
    case SimdLevel::kAvx512:
      return avx512;
    case SimdLevel::kAvx2:
      return avx2;
    default:
      break;
  }
#else
  (void)level;
#endif
  return scalar;
}

#undef SPARSE_MLP_KERNELS

}  // namespace

void PackBytes(const uint8_t* bytes, size_t n, uint64_t* words,
               SimdLevel level) {
  KernelsFor(level).pack_bytes(bytes, n, words);
}

void PackBytesUnion(const uint8_t* bytes, size_t rows, size_t n,
                    uint64_t* words, SimdLevel level) {
  KernelsFor(level).pack_bytes_union(bytes, rows, n, words);
}

size_t CountDifferentBits(const uint64_t* a, const uint64_t* b,
                          size_t num_words, SimdLevel level) {
  return KernelsFor(level).count_different_bits(a, b, num_words);
}

size_t CountSetBits(const uint64_t* a, size_t num_words, SimdLevel level) {
  return KernelsFor(level).count_set_bits(a, num_words);
}

size_t ExtractAndNotBits(const uint64_t* a, const uint64_t* b,
                         size_t num_words, uint32_t first_index, uint32_t* out,
                         SimdLevel level) {
  return KernelsFor(level).extract_and_not_bits(a, b, num_words, first_index, out);
}

}  // namespace sparse_mlp::diff
