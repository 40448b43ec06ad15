// MaskInput: one argument for every form in which a cache update can be
// given its mask (a NeuronMask, bytes, sorted indices, a [rows, I] byte
// matrix, or a predictor's scores with a top-k or threshold rule).
//
// A MaskInput is a view: it holds pointers to the caller's data and copies
// nothing, so that data must stay alive and unchanged for the call it is
// passed to. Cheap to copy; thread-compatible.
#ifndef SPARSE_MLP_CACHE_MASK_INPUT_H_
#define SPARSE_MLP_CACHE_MASK_INPUT_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "diff/neuron_mask.h"
#include "diff/score_select.h"
#include "platform/simd_level.h"

namespace sparse_mlp::cache {

class MaskInput {
 public:
  enum class Form { kMask, kBytes, kIndices, kByteRows, kTopK, kThreshold };

  // A NeuronMask (implicit, so cache.Update(mask) reads as it always has).
  MaskInput(const diff::NeuronMask& mask)  // NOLINT(google-explicit-constructor)
      : form_(Form::kMask), mask_(&mask) {}
  // One byte per neuron, non-zero = active (diff/neuron_mask.h).
  static MaskInput Bytes(absl::Span<const uint8_t> mask);
  // Active neurons, strictly ascending.
  static MaskInput Indices(absl::Span<const uint32_t> sorted_indices);
  // The union of a [rows, I] byte matrix (a batch of tokens); one row is
  // read as Bytes (and an error names it as a plain mask).
  static MaskInput ByteRows(absl::Span<const uint8_t> matrix, size_t rows);
  // Each row's k highest scores (ties to the lower index), or the scores
  // above `threshold`, the union over the rows (diff/score_select.h).
  static MaskInput TopK(const diff::ScoreMatrix& scores, size_t k);
  static MaskInput Threshold(const diff::ScoreMatrix& scores, float threshold);

  Form form() const { return form_; }

  // Writes the mask of `neurons` neurons this input describes into *out
  // (resized to `neurons`), using *selector's scratch for scores. O(I) for
  // the mask forms, O(rows x I) for scores; allocates only where *out or
  // *selector were never sized for `neurons`. Errors (InvalidArgument,
  // naming the value): a length, index, order or shape that does not match
  // `neurons`, k > I, a NaN threshold or score. *out is unspecified after
  // an error (callers write into scratch).
  absl::Status Materialize(size_t neurons, SimdLevel simd, diff::ScoreSelector* selector,
                           diff::NeuronMask* out) const;

 private:
  explicit MaskInput(Form form) : form_(form) {}

  Form form_;
  const diff::NeuronMask* mask_ = nullptr;  // kMask
  absl::Span<const uint8_t> bytes_;         // kBytes, kByteRows
  absl::Span<const uint32_t> indices_;      // kIndices
  size_t rows_ = 0;                         // kByteRows
  diff::ScoreMatrix scores_;                // kTopK, kThreshold
  size_t k_ = 0;                            // kTopK
  float threshold_ = 0.0f;                  // kThreshold
};

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_MASK_INPUT_H_
