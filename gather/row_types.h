// The row-copy vocabulary shared by the planner (cache/update_plan.h, pure
// logic) and the copy kernels (gather/row_gather.h): a types-only target,
// so that planning code links no OpenMP and no SIMD kernel.
//
// A matrix is described by a non-owning view (base pointer, row count,
// stride in bytes; the memory must stay valid for the call it is passed
// to); a copy is a (source row, destination row) pair. Rows are raw bytes:
// the element type only matters through the row length.
#ifndef SPARSE_MLP_GATHER_ROW_TYPES_H_
#define SPARSE_MLP_GATHER_ROW_TYPES_H_

#include <cstddef>
#include <cstdint>

namespace sparse_mlp::gather {

struct ConstRowsView {
  const void* data = nullptr;
  size_t num_rows = 0;
  size_t stride_bytes = 0;
};

struct RowsView {
  void* data = nullptr;
  size_t num_rows = 0;
  size_t stride_bytes = 0;
};

struct RowCopy {
  uint32_t src_row;
  uint32_t dst_row;
};

}  // namespace sparse_mlp::gather

#endif  // SPARSE_MLP_GATHER_ROW_TYPES_H_
