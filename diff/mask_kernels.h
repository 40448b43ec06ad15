// Word-level mask kernels: packing byte masks into bitsets, counting and
// extracting differing bits. The building blocks of NeuronMask and MaskDiff,
// public so other projects can run them on their own buffers.
//
// Bitset layout: neuron i is bit (i % 64) of word i / 64; bits past the last
// neuron are zero (every function that writes words keeps that invariant,
// and the counting functions rely on it).
//
// Each function takes a SimdLevel (platform/simd_level.h): kScalar is the
// portable reference; kAvx2 / kAvx512 run the vector versions; kBest picks
// the best this CPU supports. Results are identical at every level.
//
// Thread-safe (no shared state). No allocation. All are O(n) in the bytes or
// words they read; no function reads or writes outside the ranges given.
#ifndef SPARSE_MLP_DIFF_MASK_KERNELS_H_
#define SPARSE_MLP_DIFF_MASK_KERNELS_H_

#include <cstddef>
#include <cstdint>

#include "memory/size_math.h"
#include "platform/simd_level.h"

namespace sparse_mlp::diff {

// 64-bit words needed for n neurons.
constexpr size_t WordsForNeurons(size_t n) { return memory::WordsForBits(n); }

// words[w] bit b = (bytes[64 w + b] != 0) for the n bytes; writes
// WordsForNeurons(n) words, zero bits past n.
void PackBytes(const uint8_t* bytes, size_t n, uint64_t* words,
               SimdLevel level);

// The union of `rows` byte masks of length n stored back to back (a
// row-major [rows, n] matrix): bit i set iff any row has bytes[r * n + i] !=
// 0. rows == 0 gives an all-zero bitset.
void PackBytesUnion(const uint8_t* bytes, size_t rows, size_t n,
                    uint64_t* words, SimdLevel level);

// popcount(a[w] ^ b[w]) summed over num_words words.
size_t CountDifferentBits(const uint64_t* a, const uint64_t* b,
                          size_t num_words, SimdLevel level);

// popcount(a[w]) summed over num_words words.
size_t CountSetBits(const uint64_t* a, size_t num_words, SimdLevel level);

// Writes, in ascending order, first_index + 64 w + b for every bit b of
// a[w] & ~b[w] (b == nullptr: of a[w]); returns how many. `out` must have
// room for exactly that many (e.g. CountSetBits of the same words); nothing
// past them is written.
size_t ExtractAndNotBits(const uint64_t* a, const uint64_t* b,
                         size_t num_words, uint32_t first_index, uint32_t* out,
                         SimdLevel level);

}  // namespace sparse_mlp::diff

#endif  // SPARSE_MLP_DIFF_MASK_KERNELS_H_
