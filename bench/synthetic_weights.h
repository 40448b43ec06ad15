// Buffers and synthetic weights for the forward and model benchmarks.
#ifndef SPARSE_MLP_BENCH_SYNTHETIC_WEIGHTS_H_
#define SPARSE_MLP_BENCH_SYNTHETIC_WEIGHTS_H_

#include <algorithm>
#include <cstring>
#include <cstddef>
#include <cstdint>

#include "cache/dtype.h"
#include "memory/aligned_buffer.h"
#include "platform/float16.h"
#include "quant/format.h"

namespace sparse_mlp::bench {

// A huge-page advised buffer of at least 64 bytes (aborts if the system
// refuses: a benchmark cannot go on without it).
inline memory::AlignedBuffer Buffer(size_t bytes) {
  return *memory::AlignedBuffer::Allocate(std::max<size_t>(bytes, 64), memory::kCacheLineBytes,
                                          memory::HugePageAdvice::kHugePages);
}

// n pseudo-random values in [-scale, scale] of `dtype` (xorshift per 64 Ki
// block, so the same seed gives the same values on any thread count),
// filled on `threads` threads: a model's weights are gigabytes.
inline memory::AlignedBuffer RandomValues(size_t n, cache::DType dtype, float scale,
                                          uint64_t seed, int threads = 1) {
  memory::AlignedBuffer b = Buffer(n * cache::DTypeSize(dtype));
  constexpr size_t kBlock = size_t{1} << 16;
  const long blocks = static_cast<long>((n + kBlock - 1) / kBlock);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long blk = 0; blk < blocks; ++blk) {
    uint64_t s = (seed * 1000003 + static_cast<uint64_t>(blk)) * 0x9E3779B97F4A7C15ull + 1;
    const size_t end = std::min(n, (static_cast<size_t>(blk) + 1) * kBlock);
    for (size_t k = static_cast<size_t>(blk) * kBlock; k < end; ++k) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      const float v = scale * (static_cast<float>(s >> 40) / 8388608.0f - 1.0f);
      if (dtype == cache::DType::kFloat32) {
        reinterpret_cast<float*>(b.data())[k] = v;
      } else {
        reinterpret_cast<uint16_t*>(b.data())[k] =
            dtype == cache::DType::kBFloat16 ? FloatToBFloat16(v) : FloatToFloat16(v);
      }
    }
  }
  return b;
}

// `rows` quantized rows of `layout` with pseudo-random quants and valid
// float16 scales (what a quantized checkpoint holds, without spending a
// benchmark's start quantizing gigabytes: the kernels' time does not depend
// on the values).
inline memory::AlignedBuffer RandomQuantRows(size_t rows, const quant::RowLayout& layout,
                                             uint64_t seed, int threads = 1) {
  const size_t rb = layout.row_bytes();
  memory::AlignedBuffer b = Buffer(rows * rb);
  const uint16_t scale = FloatToFloat16(0.03f / 127.0f);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < static_cast<long>(rows); ++r) {
    uint64_t s = (seed * 1000003 + static_cast<uint64_t>(r)) * 0x9E3779B97F4A7C15ull + 1;
    uint8_t* row = b.data() + static_cast<size_t>(r) * rb;
    for (size_t k = 0; k < layout.quant_bytes(); ++k) {
      s ^= s << 13;
      s ^= s >> 7;
      s ^= s << 17;
      const uint8_t v = static_cast<uint8_t>(s >> 56);
      row[k] = layout.type() == quant::QuantType::kInt8 && v == 0x80 ? 0x81 : v;  // no -128
    }
    for (size_t g = 0; g < layout.groups(); ++g) {
      std::memcpy(row + layout.scale_offset() + 2 * g, &scale, 2);
    }
  }
  return b;
}

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_SYNTHETIC_WEIGHTS_H_
