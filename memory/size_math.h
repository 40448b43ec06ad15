// Overflow-checked size arithmetic for byte counts.
//
// Every byte size that sparse_mlp derives from caller input (rows x row bytes,
// counts x element sizes, rounding up to an alignment) goes through these
// helpers, so an absurd request becomes an absl::Status naming the operands
// instead of a silently wrapped size_t and an undersized allocation.
//
// Thread-safe (pure functions). Never allocate except for an error message.
#ifndef SPARSE_MLP_MEMORY_SIZE_MATH_H_
#define SPARSE_MLP_MEMORY_SIZE_MATH_H_

#include <cstddef>

#include "absl/status/statusor.h"

namespace sparse_mlp::memory {

// a * b, or OutOfRangeError("size overflow: a * b") when it does not fit.
absl::StatusOr<size_t> CheckedMul(size_t a, size_t b);

// a + b, or OutOfRangeError when it does not fit.
absl::StatusOr<size_t> CheckedAdd(size_t a, size_t b);

// The smallest multiple of `alignment` >= size. `alignment` must be a power
// of two (InvalidArgumentError otherwise); OutOfRangeError on overflow.
absl::StatusOr<size_t> CheckedRoundUp(size_t size, size_t alignment);

// 64-bit words that hold `bits` bits (a bitset over neurons or slots).
constexpr size_t WordsForBits(size_t bits) { return bits / 64 + (bits % 64 != 0); }

// True for 1, 2, 4, 8, ...
constexpr bool IsPowerOfTwo(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

}  // namespace sparse_mlp::memory

#endif  // SPARSE_MLP_MEMORY_SIZE_MATH_H_
