// The memory floor every other benchmark is compared against: how fast this
// machine copies a contiguous block of bytes with 1 and 2 threads
// (gather::ParallelCopy, i.e. glibc memcpy per thread), for block sizes from
// 64 KiB (cache resident) to 256 MiB (DRAM bound).
//
//   bazel run //bench:memcpy_floor
//
// bytes_per_second counts each byte once (bytes copied, not read + written).
#include <cstring>

#include "benchmark/benchmark.h"
#include "gather/parallel_copy.h"
#include "memory/aligned_buffer.h"

namespace sparse_mlp::bench {
namespace {

void BM_ParallelCopy(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  memory::AlignedBuffer src = *memory::AlignedBuffer::Allocate(bytes);
  memory::AlignedBuffer dst = *memory::AlignedBuffer::Allocate(bytes);
  std::memset(src.data(), 1, bytes);
  std::memset(dst.data(), 0, bytes);  // fault the pages in outside the loop
  for (auto _ : state) {
    (void)gather::ParallelCopy(dst.data(), src.data(), bytes, threads);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(bytes));
}
BENCHMARK(BM_ParallelCopy)
    ->ArgNames({"bytes", "threads"})
    ->ArgsProduct({benchmark::CreateRange(64 << 10, 256 << 20, 2), {1, 2}})
    ->UseRealTime();

}  // namespace
}  // namespace sparse_mlp::bench
