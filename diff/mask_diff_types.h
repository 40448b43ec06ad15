// MaskDiff: the neurons that entered and left between two masks, the
// result of ComputeMaskDiff (diff/mask_diff.h). A types-only header, shared
// with the parallel implementation. Plain value type; thread-compatible.
#ifndef SPARSE_MLP_DIFF_MASK_DIFF_TYPES_H_
#define SPARSE_MLP_DIFF_MASK_DIFF_TYPES_H_

#include <cstdint>
#include <vector>

namespace sparse_mlp::diff {

struct MaskDiff {
  std::vector<uint32_t> added;    // active after, not before; ascending
  std::vector<uint32_t> removed;  // active before, not after; ascending
};

}  // namespace sparse_mlp::diff

#endif  // SPARSE_MLP_DIFF_MASK_DIFF_TYPES_H_
