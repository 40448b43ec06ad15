// Even, cache-line aligned splitting of a byte range over threads.
//
// Pure arithmetic shared by the parallel copy kernels: thread t of n gets the
// half-open byte range [Begin(t), Begin(t + 1)). Boundaries are multiples of
// 64 bytes so no two threads write into the same cache line (false sharing
// halves copy bandwidth), and every thread's share differs from the others by
// at most one line. Thread-safe; no allocation; O(1).
#ifndef SPARSE_MLP_GATHER_PARTITION_H_
#define SPARSE_MLP_GATHER_PARTITION_H_

#include <cstddef>

namespace sparse_mlp::gather {

// Copies, gathers and transposes of fewer bytes run on the calling thread:
// up to about a core's L2 a single core already moves them at cache speed
// and a second thread only adds its wake-up (//bench:memcpy_floor). The one
// threshold of every parallel kernel in gather/.
inline constexpr size_t kParallelMinBytes = size_t{1} << 20;

class BytePartition {
 public:
  static constexpr size_t kGranuleBytes = 64;

  BytePartition(size_t total_bytes, int num_parts)
      : total_(total_bytes),
        parts_(num_parts < 1 ? 1 : static_cast<size_t>(num_parts)),
        granules_((total_bytes + kGranuleBytes - 1) / kGranuleBytes) {}

  // Start of part t's range, 0 <= t <= num_parts; Begin(num_parts) == total.
  size_t Begin(size_t t) const {
    if (t >= parts_) return total_;
    // granules_ * t cannot overflow: granules_ < 2^58 and t < 2^31 would be
    // needed to wrap, and size_t byte counts beyond 2^58 cannot be allocated.
    const size_t begin = granules_ * t / parts_ * kGranuleBytes;
    return begin < total_ ? begin : total_;
  }

  size_t num_parts() const { return parts_; }

 private:
  size_t total_;
  size_t parts_;
  size_t granules_;
};

}  // namespace sparse_mlp::gather

#endif  // SPARSE_MLP_GATHER_PARTITION_H_
