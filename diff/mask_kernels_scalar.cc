// Portable reference versions of the mask kernels: plain loops, one neuron
// or one word at a time. Every SIMD version is tested against these.
#include <cstddef>
#include <cstdint>

#include "diff/mask_kernels_internal.h"

namespace sparse_mlp::diff::internal {

void PackBytesScalar(const uint8_t* bytes, size_t n, uint64_t* words) {
  const size_t num_words = WordsForNeurons(n);
  for (size_t w = 0; w < num_words; ++w) words[w] = 0;
  for (size_t i = 0; i < n; ++i) {
    if (bytes[i] != 0) words[i / 64] |= uint64_t{1} << (i % 64);
  }
}

void PackBytesUnionScalar(const uint8_t* bytes, size_t rows, size_t n,
                          uint64_t* words) {
  const size_t num_words = WordsForNeurons(n);
  for (size_t w = 0; w < num_words; ++w) words[w] = 0;
  for (size_t r = 0; r < rows; ++r) {
    const uint8_t* row = bytes + r * n;
    for (size_t i = 0; i < n; ++i) {
      if (row[i] != 0) words[i / 64] |= uint64_t{1} << (i % 64);
    }
  }
}

size_t CountDifferentBitsScalar(const uint64_t* a, const uint64_t* b,
                                size_t num_words) {
  size_t count = 0;
  for (size_t w = 0; w < num_words; ++w) {
    count += static_cast<size_t>(__builtin_popcountll(a[w] ^ b[w]));
  }
  return count;
}

size_t CountSetBitsScalar(const uint64_t* a, size_t num_words) {
  size_t count = 0;
  for (size_t w = 0; w < num_words; ++w) {
    count += static_cast<size_t>(__builtin_popcountll(a[w]));
  }
  return count;
}

size_t ExtractAndNotBitsScalar(const uint64_t* a, const uint64_t* b,
                               size_t num_words, uint32_t first_index,
                               uint32_t* out) {
  size_t count = 0;
  for (size_t w = 0; w < num_words; ++w) {
    const uint64_t word = b == nullptr ? a[w] : (a[w] & ~b[w]);
    for (size_t bit = 0; bit < 64; ++bit) {
      if ((word >> bit) & 1) {
        out[count++] = first_index + static_cast<uint32_t>(w * 64 + bit);
      }
    }
  }
  return count;
}

}  // namespace sparse_mlp::diff::internal
