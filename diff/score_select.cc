#include "diff/score_select.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "absl/strings/str_format.h"
#include "memory/size_math.h"

namespace sparse_mlp::diff {
namespace {

float ScoreAt(const ScoreMatrix& s, size_t row, size_t col) {
  const size_t i = row * s.cols + col;
  if (s.type == ScoreType::kBFloat16) {
    const uint32_t bits = uint32_t{static_cast<const uint16_t*>(s.data)[i]} << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  return static_cast<const float*>(s.data)[i];
}

// A key per (score, index), all distinct: a larger key is a higher score,
// or the same score at a lower index. -0.0 counts as +0.0.
uint64_t Key(float score, size_t index) {
  uint32_t u;
  if (score == 0.0f) score = 0.0f;
  std::memcpy(&u, &score, sizeof(u));
  const uint32_t ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (uint64_t{ordered} << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(index));
}

}  // namespace

void ScoreSelector::Reserve(size_t cols) {
  keys_.reserve(cols);
  words_.reserve(memory::WordsForBits(cols));
}

absl::Status ScoreSelector::Validate(const ScoreMatrix& s, const NeuronMask& out) const {
  if (s.rows == 0) return absl::InvalidArgumentError("scores have 0 rows (no tokens)");
  if (s.cols != out.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "scores have %u columns, the mask has %u neurons", s.cols, out.size()));
  }
  if (s.data == nullptr && s.cols != 0) return absl::InvalidArgumentError("scores are null");
  if (absl::StatusOr<size_t> n = memory::CheckedMul(s.rows, s.cols); !n.ok()) {
    return n.status();
  }
  for (size_t r = 0; r < s.rows; ++r) {
    for (size_t c = 0; c < s.cols; ++c) {
      const float v = ScoreAt(s, r, c);
      if (v != v) {
        return absl::InvalidArgumentError(
            absl::StrFormat("score of neuron %u in row %u is NaN", c, r));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ScoreSelector::TopK(const ScoreMatrix& s, size_t k, NeuronMask* out) {
  if (absl::Status st = Validate(s, *out); !st.ok()) return st;
  if (k > s.cols) {
    return absl::InvalidArgumentError(
        absl::StrFormat("k = %u exceeds the %u neurons", k, s.cols));
  }
  words_.assign(memory::WordsForBits(s.cols), 0);
  if (k > 0) {
    for (size_t r = 0; r < s.rows; ++r) {
      keys_.resize(s.cols);
      for (size_t c = 0; c < s.cols; ++c) keys_[c] = Key(ScoreAt(s, r, c), c);
      std::nth_element(keys_.begin(), keys_.begin() + static_cast<ptrdiff_t>(k - 1),
                       keys_.end(), std::greater<uint64_t>());
      const uint64_t kth = keys_[k - 1];  // exactly k keys are >= kth (keys are distinct)
      for (size_t c = 0; c < s.cols; ++c) {
        if (Key(ScoreAt(s, r, c), c) >= kth) words_[c / 64] |= uint64_t{1} << (c % 64);
      }
    }
  }
  return out->AssignWords(words_);
}

absl::Status ScoreSelector::Threshold(const ScoreMatrix& s, float threshold,
                                      NeuronMask* out) {
  if (threshold != threshold) return absl::InvalidArgumentError("threshold is NaN");
  if (absl::Status st = Validate(s, *out); !st.ok()) return st;
  words_.assign(memory::WordsForBits(s.cols), 0);
  for (size_t r = 0; r < s.rows; ++r) {
    for (size_t c = 0; c < s.cols; ++c) {
      if (ScoreAt(s, r, c) > threshold) words_[c / 64] |= uint64_t{1} << (c % 64);
    }
  }
  return out->AssignWords(words_);
}

}  // namespace sparse_mlp::diff
