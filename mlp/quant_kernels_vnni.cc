// The integer dots of int8 and q4 rows with x rounded per block of 32
// (ForwardOptions::quantize_x), AVX-512 VNNI: per 64 weights (two blocks)
// one vpdpbusd of the unsigned weights (w + 128, an xor) by the signed x,
// started from the block's offset correction (Int8X::bias), so the 32-bit
// lanes hold exact integer sums; then one conversion and one FMA with
// the lanes' scales (row scale x x's block scale). About 3x fewer
// instructions per weight than widening to float32, which is what brings
// the gate and up dots to the read floor (//bench:quant_dot).
#include "mlp/quant_kernels.h"

#if SPARSE_MLP_X86
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "platform/simd_level.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace sparse_mlp::mlp::internal {
namespace {

using quant::QuantType;

#define SPARSE_MLP_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

constexpr size_t kBlock = 32;

#define SPARSE_MLP_VNNI_UNROLL _Pragma("GCC unroll 8")

// Lane i of the result = the row's scale of block b0 + i times x's scale
// of that block, for the n <= 16 blocks from b0 (lanes past n: 0).
SPARSE_MLP_VNNI inline __m512 BlockScales(const uint8_t* row, const quant::RowLayout& l,
                                          size_t b0, size_t n, const float* xs) {
  const __mmask16 m = static_cast<__mmask16>(n == 16 ? 0xFFFF : (1u << n) - 1);
  const __m512 xv = _mm512_maskz_loadu_ps(m, xs + b0);
  const uint8_t* sc = row + l.scale_offset();
  const size_t per_group = l.group() / kBlock;  // blocks per scale
  if (per_group == 1) {
    return _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, sc + 2 * b0)), xv);
  }
  // The groups of blocks [b0, b0 + n): g0 .. g_last, at most 16; lane i
  // takes group (b0 + i) / per_group, counted without a division per lane.
  const size_t g0 = b0 / per_group;
  size_t into = b0 - g0 * per_group;
  alignas(64) int32_t idx[16];
  int32_t g = 0;
  for (size_t i = 0; i < 16; ++i) {
    idx[i] = i < n ? g : 0;
    if (++into == per_group) into = 0, ++g;
  }
  const size_t ng = std::min<size_t>(16, l.groups() - g0);
  const __mmask16 gm = static_cast<__mmask16>(ng == 16 ? 0xFFFF : (1u << ng) - 1);
  const __m512 gs = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(gm, sc + 2 * g0));
  return _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_load_si512(idx), gs), xv);
}

// Lane -> block of a pair within 16 blocks: pair p's lanes 0-7 take block
// 2p, lanes 8-15 block 2p + 1 (permutes of the 16 block scales).
alignas(64) constexpr int32_t kPairLanes[8][16] = {
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},
    {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},
    {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},
    {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13},
    {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15}};

// Blocks 2p and 2p + 1 from `at` of NR rows (a lone last block when
// !pair: its partner's bytes load as zero and add nothing) into acc[r]:
// x's quants and offsets loaded once for the NR rows, the rows read side
// by side (NR concurrent streams, as the float kernels read them).
template <int NR, bool kFull>
SPARSE_MLP_VNNI inline void PairDot(const uint8_t* const* rows, const Int8X& x, size_t at, int p,
                                    bool pair, const __m512 (&s)[NR], __m512 (&acc)[NR]) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i lanes = _mm512_load_si512(kPairLanes[p]);
  __m512i xq, bias;
  if (kFull || pair) {
    xq = _mm512_loadu_si512(x.q + at);
    bias = _mm512_loadu_si512(x.bias + at / 4);
  } else {
    xq = _mm512_maskz_loadu_epi8(0xFFFFFFFFull, x.q + at);
    bias = _mm512_maskz_loadu_epi32(0x00FF, x.bias + at / 4);
  }
  SPARSE_MLP_VNNI_UNROLL for (int r = 0; r < NR; ++r) {
    const __m512i w = kFull || pair ? _mm512_loadu_si512(rows[r] + at)
                                    : _mm512_maskz_loadu_epi8(0xFFFFFFFFull, rows[r] + at);
    const __m512i sums = _mm512_dpbusd_epi32(bias, _mm512_xor_si512(w, flip), xq);
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_permutexvar_ps(lanes, s[r]), acc[r]);
  }
}

// Lane -> block of a q4 chunk within 16 blocks: chunk c's lanes 4m..4m+3
// take block 4c + m.
alignas(64) constexpr int32_t kQuadLanes[4][16] = {
    {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3},
    {4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7},
    {8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11},
    {12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15}};

