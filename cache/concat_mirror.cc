#include "cache/concat_mirror.h"

#include <cstring>
#include <string>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/types/span.h"
#include "gather/parallel_copy.h"
#include "gather/row_gather.h"

namespace sparse_mlp::cache {

absl::StatusOr<ConcatMirror> ConcatMirror::Regrown(memory::AlignedBuffer fresh, size_t capacity,
                                                   size_t active, int num_threads) const {
  ConcatMirror grown(row_bytes_);
  grown.capacity_ = capacity;
  *grown.buffer_ = std::move(fresh);
  // Rows keep their positions: gate [0, A), up [A, 2A).
  if (active != 0) {
    if (absl::Status s = gather::ParallelCopy(grown.buffer_->data(), buffer_->data(),
                                              2 * active * row_bytes_, num_threads);
        !s.ok()) {
      return s;
    }
  }
  return grown;
}

void ConcatMirror::Apply(const UpdatePlan& plan, size_t old_active, size_t new_active,
                         const gather::ConstRowsView& gate, const gather::ConstRowsView& up,
                         int num_threads, SimdLevel simd) {
  const size_t rb = row_bytes_;
  uint8_t* base = buffer_->data();
  if (base == nullptr) return;  // capacity 0: nothing active, nothing to move
  gather::RowPart gate_rows{{base, capacity_, rb}, {base, capacity_, rb}, rb};
  auto run = [&](absl::Span<const gather::RowGatherJob> jobs) {
    const absl::Status s = gather::GatherRowsBatch(jobs, num_threads, simd);
    if (!s.ok()) {
      ABSL_RAW_LOG(FATAL, "sparse_mlp: internal error updating the concatenation: %s",
                   std::string(s.message()).c_str());
    }
  };
  // Shrinking, the up block moves down over the gate rows of tail slots
  // that moves still read: those gate moves go first.
  const bool shrink = new_active < old_active;
  if (shrink && !plan.moves.empty()) {
    const gather::RowGatherJob gate_moves[1] = {{absl::MakeConstSpan(&gate_rows, 1), plan.moves}};
    run(gate_moves);
  }
  // Rows [A, 2A) to [A', A' + A): overlapping ranges, hence memmove; both
  // fit the 2 x capacity rows. Not for a repack, which reloads every row.
  if (new_active != old_active && old_active != 0 && !plan.repack) {
    std::memmove(base + new_active * rb, base + old_active * rb, old_active * rb);
  }
  uint8_t* up_base = base + new_active * rb;
  const size_t up_rows = 2 * capacity_ - new_active;
  const gather::RowPart load_parts[2] = {{gate, {base, capacity_, rb}, rb},
                                         {up, {up_base, up_rows, rb}, rb}};
  // Moves read and write within each half (a moved slot's up row moved
  // with the block); the gate half is done already when shrinking.
  const gather::RowPart move_parts[2] = {gate_rows,
                                         {{up_base, up_rows, rb}, {up_base, up_rows, rb}, rb}};
  const gather::RowGatherJob jobs[2] = {
      {load_parts, plan.loads},
      {shrink ? absl::MakeConstSpan(move_parts + 1, 1) : absl::MakeConstSpan(move_parts, 2),
       plan.moves}};
  run(jobs);
}

}  // namespace sparse_mlp::cache
