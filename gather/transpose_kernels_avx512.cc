// AVX-512 (F/BW/VL/DQ) tile transposes of 16-bit and 32-bit elements.
//
// The main kernels take whole 64-byte lines in and write whole lines out:
// Block32x32Bits16 (32 x 32 bf16/fp16 elements) and Block16x16Bits32
// (16 x 16 fp32), each an 8x8 (resp. 4x4) transpose inside the 128-bit
// lanes followed by a 4x4 transpose of the lanes (StoreLaneTranspose), so a
// destination row receives a full line per block, written with a streaming
// store. FullLineBlocks walks a staged tile block column by block column
// (long write runs per destination row). The edges of a tile that do not
// fill a full-line block go to Block32x8 / Block16x8 (two-source word
// permutes, VPERMT2W, over sub-line loads) and then to the AVX2 / scalar
// kernels.
#include "platform/simd_level.h"  // SPARSE_MLP_X86

#if SPARSE_MLP_X86
#include <immintrin.h>

#include <array>

// GCC 12's avx512fintrin.h passes an intentionally undefined vector into
// its 256-bit extracts and then warns about it (maybe-uninitialized) where
// they inline; the warning is about the header, not this code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
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

// 16 rows x 8 columns of src -> out[k]: destination rows 2k (low 256 bits)
// and 2k + 1 (high 256 bits), 16 elements each.
SPARSE_MLP_AVX512 inline void Transpose16x8(const uint8_t* src, size_t src_stride,
                                            __m512i out[4]) {
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
  out[0] = _mm512_permutex2var_epi16(top_lo, r20, bot_lo);
  out[1] = _mm512_permutex2var_epi16(top_lo, r21, bot_lo);
  out[2] = _mm512_permutex2var_epi16(top_hi, r20, bot_hi);
  out[3] = _mm512_permutex2var_epi16(top_hi, r21, bot_hi);
}

// 16 rows x 8 columns -> 8 destination rows x 16 elements (32-byte pieces).
template <bool kStream>
SPARSE_MLP_AVX512 inline void Block16x8(const uint8_t* src, size_t src_stride,
                                        uint8_t* dst, size_t dst_stride) {
  __m512i out[4];
  Transpose16x8(src, src_stride, out);
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

// 32 rows x 8 columns -> 8 destination rows x 32 elements: each store is
// one whole 64-byte line, so no write-combining buffer waits for a later
// block to complete its line.
template <bool kStream>
SPARSE_MLP_AVX512 inline void Block32x8(const uint8_t* src, size_t src_stride,
                                        uint8_t* dst, size_t dst_stride) {
  __m512i top[4], bottom[4];
  Transpose16x8(src, src_stride, top);
  Transpose16x8(src + 16 * src_stride, src_stride, bottom);
  for (int k = 0; k < 4; ++k) {
    // 128-bit lanes 0-1 (row 2k) or 2-3 (row 2k + 1) of each half.
    const __m512i even = _mm512_shuffle_i64x2(top[k], bottom[k], 0x44);
    const __m512i odd = _mm512_shuffle_i64x2(top[k], bottom[k], 0xEE);
    auto* even_out = reinterpret_cast<__m512i*>(dst + (2 * k) * dst_stride);
    auto* odd_out = reinterpret_cast<__m512i*>(dst + (2 * k + 1) * dst_stride);
    if (kStream) {
      _mm512_stream_si512(even_out, even);
      _mm512_stream_si512(odd_out, odd);
    } else {
      _mm512_storeu_si512(even_out, even);
      _mm512_storeu_si512(odd_out, odd);
    }
  }
}

template <bool kStream>
SPARSE_MLP_AVX512 void Blocks(const uint8_t* src, size_t src_stride, uint8_t* dst,
                              size_t dst_stride, size_t rows32, size_t rows16,
                              size_t cols8) {
  for (size_t c = 0; c < cols8; c += 8) {
    for (size_t r = 0; r < rows32; r += 32) {
      Block32x8<kStream>(src + r * src_stride + c * 2, src_stride,
                         dst + c * dst_stride + r * 2, dst_stride);
    }
    for (size_t r = rows32; r < rows16; r += 16) {
      Block16x8<kStream>(src + r * src_stride + c * 2, src_stride,
                         dst + c * dst_stride + r * 2, dst_stride);
    }
  }
}

// Stores one 64-byte destination line.
template <bool kStream>
SPARSE_MLP_AVX512 inline void StoreLine(uint8_t* dst, __m512i v) {
  if (kStream) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(dst), v);
  } else {
    _mm512_storeu_si512(dst, v);
  }
}

