#include "memory/arena.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "memory/size_math.h"

namespace sparse_mlp::memory {

absl::StatusOr<std::unique_ptr<Arena>> Arena::Create(size_t capacity, size_t alignment,
                                                     HugePageAdvice advice,
                                                     size_t growth_bytes) {
  absl::StatusOr<size_t> rounded = CheckedRoundUp(capacity, alignment);
  if (!rounded.ok()) return rounded.status();
  // Validates the alignment (even for capacity 0) as AlignedBuffer does.
  if (absl::StatusOr<AlignedBuffer> probe = AlignedBuffer::Allocate(0, alignment, advice);
      !probe.ok()) {
    return probe.status();
  }
  std::unique_ptr<Arena> arena(new Arena(alignment, advice, growth_bytes));
  if (*rounded > 0) {
    absl::MutexLock lock(&arena->mu_);
    if (absl::Status s = arena->AddBlockLocked(*rounded); !s.ok()) return s;
  }
  return arena;
}

Arena::Arena(size_t alignment, HugePageAdvice advice, size_t growth_bytes)
    : alignment_(alignment), advice_(advice), growth_bytes_(growth_bytes) {}

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

absl::Status Arena::AddBlockLocked(size_t bytes) {
  absl::StatusOr<AlignedBuffer> block = AlignedBuffer::Allocate(bytes, alignment_, advice_);
  if (!block.ok()) return block.status();
  const uintptr_t base = reinterpret_cast<uintptr_t>(block->data());
  free_extents_.emplace(base, block->size());
  capacity_ += block->size();
  blocks_.emplace(base, *std::move(block));
  return absl::OkStatus();
}

absl::StatusOr<AlignedBuffer> Arena::Allocate(size_t size) {
  absl::StatusOr<size_t> rounded = CheckedRoundUp(size, alignment());
  if (!rounded.ok()) return rounded.status();
  if (size == 0) return AlignedBuffer();

  absl::MutexLock lock(&mu_);
  auto fits = [&](const auto& e) { return e.second >= *rounded; };
  auto fit = std::find_if(free_extents_.begin(), free_extents_.end(), fits);
  if (fit == free_extents_.end() && growth_bytes_ > 0) {
    const absl::StatusOr<size_t> block_bytes =
        CheckedRoundUp(std::max(growth_bytes_, *rounded), alignment());
    if (!block_bytes.ok()) return block_bytes.status();
    if (absl::Status s = AddBlockLocked(*block_bytes); !s.ok()) {
      return absl::ResourceExhaustedError(absl::StrFormat(
          "arena cannot grow by %u bytes for a request of %u: %s", *block_bytes, size,
          s.message()));
    }
    fit = std::find_if(free_extents_.begin(), free_extents_.end(), fits);
  }
  if (fit == free_extents_.end()) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "arena cannot hold %u bytes (%u rounded to %u-byte alignment): %u of "
        "%u bytes free, largest free extent %u",
        size, *rounded, alignment(), capacity_ - bytes_in_use_, capacity_,
        LargestFreeExtentLocked()));
  }
  const uintptr_t start = fit->first;
  const size_t remaining = fit->second - *rounded;
  free_extents_.erase(fit);
  if (remaining > 0) free_extents_.emplace(start + *rounded, remaining);
  bytes_in_use_ += *rounded;
  ++live_regions_;
  return AlignedBuffer(reinterpret_cast<uint8_t*>(start), size, alignment(), this);
}

void Arena::Release(const uint8_t* data, size_t size) {
  const uintptr_t address = reinterpret_cast<uintptr_t>(data);
  // Cannot fail: the same rounding succeeded in Allocate.
  const size_t rounded = *CheckedRoundUp(size, alignment());
  absl::MutexLock lock(&mu_);
  // The block holding the region: the last one starting at or below it.
  const auto block = std::prev(blocks_.upper_bound(address));
  const uintptr_t block_begin = block->first;
  const uintptr_t block_end = block_begin + block->second.size();
  auto next = free_extents_.lower_bound(address);
  uintptr_t start = address;
  size_t length = rounded;
  if (next != free_extents_.begin()) {
    auto prev = std::prev(next);
    if (prev->first >= block_begin && prev->first + prev->second == address) {
      start = prev->first;
      length += prev->second;
      free_extents_.erase(prev);
    }
  }
  if (next != free_extents_.end() && next->first < block_end &&
      address + rounded == next->first) {
    length += next->second;
    free_extents_.erase(next);
  }
  free_extents_.emplace(start, length);
  bytes_in_use_ -= rounded;
  --live_regions_;
}

size_t Arena::capacity() const {
  absl::MutexLock lock(&mu_);
  return capacity_;
}

size_t Arena::num_blocks() const {
  absl::MutexLock lock(&mu_);
  return blocks_.size();
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
