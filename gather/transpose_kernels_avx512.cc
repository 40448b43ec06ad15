// AVX-512 (BW) transpose of 16-bit elements.
//
// The 8x8 SSE kernel spends 24 shuffles on 64 bf16/fp16 elements, and in
// cache it ran at only half the fp32 rate per byte. Here a 16-row x 8-column
// block (128 elements) takes 8 two-source word permutes (VPERMT2W): rows are
// loaded four to a register, a first round gathers each column group of 8
// rows, a second joins the two 8-row halves into two full 16-element
// destination rows per register. Destination rows get 32-byte pieces,
// written with streaming stores when aligned (see transpose_kernels_avx2.cc).
// Remaining rows and columns go to the AVX2 / scalar kernels.
#include <immintrin.h>

#include <array>

// GCC 12's avx512fintrin.h passes an intentionally undefined vector into
// its 256-bit extracts and then warns about it (maybe-uninitialized) where
// they inline; the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <cstdint>

#include "gather/transpose_kernels.h"

#define SPARSE_MLP_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2")))

namespace sparse_mlp::gather::internal {
namespace {

using WordIndex = std::array<uint16_t, 32>;

// Round 1, from rows 0-3 (register a) and rows 4-7 (register b), each row
// 8 words: word 8c + r of the result = element (r, c + 4 half).
constexpr WordIndex Round1(int half) {
  WordIndex index{};
  for (int c = 0; c < 4; ++c) {
    for (int r = 0; r < 8; ++r) {
      const int col = c + 4 * half;
      index[8 * c + r] = static_cast<uint16_t>(r < 4 ? 8 * r + col : 32 + 8 * (r - 4) + col);
    }
  }
  return index;
}

// Round 2, from rows 0-7 and rows 8-15 of one column group (round-1
// results): words 16 i + r = element (r, 2 pair + i), r = 0..15.
constexpr WordIndex Round2(int pair) {
  WordIndex index{};
  for (int i = 0; i < 2; ++i) {
    for (int r = 0; r < 16; ++r) {
      const int c = 2 * pair + i;
      index[16 * i + r] = static_cast<uint16_t>(r < 8 ? 8 * c + r : 32 + 8 * c + (r - 8));
    }
  }
  return index;
}

alignas(64) constexpr WordIndex kRound1[2] = {Round1(0), Round1(1)};
alignas(64) constexpr WordIndex kRound2[2] = {Round2(0), Round2(1)};

SPARSE_MLP_AVX512 inline __m512i LoadFourRows(const uint8_t* src, size_t stride) {
  __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + stride)), 1);
  v = _mm512_inserti32x4(
      v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * stride)), 2);
  return _mm512_inserti32x4(
      v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 3 * stride)), 3);
}

// 16 rows x 8 columns of src -> 8 destination rows x 16 elements.
SPARSE_MLP_AVX512 inline __m256i UpperHalf(__m512i v) {
  return _mm512_extracti64x4_epi64(v, 1);
}

template <bool kStream>
SPARSE_MLP_AVX512 inline void Block16x8(const uint8_t* src, size_t src_stride,
                                        uint8_t* dst, size_t dst_stride) {
  const __m512i r10 = _mm512_load_si512(kRound1[0].data());
  const __m512i r11 = _mm512_load_si512(kRound1[1].data());
  const __m512i r20 = _mm512_load_si512(kRound2[0].data());
  const __m512i r21 = _mm512_load_si512(kRound2[1].data());
  const __m512i rows0 = LoadFourRows(src, src_stride);
  const __m512i rows4 = LoadFourRows(src + 4 * src_stride, src_stride);
  const __m512i rows8 = LoadFourRows(src + 8 * src_stride, src_stride);
  const __m512i rows12 = LoadFourRows(src + 12 * src_stride, src_stride);
  const __m512i top_lo = _mm512_permutex2var_epi16(rows0, r10, rows4);   // cols 0-3
  const __m512i top_hi = _mm512_permutex2var_epi16(rows0, r11, rows4);   // cols 4-7
  const __m512i bot_lo = _mm512_permutex2var_epi16(rows8, r10, rows12);
  const __m512i bot_hi = _mm512_permutex2var_epi16(rows8, r11, rows12);
  const __m512i out[4] = {_mm512_permutex2var_epi16(top_lo, r20, bot_lo),
                          _mm512_permutex2var_epi16(top_lo, r21, bot_lo),
                          _mm512_permutex2var_epi16(top_hi, r20, bot_hi),
                          _mm512_permutex2var_epi16(top_hi, r21, bot_hi)};
  for (int k = 0; k < 4; ++k) {
    auto* even = reinterpret_cast<__m256i*>(dst + (2 * k) * dst_stride);
    auto* odd = reinterpret_cast<__m256i*>(dst + (2 * k + 1) * dst_stride);
    if (kStream) {
      _mm256_stream_si256(even, _mm512_castsi512_si256(out[k]));
      _mm256_stream_si256(odd, UpperHalf(out[k]));
    } else {
      _mm256_storeu_si256(even, _mm512_castsi512_si256(out[k]));
      _mm256_storeu_si256(odd, UpperHalf(out[k]));
    }
  }
}

template <bool kStream>
SPARSE_MLP_AVX512 void Blocks(const uint8_t* src, size_t src_stride, uint8_t* dst,
                              size_t dst_stride, size_t rows16, size_t cols8) {
  for (size_t c = 0; c < cols8; c += 8) {
    for (size_t r = 0; r < rows16; r += 16) {
      Block16x8<kStream>(src + r * src_stride + c * 2, src_stride,
                         dst + c * dst_stride + r * 2, dst_stride);
    }
  }
}

}  // namespace

SPARSE_MLP_AVX512 void TileTransposeAvx512Bits16(const uint8_t* src,
                                                 size_t src_stride, uint8_t* dst,
                                                 size_t dst_stride, size_t rows,
                                                 size_t cols) {
  const size_t rows16 = rows / 16 * 16;
  const size_t cols8 = cols / 8 * 8;
  if ((reinterpret_cast<uintptr_t>(dst) | dst_stride) % 32 == 0) {
    Blocks<true>(src, src_stride, dst, dst_stride, rows16, cols8);
  } else {
    Blocks<false>(src, src_stride, dst, dst_stride, rows16, cols8);
  }
  if (cols8 < cols) {
    TileTransposeScalar(src + cols8 * 2, src_stride, dst + cols8 * dst_stride,
                        dst_stride, rows, cols - cols8, 2);
  }
  if (rows16 < rows) {
    TileTransposeAvx2Bits16(src + rows16 * src_stride, src_stride, dst + rows16 * 2,
                            dst_stride, rows - rows16, cols8);
  }
}

}  // namespace sparse_mlp::gather::internal
