#include "cache/mask_input.h"

#include "absl/strings/str_format.h"

namespace sparse_mlp::cache {

MaskInput MaskInput::Bytes(absl::Span<const uint8_t> mask) {
  MaskInput in(Form::kBytes);
  in.bytes_ = mask;
  return in;
}

MaskInput MaskInput::Indices(absl::Span<const uint32_t> sorted_indices) {
  MaskInput in(Form::kIndices);
  in.indices_ = sorted_indices;
  return in;
}

MaskInput MaskInput::ByteRows(absl::Span<const uint8_t> matrix, size_t rows) {
  MaskInput in(Form::kByteRows);
  in.bytes_ = matrix;
  in.rows_ = rows;
  return in;
}

MaskInput MaskInput::TopK(const diff::ScoreMatrix& scores, size_t k) {
  MaskInput in(Form::kTopK);
  in.scores_ = scores;
  in.k_ = k;
  return in;
}

MaskInput MaskInput::Threshold(const diff::ScoreMatrix& scores, float threshold) {
  MaskInput in(Form::kThreshold);
  in.scores_ = scores;
  in.threshold_ = threshold;
  return in;
}

absl::Status MaskInput::Materialize(size_t neurons, SimdLevel simd, diff::ScoreSelector* selector,
                                    diff::NeuronMask* out) const {
  if (out->size() != neurons) *out = diff::NeuronMask(neurons);
  switch (form_) {
    case Form::kMask:
      if (mask_->size() != neurons) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "mask has %u neurons, the cache has intermediate_size %u", mask_->size(), neurons));
      }
      return out->AssignWords(mask_->words());
    case Form::kBytes:
      return out->AssignBytes(bytes_, simd);
    case Form::kIndices:
      return out->AssignIndices(indices_);
    case Form::kByteRows:
      return rows_ == 1 ? out->AssignBytes(bytes_, simd)
                        : out->AssignByteRowsUnion(bytes_, rows_, simd);
    case Form::kTopK:
      return selector->TopK(scores_, k_, out);
    case Form::kThreshold:
      return selector->Threshold(scores_, threshold_, out);
  }
  return absl::InternalError("unknown mask form");
}

}  // namespace sparse_mlp::cache