// q4: one chunk of four blocks (128 weights, 64 row bytes from row_at;
// `blocks` < 4 at a row's end: the rest load as zero) of NR rows into
// acc[r]. Low nibbles meet x's chunk values in q4 order, high nibbles the
// next 64: two vpdpbusd from the chunk's offset correction.
template <int NR, bool kFull>
SPARSE_MLP_VNNI inline void ChunkDotQ4(const uint8_t* const* rows, const Int8X& x, size_t chunk,
                                       int c, size_t blocks, const __m512 (&s)[NR],
                                       __m512 (&acc)[NR]) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i lanes = _mm512_load_si512(kQuadLanes[c]);
  const __m512i xlo = _mm512_load_si512(x.q4 + 128 * chunk);
  const __m512i xhi = _mm512_load_si512(x.q4 + 128 * chunk + 64);
  const __m512i bias = _mm512_load_si512(x.q4_bias + 16 * chunk);
  const __mmask64 m = kFull || blocks >= 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * blocks)) - 1;
  SPARSE_MLP_VNNI_UNROLL for (int r = 0; r < NR; ++r) {
    const __m512i w = kFull ? _mm512_loadu_si512(rows[r] + 64 * chunk)
                            : _mm512_maskz_loadu_epi8(m, rows[r] + 64 * chunk);
    const __m512i lo = _mm512_and_si512(w, low);
    const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), low);
    const __m512i sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(bias, lo, xlo), hi, xhi);
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_permutexvar_ps(lanes, s[r]), acc[r]);
  }
}

// A window of n <= 16 blocks from b0 (kFull: exactly 16) of NR rows into
// acc[r], s[r] holding their block scales: int8 rows in pairs of blocks,
// q4 rows in chunks of four.
template <QuantType Q, int NR, bool kFull>
SPARSE_MLP_VNNI inline void WindowDot(const uint8_t* const* rows, const Int8X& x, size_t b0,
                                      size_t n, const __m512 (&s)[NR], __m512 (&acc)[NR]) {
  if constexpr (Q == QuantType::kInt8) {
    if constexpr (kFull) {
      SPARSE_MLP_VNNI_UNROLL for (int p = 0; p < 8; ++p) {
        PairDot<NR, true>(rows, x, (b0 + 2 * static_cast<size_t>(p)) * kBlock, p, true, s, acc);
      }
    } else {
      for (size_t p = 0; 2 * p < n; ++p) {
        PairDot<NR, false>(rows, x, (b0 + 2 * p) * kBlock, static_cast<int>(p), 2 * p + 1 < n, s,
                           acc);
      }
    }
  } else if constexpr (kFull) {
    SPARSE_MLP_VNNI_UNROLL for (int c = 0; c < 4; ++c) {
      ChunkDotQ4<NR, true>(rows, x, b0 / 4 + static_cast<size_t>(c), c, 4, s, acc);
    }
  } else {
    for (size_t c = 0; 4 * c < n; ++c) {
      ChunkDotQ4<NR, false>(rows, x, b0 / 4 + c, static_cast<int>(c),
                            std::min<size_t>(4, n - 4 * c), s, acc);
    }
  }
}

// <row_r, x> for NR rows of format Q read side by side, into
// out[r x out_stride]: windows of 16 blocks (the scales converted once per
// window and row), then the last blocks.
template <QuantType Q, int NR>
SPARSE_MLP_VNNI void RowsDot(const uint8_t* const* rows, const quant::RowLayout& l, const Int8X& x,
                             float* out, size_t out_stride) {
  const size_t blocks = l.hidden() / kBlock;
  __m512 acc[NR], s[NR];
  SPARSE_MLP_VNNI_UNROLL for (int r = 0; r < NR; ++r) acc[r] = _mm512_setzero_ps();
  size_t b0 = 0;
  for (; b0 + 16 <= blocks; b0 += 16) {
    SPARSE_MLP_VNNI_UNROLL for (int r = 0; r < NR; ++r) {
      s[r] = BlockScales(rows[r], l, b0, 16, x.scale);
    }
    WindowDot<Q, NR, true>(rows, x, b0, 16, s, acc);
  }
  if (b0 < blocks) {
    const size_t n = blocks - b0;
    SPARSE_MLP_VNNI_UNROLL for (int r = 0; r < NR; ++r) {
      s[r] = BlockScales(rows[r], l, b0, n, x.scale);
    }
    WindowDot<Q, NR, false>(rows, x, b0, n, s, acc);
  }
  SPARSE_MLP_VNNI_UNROLL for (int r = 0; r < NR; ++r) {
    out[r * out_stride] = _mm512_reduce_add_ps(acc[r]);
  }
}

// The dots of a call's rows (up to kMaxDotRows, read side by side) for
// each token: out[r x tokens + t]. The rows stay in L1 across the tokens
// after the first. Q: the rows' format.
template <QuantType Q>
SPARSE_MLP_VNNI void DotRounded(const void* const* rows_in, size_t nrows, const Int8X* x,
                                size_t tokens, const quant::RowLayout& l, float* out) {
  const uint8_t* rows[4];
  for (size_t r = 0; r < nrows; ++r) rows[r] = static_cast<const uint8_t*>(rows_in[r]);
  for (size_t t = 0; t < tokens; ++t) {
    switch (nrows) {
      case 1:
        RowsDot<Q, 1>(rows, l, x[t], out + t, tokens);
        break;
      case 2:
        RowsDot<Q, 2>(rows, l, x[t], out + t, tokens);
        break;
      case 3:
        RowsDot<Q, 3>(rows, l, x[t], out + t, tokens);
        break;
      default:
        RowsDot<Q, 4>(rows, l, x[t], out + t, tokens);
        break;
    }
  }
}

}  // namespace

QuantDotInt8Fn VnniDotInt8(quant::QuantType type) {
  if (!HasCpuFeature(CpuFeature::kAvx512Vnni)) return nullptr;
  return type == quant::QuantType::kInt8 ? &DotRounded<QuantType::kInt8>
                                         : &DotRounded<QuantType::kQ4>;
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
