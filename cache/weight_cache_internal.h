// Helpers shared by the files of WeightCache (weight_cache*.cc); not a
// public header.
#ifndef SPARSE_MLP_CACHE_WEIGHT_CACHE_INTERNAL_H_
#define SPARSE_MLP_CACHE_WEIGHT_CACHE_INTERNAL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "memory/aligned_buffer.h"

namespace sparse_mlp::cache {
namespace internal {

// The first row of one part of a packed buffer; null while the buffer is
// unallocated (capacity 0: no offset may be applied to a null pointer).
inline uint8_t* PartData(memory::AlignedBuffer& buffer, size_t offset) {
  return buffer.data() == nullptr ? nullptr : buffer.data() + offset;
}

inline absl::Status ConcurrentMutationError(const char* method) {
  return absl::FailedPreconditionError(
      absl::StrFormat("WeightCache::%s called while another call is mutating the same cache; "
                      "WeightCache is thread-compatible: serialize mutating calls on one object",
                      method));
}

}  // namespace internal

// Holds the mutation flag for one mutating call, if no other call holds it.
class WeightCache::MutationScope {
 public:
  explicit MutationScope(MutationFlag& flag) : flag_(flag), held_(flag.TryAcquire()) {}
  MutationScope(const MutationScope&) = delete;
  MutationScope& operator=(const MutationScope&) = delete;
  ~MutationScope() {
    if (held_) flag_.Release();
  }
  bool held() const { return held_; }

 private:
  MutationFlag& flag_;
  const bool held_;
};

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_WEIGHT_CACHE_INTERNAL_H_
