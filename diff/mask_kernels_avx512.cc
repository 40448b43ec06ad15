// AVX-512 versions of the mask kernels (F/BW/VL/DQ; the two popcounts also
// VPOPCNTDQ). Compiled per function with a target attribute and reached
// only through the runtime checks in mask_kernels.cc (see
// mask_kernels_avx2.cc for why not a copt). x86 only.
#include "diff/mask_kernels_internal.h"

#if SPARSE_MLP_X86
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#define SPARSE_MLP_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,bmi,bmi2,popcnt")))
// The popcount kernels, chosen only where the CPU has VPOPCNTDQ.
#define SPARSE_MLP_AVX512_POPCNT                                                \
  __attribute__((target(                                                         \
      "avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq,avx2,bmi,bmi2,popcnt")))

namespace sparse_mlp::diff::internal {
namespace {

// Bytes [0, count) of a 64-byte block, zero beyond: never reads past count.
SPARSE_MLP_AVX512 inline __m512i LoadBytes(const uint8_t* p, size_t count) {
  if (count >= 64) return _mm512_loadu_si512(p);
  return _mm512_maskz_loadu_epi8(_bzhi_u64(~uint64_t{0}, static_cast<uint32_t>(count)), p);
}

SPARSE_MLP_AVX512 inline __m512i LoadWords(const uint64_t* p, size_t count) {
  if (count >= 8) return _mm512_loadu_si512(p);
  return _mm512_maskz_loadu_epi64(static_cast<__mmask8>((1u << count) - 1), p);
}

// Sum of the eight 64-bit lanes. (_mm512_reduce_add_epi64 trips GCC 12's
// -Wuninitialized inside its own header.)
SPARSE_MLP_AVX512 inline size_t SumLanes(__m512i v) {
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, v);
  uint64_t sum = 0;
  for (uint64_t lane : lanes) sum += lane;
  return static_cast<size_t>(sum);
}

}  // namespace

SPARSE_MLP_AVX512 void PackBytesAvx512(const uint8_t* bytes, size_t n,
                                       uint64_t* words) {
  const size_t num_words = WordsForNeurons(n);
  for (size_t w = 0; w < num_words; ++w) {
    const __m512i v = LoadBytes(bytes + w * 64, n - w * 64);
    words[w] = _mm512_test_epi8_mask(v, v);
  }
}

SPARSE_MLP_AVX512 void PackBytesUnionAvx512(const uint8_t* bytes, size_t rows,
                                            size_t n, uint64_t* words) {
  const size_t num_words = WordsForNeurons(n);
  for (size_t w = 0; w < num_words; ++w) {
    __m512i acc = _mm512_setzero_si512();
    for (size_t r = 0; r < rows; ++r) {
      acc = _mm512_or_si512(acc, LoadBytes(bytes + r * n + w * 64, n - w * 64));
    }
    words[w] = _mm512_test_epi8_mask(acc, acc);
  }
}

SPARSE_MLP_AVX512_POPCNT size_t CountDifferentBitsAvx512(const uint64_t* a,
                                                  const uint64_t* b,
                                                  size_t num_words) {
  __m512i sums = _mm512_setzero_si512();
  for (size_t w = 0; w < num_words; w += 8) {
    const size_t count = num_words - w;
    const __m512i x = _mm512_xor_si512(LoadWords(a + w, count),
                                       LoadWords(b + w, count));
    sums = _mm512_add_epi64(sums, _mm512_popcnt_epi64(x));
  }
  return SumLanes(sums);
}

SPARSE_MLP_AVX512_POPCNT size_t CountSetBitsAvx512(const uint64_t* a,
                                            size_t num_words) {
  __m512i sums = _mm512_setzero_si512();
  for (size_t w = 0; w < num_words; w += 8) {
    sums = _mm512_add_epi64(sums,
                            _mm512_popcnt_epi64(LoadWords(a + w, num_words - w)));
  }
  return SumLanes(sums);
}

// Sixteen neurons at a time: VPCOMPRESSD packs the active lanes of
// (index, ..., index + 15) to the front in a register, and a masked store
// writes exactly those (compress-to-memory is microcoded on Zen 4).
SPARSE_MLP_AVX512 size_t ExtractAndNotBitsAvx512(const uint64_t* a,
                                                 const uint64_t* b,
                                                 size_t num_words,
                                                 uint32_t first_index,
                                                 uint32_t* out) {
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
                                         12, 13, 14, 15);
  uint32_t* const out_begin = out;
  for (size_t w = 0; w < num_words; ++w) {
    uint64_t word = b == nullptr ? a[w] : _andn_u64(b[w], a[w]);
    uint32_t base = first_index + static_cast<uint32_t>(w * 64);
    while (word != 0) {
      const __mmask16 lanes = static_cast<__mmask16>(word & 0xffff);
      if (lanes != 0) {
        const __m512i indices = _mm512_maskz_compress_epi32(
            lanes, _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(base))));
        const uint32_t n = static_cast<uint32_t>(_mm_popcnt_u32(lanes));
        _mm512_mask_storeu_epi32(out, static_cast<__mmask16>(_bzhi_u32(0xffff, n)),
                                 indices);
        out += n;
      }
      word >>= 16;
      base += 16;
    }
  }
  return static_cast<size_t>(out - out_begin);
}

}  // namespace sparse_mlp::diff::internal

#endif  // SPARSE_MLP_X86
