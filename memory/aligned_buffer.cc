#include "memory/aligned_buffer.h"

#include <sys/mman.h>

#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "memory/arena.h"
#include "memory/size_math.h"

namespace sparse_mlp::memory {
namespace {
constexpr size_t kHugePageBytes = size_t{2} << 20;
}  // namespace

absl::StatusOr<AlignedBuffer> AlignedBuffer::Allocate(size_t size,
                                                      size_t alignment,
                                                      HugePageAdvice advice) {
  if (!IsPowerOfTwo(alignment) || alignment < alignof(void*)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "alignment %u must be a power of two and at least %u", alignment,
        alignof(void*)));
  }
  // Huge-page advice only takes effect on 2 MiB-aligned ranges.
  const bool huge = advice == HugePageAdvice::kHugePages && size >= kHugePageBytes;
  const size_t effective_alignment =
      huge && alignment < kHugePageBytes ? kHugePageBytes : alignment;
  absl::StatusOr<size_t> rounded = CheckedRoundUp(size, effective_alignment);
  if (!rounded.ok()) return rounded.status();
  if (size == 0) return AlignedBuffer();

  void* raw = nullptr;
  if (posix_memalign(&raw, effective_alignment, *rounded) != 0) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "cannot allocate %u bytes aligned to %u", *rounded, effective_alignment));
  }
  if (huge) {
    // Advice only: a kernel without THP keeps working with small pages.
    (void)madvise(raw, *rounded, MADV_HUGEPAGE);
  }
  return AlignedBuffer(static_cast<uint8_t*>(raw), size, alignment, nullptr);
}

AlignedBuffer::AlignedBuffer(AlignedBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      alignment_(other.alignment_),
      arena_(std::exchange(other.arena_, nullptr)) {}

AlignedBuffer& AlignedBuffer::operator=(AlignedBuffer&& other) noexcept {
  if (this != &other) {
    Reset();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    alignment_ = other.alignment_;
    arena_ = std::exchange(other.arena_, nullptr);
  }
  return *this;
}

void AlignedBuffer::Reset() {
  if (data_ != nullptr) {
    if (arena_ != nullptr) {
      arena_->Release(data_, size_);
    } else {
      std::free(data_);
    }
  }
  data_ = nullptr;
  size_ = 0;
  arena_ = nullptr;
}

}  // namespace sparse_mlp::memory
