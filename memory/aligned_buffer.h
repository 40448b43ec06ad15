// AlignedBuffer: an owning, aligned, fixed-size block of raw bytes.
//
// The weight cache keeps its packed rows in these: every row starts on a
// cache line (64 bytes by default) so SIMD loads/stores never split lines and
// two threads writing neighbouring rows never share one.
//
// A buffer comes either from the heap (AlignedBuffer::Allocate) or from an
// Arena (memory/arena.h); either way the AlignedBuffer owns it and gives it
// back when destroyed or reset. A buffer from an Arena must not outlive that
// Arena.
//
// Ownership: move-only RAII. Thread-compatible: distinct buffers may be used
// from distinct threads; one buffer's bytes carry no synchronization.
// Allocation: exactly one allocation per successful Allocate; none otherwise.
#ifndef SPARSE_MLP_MEMORY_ALIGNED_BUFFER_H_
#define SPARSE_MLP_MEMORY_ALIGNED_BUFFER_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace sparse_mlp::memory {

class Arena;

inline constexpr size_t kCacheLineBytes = 64;

// Transparent huge pages cut TLB misses when gathering rows spread over
// hundreds of MiB of weights; the kernel only honours the advice for regions
// that span whole 2 MiB pages, so small buffers ignore it.
enum class HugePageAdvice { kNone, kHugePages };

class AlignedBuffer {
 public:
  // An empty buffer: data() == nullptr, size() == 0.
  AlignedBuffer() = default;

  // `size` bytes aligned to `alignment` (a power of two, at least
  // alignof(void*)), uninitialized. size == 0 gives an empty buffer without
  // allocating. Errors: InvalidArgument for a bad alignment, OutOfRange when
  // size rounded up to the alignment overflows, ResourceExhausted when the
  // system refuses the memory. O(1) (the pages are not touched).
  static absl::StatusOr<AlignedBuffer> Allocate(
      size_t size, size_t alignment = kCacheLineBytes,
      HugePageAdvice advice = HugePageAdvice::kNone);

  AlignedBuffer(AlignedBuffer&& other) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& other) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { Reset(); }

  // Gives the memory back (to the heap or its Arena) and becomes empty.
  void Reset();

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  size_t alignment() const { return alignment_; }
  bool empty() const { return size_ == 0; }
  // The Arena this buffer was carved from, or nullptr for the heap.
  const Arena* arena() const { return arena_; }

 private:
  friend class Arena;
  AlignedBuffer(uint8_t* data, size_t size, size_t alignment, Arena* arena)
      : data_(data), size_(size), alignment_(alignment), arena_(arena) {}

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t alignment_ = kCacheLineBytes;
  Arena* arena_ = nullptr;
};

}  // namespace sparse_mlp::memory

#endif  // SPARSE_MLP_MEMORY_ALIGNED_BUFFER_H_
