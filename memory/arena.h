// Arena: one large aligned allocation from which many buffers are carved.
//
// Theory of operation
// -------------------
// A model has one weight cache per layer (16-80 of them). Each cache needs a
// few packed buffers that grow rarely and live as long as the model. Giving
// every layer its own heap blocks fragments the address space and costs a
// page-fault storm per layer; an Arena instead reserves one block up front
// (optionally on transparent huge pages) and hands out aligned sub-regions of
// it as AlignedBuffers.
//
// The free space is a set of [offset, size) extents ordered by offset.
// Allocate takes the first extent that fits (first fit: O(number of free
// extents), which stays small because a model's caches allocate a handful of
// buffers each) and splits it. Releasing a buffer (its destructor or Reset)
// puts its extent back and merges it with free neighbours, so a region freed
// by one layer can be reused by another and the Arena never fragments into
// pieces that adjacent frees could have joined.
//
// Alignment: every region starts at a multiple of the Arena's alignment
// (default 64 bytes, one cache line) and its size is rounded up to one, so
// regions never share a cache line and so never false-share between threads.
//
// Growth (opt-in): an Arena created with growth_bytes > 0 answers a request
// that no free extent holds by reserving one more block of
// max(growth_bytes, request) bytes (same alignment and huge-page advice), so
// a pool sized for the expected case stays a few large allocations when one
// user needs more. Extents never merge across blocks (each block is its own
// mapping). Blocks are kept until the Arena is destroyed.
//
// Failure mode: Allocate never throws and never returns a partial region. A
// request that overflows when rounded up, or that no free extent can hold
// (with growth: nor a new block), returns an absl::Status naming the
// request and what is free; the Arena is unchanged. There is no fallback to
// the heap beyond the Arena's own blocks.
//
// Lifetime: the Arena must outlive every buffer carved from it; destroying an
// Arena with live buffers is a programming error and aborts with a message.
// An Arena is not movable (its buffers point back at it).
//
// Thread-safety: thread-safe. Allocate and releases from any thread are
// serialized by an internal mutex; the bytes of distinct buffers may be
// written concurrently.
#ifndef SPARSE_MLP_MEMORY_ARENA_H_
#define SPARSE_MLP_MEMORY_ARENA_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "memory/aligned_buffer.h"

namespace sparse_mlp::memory {

class Arena {
 public:
  // Reserves `capacity` bytes (rounded up to `alignment`). capacity == 0
  // gives an Arena that can only satisfy zero-size requests (or grows at the
  // first one). growth_bytes: 0 = fixed size; else the least size of a block
  // added when a request does not fit (see "Growth"). Errors as in
  // AlignedBuffer::Allocate.
  static absl::StatusOr<std::unique_ptr<Arena>> Create(
      size_t capacity, size_t alignment = kCacheLineBytes,
      HugePageAdvice advice = HugePageAdvice::kNone, size_t growth_bytes = 0);

  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena();

  // A region of `size` bytes, aligned to alignment(). size == 0 gives an
  // empty buffer and consumes nothing. O(free extents) (+ one block
  // allocation when growing). Errors: OutOfRange when rounding overflows,
  // ResourceExhausted when no free extent is large enough and the Arena
  // cannot grow (the message gives the request, the free total and the
  // largest extent), or when growing fails.
  absl::StatusOr<AlignedBuffer> Allocate(size_t size) ABSL_LOCKS_EXCLUDED(mu_);

  // Bytes of all blocks.
  size_t capacity() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t alignment() const { return alignment_; }
  size_t growth_bytes() const { return growth_bytes_; }
  size_t num_blocks() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t bytes_in_use() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t largest_free_extent() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t live_regions() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  friend class AlignedBuffer;
  Arena(size_t alignment, HugePageAdvice advice, size_t growth_bytes);
  absl::Status AddBlockLocked(size_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Release(const uint8_t* data, size_t size) ABSL_LOCKS_EXCLUDED(mu_);
  size_t LargestFreeExtentLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t alignment_;
  const HugePageAdvice advice_;
  const size_t growth_bytes_;
  mutable absl::Mutex mu_;
  // Blocks by start address (the value's data()), so a released region
  // finds its block, and merges stop at block ends.
  std::map<uintptr_t, AlignedBuffer> blocks_ ABSL_GUARDED_BY(mu_);
  std::map<uintptr_t, size_t> free_extents_ ABSL_GUARDED_BY(mu_);  // address->size
  size_t capacity_ ABSL_GUARDED_BY(mu_) = 0;
  size_t bytes_in_use_ ABSL_GUARDED_BY(mu_) = 0;
  size_t live_regions_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace sparse_mlp::memory

#endif  // SPARSE_MLP_MEMORY_ARENA_H_
