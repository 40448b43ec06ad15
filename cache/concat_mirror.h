// ConcatMirror: the seed API's concatenated [gate; up] weight ([2A, H]: the
// active gate rows, then the active up rows, in slot order) kept as a live
// array beside a WeightCache's packed rows, so that it can be handed out as
// a zero-copy view (WeightCacheOptions::concat_gate_up).
//
// Theory of operation. The array has 2 x capacity rows; gate row s sits at
// row s and up row s at row A + s for the current A. A cache update's plan
// (cache/update_plan.h) keeps every surviving neuron in its slot and says
// which slots load a neuron and which move one, so the mirror applies the
// same loads and moves to both halves: O(changed rows) while A stays the
// same. When A changes, the up block moves as a whole to row A' first
// (O(A x H), a memmove of overlapping ranges), except for a repack, which
// reloads every row anyway.
//
// Ownership: the rows live in a shared buffer, so that a binding can keep a
// view alive past a growth (WeightCache::RetainStorage). Thread-compatible;
// the copies run on the thread count the caller passes. Allocation: none
// here; the cache allocates the buffer (heap or arena) and hands it over.
#ifndef SPARSE_MLP_CACHE_CONCAT_MIRROR_H_
#define SPARSE_MLP_CACHE_CONCAT_MIRROR_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "cache/update_plan.h"
#include "gather/row_types.h"
#include "memory/aligned_buffer.h"
#include "platform/simd_level.h"

namespace sparse_mlp::cache {

class ConcatMirror {
 public:
  // An empty mirror (no rows, capacity 0).
  ConcatMirror() : buffer_(std::make_shared<memory::AlignedBuffer>()) {}
  explicit ConcatMirror(size_t row_bytes)
      : buffer_(std::make_shared<memory::AlignedBuffer>()), row_bytes_(row_bytes) {}

  // A mirror of `capacity` slots over `fresh` (at least 2 x capacity rows)
  // holding this one's first `active` gate and up rows at the same
  // positions. This mirror is unchanged; errors are those of the parallel
  // copy (a thread count outside [1, kMaxThreads]).
  absl::StatusOr<ConcatMirror> Regrown(memory::AlignedBuffer fresh, size_t capacity, size_t active,
                                       int num_threads) const;

  // Applies an update planned from old_active to new_active slots: the
  // plan's loads read neuron rows from `gate` and `up` (neuron-major
  // sources), its moves move rows within each half. Runs after or instead of
  // the packed rows' own copies (it reads only the sources and itself).
  // The plan indexes valid neurons and slots below capacity; anything else
  // is a bug in the planner (fatal).
  void Apply(const UpdatePlan& plan, size_t old_active, size_t new_active,
             const gather::ConstRowsView& gate, const gather::ConstRowsView& up, int num_threads,
             SimdLevel simd);

  // Row r of the [2 x capacity, H] array (gate rows [0, A), up rows [A, 2A)).
  const uint8_t* row(size_t r) const { return buffer_->data() + r * row_bytes_; }
  const uint8_t* data() const { return buffer_->data(); }
  size_t bytes() const { return buffer_->size(); }
  const std::shared_ptr<memory::AlignedBuffer>& buffer() const { return buffer_; }

 private:
  std::shared_ptr<memory::AlignedBuffer> buffer_;
  size_t row_bytes_ = 0;
  size_t capacity_ = 0;  // slots; the array holds 2 x capacity_ rows
};

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_CONCAT_MIRROR_H_
