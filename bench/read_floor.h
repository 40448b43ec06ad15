// The read floor of the forward benchmarks: the time to read a set of byte
// ranges once with `threads` threads (each thread reads its share of every
// range with 64-byte vector loads), and a scrub that evicts the caches
// between timed calls by reading a buffer larger than the last-level cache.
#ifndef SPARSE_MLP_BENCH_READ_FLOOR_H_
#define SPARSE_MLP_BENCH_READ_FLOOR_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "memory/aligned_buffer.h"

namespace sparse_mlp::bench {

struct ByteRange {
  const void* data;
  size_t bytes;
};

// Reads every byte of `ranges` (untimed here; time it with SecondsOf).
void ReadRanges(const std::vector<ByteRange>& ranges, int threads);

// Reads a buffer of `bytes` (3x the last-level cache by default) so that
// whatever the previous call left cached, clean or dirty, is gone.
class Scrubber {
 public:
  explicit Scrubber(size_t bytes = size_t{96} << 20);
  void Scrub(int threads) { ReadRanges({{buffer_.data(), buffer_.size()}}, threads); }

 private:
  memory::AlignedBuffer buffer_;
};

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_READ_FLOOR_H_
