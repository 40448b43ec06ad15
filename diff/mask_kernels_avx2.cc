// AVX2 versions of the mask kernels. Each function is compiled for AVX2 with
// a target attribute (not a -mavx2 copt) so that no inline function shared
// with other translation units is ever emitted with AVX2 instructions; they
// are only reached through the runtime check in mask_kernels.cc.
#include "platform/simd_level.h"  // SPARSE_MLP_X86

#if SPARSE_MLP_X86
#include <immintrin.h>

#include <array>
#include <cstddef>
#include <cstdint>

#include "diff/mask_kernels_internal.h"

#define SPARSE_MLP_AVX2 __attribute__((target("avx2,bmi,bmi2,popcnt")))

namespace sparse_mlp::diff::internal {
namespace {

// 32 bytes -> 32 bits, bit i set iff byte i != 0.
SPARSE_MLP_AVX2 inline uint32_t NonZeroBits32(__m256i v) {
  const __m256i is_zero = _mm256_cmpeq_epi8(v, _mm256_setzero_si256());
  return ~static_cast<uint32_t>(_mm256_movemask_epi8(is_zero));
}

SPARSE_MLP_AVX2 inline uint64_t TailBits(const uint8_t* bytes, size_t count) {
  uint64_t word = 0;
  for (size_t i = 0; i < count; ++i) {
    if (bytes[i] != 0) word |= uint64_t{1} << i;
  }
  return word;
}

// For each byte value m: the positions of its set bits, packed as 3-bit
// lane numbers into a 32-bit int permutation, expanded on use.
struct ExtractTable {
  std::array<std::array<uint32_t, 8>, 256> lanes;
  constexpr ExtractTable() : lanes() {
    for (uint32_t m = 0; m < 256; ++m) {
      uint32_t k = 0;
      for (uint32_t bit = 0; bit < 8; ++bit) {
        if ((m >> bit) & 1) lanes[m][k++] = bit;
      }
      for (; k < 8; ++k) lanes[m][k] = 0;
    }
  }
};
constexpr ExtractTable kExtractTable;

// Lane masks for _mm256_maskstore_epi32: the first n lanes.
struct PrefixMaskTable {
  std::array<std::array<int32_t, 8>, 9> lanes;
  constexpr PrefixMaskTable() : lanes() {
    for (int n = 0; n <= 8; ++n) {
      for (int i = 0; i < 8; ++i) lanes[n][i] = i < n ? -1 : 0;
    }
  }
};
constexpr PrefixMaskTable kPrefixMask;

SPARSE_MLP_AVX2 inline __m256i Popcount256(__m256i v) {
  const __m256i lookup =
      _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                       2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low_nibbles = _mm256_set1_epi8(0x0f);
  const __m256i lo = _mm256_and_si256(v, low_nibbles);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles);
  const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(lookup, lo),
                                        _mm256_shuffle_epi8(lookup, hi));
  return _mm256_sad_epu8(bytes, _mm256_setzero_si256());  // 4 x u64 sums
}

SPARSE_MLP_AVX2 inline size_t HorizontalSum(__m256i v) {
  const __m128i sum = _mm_add_epi64(_mm256_castsi256_si128(v),
                                    _mm256_extracti128_si256(v, 1));
  return static_cast<size_t>(_mm_cvtsi128_si64(sum) +
                             _mm_extract_epi64(sum, 1));
}

}  // namespace

SPARSE_MLP_AVX2 void PackBytesAvx2(const uint8_t* bytes, size_t n,
                                   uint64_t* words) {
  const size_t full_words = n / 64;
  for (size_t w = 0; w < full_words; ++w) {
    const uint8_t* p = bytes + w * 64;
    const uint64_t lo = NonZeroBits32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const uint64_t hi = NonZeroBits32(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    words[w] = lo | (hi << 32);
  }
  if (n % 64 != 0) words[full_words] = TailBits(bytes + full_words * 64, n % 64);
}

SPARSE_MLP_AVX2 void PackBytesUnionAvx2(const uint8_t* bytes, size_t rows,
                                        size_t n, uint64_t* words) {
  const size_t full_words = n / 64;
  for (size_t w = 0; w < full_words; ++w) {
    __m256i lo = _mm256_setzero_si256();
    __m256i hi = _mm256_setzero_si256();
    for (size_t r = 0; r < rows; ++r) {
      const uint8_t* p = bytes + r * n + w * 64;
      lo = _mm256_or_si256(
          lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      hi = _mm256_or_si256(
          hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)));
    }
    words[w] = uint64_t{NonZeroBits32(lo)} |
               (uint64_t{NonZeroBits32(hi)} << 32);
  }
  if (n % 64 != 0) {
    uint64_t word = 0;
    for (size_t r = 0; r < rows; ++r) {
      word |= TailBits(bytes + r * n + full_words * 64, n % 64);
    }
    words[full_words] = word;
  }
}

SPARSE_MLP_AVX2 size_t CountDifferentBitsAvx2(const uint64_t* a,
                                              const uint64_t* b,
                                              size_t num_words) {
  __m256i sums = _mm256_setzero_si256();
  size_t w = 0;
  for (; w + 4 <= num_words; w += 4) {
    const __m256i x = _mm256_xor_si256(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w)),
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + w)));
    sums = _mm256_add_epi64(sums, Popcount256(x));
  }
  size_t count = HorizontalSum(sums);
  for (; w < num_words; ++w) {
    count += static_cast<size_t>(_mm_popcnt_u64(a[w] ^ b[w]));
  }
  return count;
}

SPARSE_MLP_AVX2 size_t CountSetBitsAvx2(const uint64_t* a, size_t num_words) {
  __m256i sums = _mm256_setzero_si256();
  size_t w = 0;
  for (; w + 4 <= num_words; w += 4) {
    sums = _mm256_add_epi64(
        sums,
        Popcount256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + w))));
  }
  size_t count = HorizontalSum(sums);
  for (; w < num_words; ++w) count += static_cast<size_t>(_mm_popcnt_u64(a[w]));
  return count;
}

// Eight neurons at a time: the byte of mask bits selects a permutation that
// moves the active lanes of (index, index + 1, ..., index + 7) to the front;
// a masked store writes exactly the active ones.
SPARSE_MLP_AVX2 size_t ExtractAndNotBitsAvx2(const uint64_t* a,
                                             const uint64_t* b,
                                             size_t num_words,
                                             uint32_t first_index,
                                             uint32_t* out) {
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  uint32_t* const out_begin = out;
  for (size_t w = 0; w < num_words; ++w) {
    uint64_t word = b == nullptr ? a[w] : _andn_u64(b[w], a[w]);
    uint32_t base = first_index + static_cast<uint32_t>(w * 64);
    while (word != 0) {
      const uint32_t byte = static_cast<uint32_t>(word & 0xff);
      if (byte != 0) {
        const __m256i perm = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(kExtractTable.lanes[byte].data()));
        const __m256i indices = _mm256_add_epi32(
            _mm256_permutevar8x32_epi32(iota, perm), _mm256_set1_epi32(base));
        const int n = _mm_popcnt_u32(byte);
        _mm256_maskstore_epi32(
            reinterpret_cast<int*>(out),
            _mm256_loadu_si256(
                reinterpret_cast<const __m256i*>(kPrefixMask.lanes[n].data())),
            indices);
        out += n;
      }
      word >>= 8;
      base += 8;
    }
  }
  return static_cast<size_t>(out - out_begin);
}

}  // namespace sparse_mlp::diff::internal

#endif  // SPARSE_MLP_X86
