// The integer dot of int8 rows with x rounded per block of 32
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

#define SPARSE_MLP_VNNI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

constexpr size_t kBlock = 32;

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

SPARSE_MLP_VNNI float RowDot(const uint8_t* row, const quant::RowLayout& l, const Int8X& x) {
  const size_t hidden = l.hidden();
  const size_t blocks = hidden / kBlock;
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc = _mm512_setzero_ps();
  for (size_t b0 = 0; b0 < blocks; b0 += 16) {
    const size_t n = std::min<size_t>(16, blocks - b0);
    const __m512 s = BlockScales(row, l, b0, n, x.scale);
    for (size_t p = 0; 2 * p < n; ++p) {
      const size_t at = (b0 + 2 * p) * kBlock;
      // Lanes 0-7: block b0 + 2p, lanes 8-15: the next (absent at a tail
      // of one block: its bytes load as zero and add nothing).
      const bool pair = 2 * p + 1 < n;
      const __mmask64 bm = pair ? ~__mmask64{0} : __mmask64{0xFFFFFFFFull};
      const __mmask16 lm = static_cast<__mmask16>(pair ? 0xFFFF : 0x00FF);
      const __m512i w = _mm512_xor_si512(_mm512_maskz_loadu_epi8(bm, row + at), flip);
      const __m512i xq = _mm512_maskz_loadu_epi8(bm, x.q + at);
      const __m512i bias = _mm512_maskz_loadu_epi32(lm, x.bias + at / 4);
      const __m512i sums = _mm512_maskz_dpbusd_epi32(lm, bias, w, xq);
      const __m512i lane_block = _mm512_set_epi32(
          2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1, 2 * p + 1,
          2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p, 2 * p);
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_permutexvar_ps(lane_block, s), acc);
    }
  }
  return _mm512_reduce_add_ps(acc);
}

SPARSE_MLP_VNNI void DotInt8(const void* const* rows, size_t nrows, const Int8X* x, size_t tokens,
                             const quant::RowLayout& l, float* out) {
  for (size_t r = 0; r < nrows; ++r) {
    const auto* row = static_cast<const uint8_t*>(rows[r]);
    for (size_t t = 0; t < tokens; ++t) out[r * tokens + t] = RowDot(row, l, x[t]);
  }
}

}  // namespace

QuantDotInt8Fn VnniDotInt8() {
  return HasCpuFeature(CpuFeature::kAvx512Vnni) ? &DotInt8 : nullptr;
}

}  // namespace sparse_mlp::mlp::internal

#endif  // SPARSE_MLP_X86
