#include "gather/parallel_copy.h"

#include <omp.h>

#include <cstdint>
#include <cstring>

#include "gather/partition.h"
#include "platform/threads.h"

namespace sparse_mlp::gather {

absl::Status ParallelCopy(void* dst, const void* src, size_t bytes, int num_threads) {
  if (absl::Status s = ValidateNumThreads(num_threads); !s.ok()) return s;
  if (bytes == 0) return absl::OkStatus();
  if (num_threads == 1 || bytes < kParallelMinBytes) {
    std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  auto* out = static_cast<uint8_t*>(dst);
  const auto* in = static_cast<const uint8_t*>(src);
#pragma omp parallel num_threads(num_threads)
  {
    // Split over the team actually started, which may be smaller than asked.
    const BytePartition partition(bytes, omp_get_num_threads());
    const size_t t = static_cast<size_t>(omp_get_thread_num());
    const size_t begin = partition.Begin(t);
    const size_t end = partition.Begin(t + 1);
    if (end > begin) std::memcpy(out + begin, in + begin, end - begin);
  }
  return absl::OkStatus();
}

}  // namespace sparse_mlp::gather
