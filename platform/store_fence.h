// Ordering of non-temporal (streaming) stores, the one helper every kernel
// that writes with them calls.
//
// Streaming stores are weakly ordered: they may still sit in write-combining
// buffers when the writing thread moves on. A thread that wrote with them
// calls FinishStreamingStores() (an sfence on x86) before another thread
// may read the destination, e.g. at the end of its share of a parallel
// region. On other architectures the kernels use ordinary stores and this is
// a release fence. Thread-safe; no allocation; O(1).
#ifndef SPARSE_MLP_PLATFORM_STORE_FENCE_H_
#define SPARSE_MLP_PLATFORM_STORE_FENCE_H_

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#else
#include <atomic>
#endif

namespace sparse_mlp {

inline void FinishStreamingStores() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#else
  std::atomic_thread_fence(std::memory_order_release);
#endif
}

}  // namespace sparse_mlp

#endif  // SPARSE_MLP_PLATFORM_STORE_FENCE_H_
