#include "memory/size_math.h"

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace sparse_mlp::memory {

absl::StatusOr<size_t> CheckedMul(size_t a, size_t b) {
  size_t product;
  if (__builtin_mul_overflow(a, b, &product)) {
    return absl::OutOfRangeError(
        absl::StrFormat("size overflow: %u * %u does not fit in size_t", a, b));
  }
  return product;
}

absl::StatusOr<size_t> CheckedAdd(size_t a, size_t b) {
  size_t sum;
  if (__builtin_add_overflow(a, b, &sum)) {
    return absl::OutOfRangeError(
        absl::StrFormat("size overflow: %u + %u does not fit in size_t", a, b));
  }
  return sum;
}

absl::StatusOr<size_t> CheckedRoundUp(size_t size, size_t alignment) {
  if (!IsPowerOfTwo(alignment)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("alignment %u is not a power of two", alignment));
  }
  absl::StatusOr<size_t> padded = CheckedAdd(size, alignment - 1);
  if (!padded.ok()) {
    return absl::OutOfRangeError(absl::StrFormat(
        "size overflow: rounding %u up to a multiple of %u", size, alignment));
  }
  return *padded & ~(alignment - 1);
}

}  // namespace sparse_mlp::memory
