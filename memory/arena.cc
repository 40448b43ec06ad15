#include "memory/arena.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "memory/size_math.h"

namespace sparse_mlp::memory {

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(size_t capacity,
                                                     size_t alignment,
                                                     HugePageAdvice advice) {
  absl::StatusOr<size_t> rounded = CheckedRoundUp(capacity, alignment);
  if (!rounded.ok()) return rounded.status();
  absl::StatusOr<AlignedBuffer> block =
      AlignedBuffer::Allocate(*rounded, alignment, advice);
  if (!block.ok()) return block.status();
  return std::unique_ptr<Arena>(new Arena(*std::move(block)));
}

Arena::Arena(AlignedBuffer block) : block_(std::move(block)) {
  if (block_.size() > 0) free_extents_.emplace(0, block_.size());
}

Arena::~Arena() {
  absl::MutexLock lock(&mu_);
  if (live_regions_ != 0) {
    ABSL_RAW_LOG(FATAL,
                 "sparse_mlp::memory::Arena destroyed with %zu live regions "
                 "(%zu bytes): every AlignedBuffer carved from an Arena must be "
                 "released before the Arena",
                 live_regions_, bytes_in_use_);
  }
}

absl::StatusOr<AlignedBuffer> Arena::Allocate(size_t size) {
  absl::StatusOr<size_t> rounded = CheckedRoundUp(size, alignment());
  if (!rounded.ok()) return rounded.status();
  if (size == 0) return AlignedBuffer();

  absl::MutexLock lock(&mu_);
  auto fit = std::find_if(free_extents_.begin(), free_extents_.end(),
                          [&](const auto& e) { return e.second >= *rounded; });
  if (fit == free_extents_.end()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "arena cannot hold %u bytes (%u rounded to %u-byte alignment): %u of "
        "%u bytes free, largest free extent %u",
        size, *rounded, alignment(), capacity() - bytes_in_use_, capacity(),
        LargestFreeExtentLocked()));
  }
  const size_t offset = fit->first;
  const size_t remaining = fit->second - *rounded;
  free_extents_.erase(fit);
  if (remaining > 0) free_extents_.emplace(offset + *rounded, remaining);
  bytes_in_use_ += *rounded;
  ++live_regions_;
  return AlignedBuffer(block_.data() + offset, size, alignment(), this);
}

void Arena::Release(const uint8_t* data, size_t size) {
  const size_t offset = static_cast<size_t>(data - block_.data());
  // Cannot fail: the same rounding succeeded in Allocate.
  const size_t rounded = *CheckedRoundUp(size, alignment());
  absl::MutexLock lock(&mu_);
  auto next = free_extents_.lower_bound(offset);
  size_t start = offset;
  size_t length = rounded;
  if (next != free_extents_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      start = prev->first;
      length += prev->second;
      free_extents_.erase(prev);
    }
  }
  if (next != free_extents_.end() && offset + rounded == next->first) {
    length += next->second;
    free_extents_.erase(next);
  }
  free_extents_.emplace(start, length);
  bytes_in_use_ -= rounded;
  --live_regions_;
}

size_t Arena::bytes_in_use() const {
  absl::MutexLock lock(&mu_);
  return bytes_in_use_;
}

size_t Arena::largest_free_extent() const {
  absl::MutexLock lock(&mu_);
  return LargestFreeExtentLocked();
}

size_t Arena::LargestFreeExtentLocked() const {
  size_t largest = 0;
  for (const auto& [offset, length] : free_extents_) {
    largest = std::max(largest, length);
  }
  return largest;
}

size_t Arena::live_regions() const {
  absl::MutexLock lock(&mu_);
  return live_regions_;
}

}  // namespace sparse_mlp::memory
