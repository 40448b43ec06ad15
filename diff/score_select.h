// Masks from predictor scores: exact top-k and threshold, written straight
// into a NeuronMask (no byte or bool round trip).
//
// A predictor scores each of the I neurons (per token: a [T, I] matrix);
// the mask is
//   TopK:      each row's k highest scores; ties broken by the lower neuron
//              index (deterministic, whatever the order of equal scores);
//              -0.0 and +0.0 are equal;
//   Threshold: the scores strictly greater than the threshold;
// and for T > 1 rows the union over the rows (the neurons any token needs).
// Scores are float32 or bfloat16. NaN scores are refused (InvalidArgument
// naming the row and the neuron): a NaN has no place in an order.
//
// Complexity: O(T x I) for both (TopK: a radix selection of the k-th
// score per row, four counting passes, no sort). Allocation: none once the
// selector is reserved for I scores (the cache reserves its own). Errors
// (InvalidArgument unless noted): null scores, 0 rows, a row length other
// than the mask's size, k > I, a NaN score or threshold; *out is unchanged
// after any error. Thread-compatible (the selector holds scratch).
#ifndef SPARSE_MLP_DIFF_SCORE_SELECT_H_
#define SPARSE_MLP_DIFF_SCORE_SELECT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "diff/neuron_mask.h"

namespace sparse_mlp::diff {

enum class ScoreType { kFloat32, kBFloat16 };

// [rows, cols] scores, row-major and contiguous.
struct ScoreMatrix {
  const void* data = nullptr;
  size_t rows = 1;
  size_t cols = 0;
  ScoreType type = ScoreType::kFloat32;
};

class ScoreSelector {
 public:
  ScoreSelector() = default;

  // Sizes the scratch for rows of up to `cols` scores (calls then do not
  // allocate).
  void Reserve(size_t cols);

  absl::Status TopK(const ScoreMatrix& scores, size_t k, NeuronMask* out);
  // Bytes of scratch held.
  size_t bytes() const {
    return keys_.capacity() * sizeof(uint32_t) + words_.capacity() * sizeof(uint64_t);
  }
  absl::Status Threshold(const ScoreMatrix& scores, float threshold, NeuronMask* out);

 private:
  absl::Status Validate(const ScoreMatrix& scores, const NeuronMask& out) const;

  std::vector<uint32_t> keys_;   // per neuron: its score as an ordered key
  std::vector<uint64_t> words_;  // the mask being built
};

}  // namespace sparse_mlp::diff

#endif  // SPARSE_MLP_DIFF_SCORE_SELECT_H_