// d[j] for 4 groups g: lane L of d[g][j] holds rows 4g..4g+3 (32-bit) or
// 8g..8g+7 (16-bit) of column (lane width) x L + j. A 4x4 transpose of
// 128-bit lanes joins the four groups' lane L into destination row L.
template <bool kStream>
SPARSE_MLP_AVX512 inline void StoreLaneTranspose(const __m512i d0, const __m512i d1,
                                                 const __m512i d2, const __m512i d3,
                                                 uint8_t* dst, size_t lane_stride) {
  const __m512i t0 = _mm512_shuffle_i64x2(d0, d1, 0x44);  // d0.l0 d0.l1 d1.l0 d1.l1
  const __m512i t1 = _mm512_shuffle_i64x2(d0, d1, 0xEE);  // d0.l2 d0.l3 d1.l2 d1.l3
  const __m512i t2 = _mm512_shuffle_i64x2(d2, d3, 0x44);
  const __m512i t3 = _mm512_shuffle_i64x2(d2, d3, 0xEE);
  StoreLine<kStream>(dst, _mm512_shuffle_i64x2(t0, t2, 0x88));
  StoreLine<kStream>(dst + lane_stride, _mm512_shuffle_i64x2(t0, t2, 0xDD));
  StoreLine<kStream>(dst + 2 * lane_stride, _mm512_shuffle_i64x2(t1, t3, 0x88));
  StoreLine<kStream>(dst + 3 * lane_stride, _mm512_shuffle_i64x2(t1, t3, 0xDD));
}

// 32 x 32 16-bit elements: 32 whole source lines in, 32 whole destination
// lines out. Each group of 8 rows is transposed in 8x8 blocks inside the
// 128-bit lanes (unpack 16 -> 32 -> 64 bits); d[g][j] lane L then holds
// column 8L + j of rows 8g..8g+7.
template <bool kStream>
SPARSE_MLP_AVX512 inline void Block32x32Bits16(const uint8_t* src, size_t src_stride,
                                               uint8_t* dst, size_t dst_stride) {
  __m512i d[4][8];
  for (int g = 0; g < 4; ++g) {
    __m512i a[8];
    for (int i = 0; i < 8; ++i) {
      a[i] = _mm512_loadu_si512(src + (8 * g + i) * src_stride);
    }
    __m512i b[8];
    for (int i = 0; i < 4; ++i) {
      b[2 * i] = _mm512_unpacklo_epi16(a[2 * i], a[2 * i + 1]);
      b[2 * i + 1] = _mm512_unpackhi_epi16(a[2 * i], a[2 * i + 1]);
    }
    __m512i c[8];
    for (int h = 0; h < 2; ++h) {
      const int k = 4 * h;
      c[k + 0] = _mm512_unpacklo_epi32(b[k + 0], b[k + 2]);  // cols 0, 1
      c[k + 1] = _mm512_unpackhi_epi32(b[k + 0], b[k + 2]);  // cols 2, 3
      c[k + 2] = _mm512_unpacklo_epi32(b[k + 1], b[k + 3]);  // cols 4, 5
      c[k + 3] = _mm512_unpackhi_epi32(b[k + 1], b[k + 3]);  // cols 6, 7
    }
    for (int i = 0; i < 4; ++i) {
      d[g][2 * i] = _mm512_unpacklo_epi64(c[i], c[i + 4]);
      d[g][2 * i + 1] = _mm512_unpackhi_epi64(c[i], c[i + 4]);
    }
  }
  for (int j = 0; j < 8; ++j) {
    StoreLaneTranspose<kStream>(d[0][j], d[1][j], d[2][j], d[3][j],
                                dst + j * dst_stride, 8 * dst_stride);
  }
}

// 16 x 16 32-bit elements, the same scheme with groups of 4 rows
// (unpack 32 -> 64 bits): d[g][j] lane L holds column 4L + j of rows
// 4g..4g+3.
template <bool kStream>
SPARSE_MLP_AVX512 inline void Block16x16Bits32(const uint8_t* src, size_t src_stride,
                                               uint8_t* dst, size_t dst_stride) {
  __m512i d[4][4];
  for (int g = 0; g < 4; ++g) {
    __m512i a[4];
    for (int i = 0; i < 4; ++i) {
      a[i] = _mm512_loadu_si512(src + (4 * g + i) * src_stride);
    }
    const __m512i b0 = _mm512_unpacklo_epi32(a[0], a[1]);  // cols 0, 1
    const __m512i b1 = _mm512_unpackhi_epi32(a[0], a[1]);  // cols 2, 3
    const __m512i b2 = _mm512_unpacklo_epi32(a[2], a[3]);
    const __m512i b3 = _mm512_unpackhi_epi32(a[2], a[3]);
    d[g][0] = _mm512_unpacklo_epi64(b0, b2);
    d[g][1] = _mm512_unpackhi_epi64(b0, b2);
    d[g][2] = _mm512_unpacklo_epi64(b1, b3);
    d[g][3] = _mm512_unpackhi_epi64(b1, b3);
  }
  for (int j = 0; j < 4; ++j) {
    StoreLaneTranspose<kStream>(d[0][j], d[1][j], d[2][j], d[3][j],
                                dst + j * dst_stride, 4 * dst_stride);
  }
}

// Full-line blocks over [0, rows_b) x [0, cols_b), a block column at a time:
// the destination rows of a column receive consecutive whole lines (long
// streaming-store runs; walking block rows instead wrote 64-byte runs, 2x
// slower). Loads never revisit a line: the source is the staging buffer
// (transpose.cc), whose padded rows do not share L1 sets.
using BlockFn = void (*)(const uint8_t*, size_t, uint8_t*, size_t);
using EdgeFn = void (*)(const uint8_t*, size_t, uint8_t*, size_t, size_t, size_t);

template <size_t kBlock, size_t kElemBytes, BlockFn kKernel>
SPARSE_MLP_AVX512 inline void FullLineBlocks(const uint8_t* src, size_t src_stride,
                                             uint8_t* dst, size_t dst_stride,
                                             size_t rows_b, size_t cols_b) {
  for (size_t c = 0; c < cols_b; c += kBlock) {
    for (size_t r = 0; r < rows_b; r += kBlock) {
      kKernel(src + r * src_stride + c * kElemBytes, src_stride,
              dst + c * dst_stride + r * kElemBytes, dst_stride);
    }
  }
}

// Transposes with 32x8 / 16x8 blocks (sub-line loads): the edges of the
// full-line kernel below.
SPARSE_MLP_AVX512 void NarrowTileBits16(const uint8_t* src, size_t src_stride,
                                        uint8_t* dst, size_t dst_stride,
                                        size_t rows, size_t cols) {
  const size_t rows32 = rows / 32 * 32;
  const size_t rows16 = rows / 16 * 16;
  const size_t cols8 = cols / 8 * 8;
  // Streaming stores need 64-byte aligned pieces for the 32-row blocks and
  // 32-byte ones for the 16-row remainder.
  if ((reinterpret_cast<uintptr_t>(dst) | dst_stride) % 64 == 0) {
    Blocks<true>(src, src_stride, dst, dst_stride, rows32, rows16, cols8);
  } else {
    Blocks<false>(src, src_stride, dst, dst_stride, rows32, rows16, cols8);
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

// A tile in kBlock x kBlock full-line blocks (streaming stores when the
// destination rows are 64-byte aligned), its ragged right strip and bottom
// strip by the narrower kEdge kernel.
template <size_t kBlock, size_t kElemBytes, BlockFn kStreamBlock, BlockFn kPlainBlock,
          EdgeFn kEdge>
SPARSE_MLP_AVX512 inline void FullLineTile(const uint8_t* src, size_t src_stride,
                                           uint8_t* dst, size_t dst_stride, size_t rows,
                                           size_t cols) {
  const size_t rows_b = rows / kBlock * kBlock;
  const size_t cols_b = cols / kBlock * kBlock;
  if ((reinterpret_cast<uintptr_t>(dst) | dst_stride) % 64 == 0) {
    FullLineBlocks<kBlock, kElemBytes, kStreamBlock>(src, src_stride, dst, dst_stride,
                                                     rows_b, cols_b);
  } else {
    FullLineBlocks<kBlock, kElemBytes, kPlainBlock>(src, src_stride, dst, dst_stride,
                                                    rows_b, cols_b);
  }
  if (cols_b < cols) {
    kEdge(src + cols_b * kElemBytes, src_stride, dst + cols_b * dst_stride, dst_stride,
          rows, cols - cols_b);
  }
  if (rows_b < rows) {
    kEdge(src + rows_b * src_stride, src_stride, dst + rows_b * kElemBytes, dst_stride,
          rows - rows_b, cols_b);
  }
}

}  // namespace

SPARSE_MLP_AVX512 void TileTransposeAvx512Bits16(const uint8_t* src,
                                                 size_t src_stride, uint8_t* dst,
                                                 size_t dst_stride, size_t rows,
                                                 size_t cols) {
  FullLineTile<32, 2, Block32x32Bits16<true>, Block32x32Bits16<false>, NarrowTileBits16>(
      src, src_stride, dst, dst_stride, rows, cols);
}

SPARSE_MLP_AVX512 void TileTransposeAvx512Bits32(const uint8_t* src,
                                                 size_t src_stride, uint8_t* dst,
                                                 size_t dst_stride, size_t rows,
                                                 size_t cols) {
  FullLineTile<16, 4, Block16x16Bits32<true>, Block16x16Bits32<false>,
               TileTransposeAvx2Bits32>(src, src_stride, dst, dst_stride, rows, cols);
}

}  // namespace sparse_mlp::gather::internal

#endif  // SPARSE_MLP_X86
