// diff/score_select.h: top-k and threshold masks against a sort-based
// reference (ties to the lower index), for float32 and bfloat16 scores,
// single rows and unions of rows, and every error class (mask unchanged).
#include "diff/score_select.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "gtest/gtest.h"

namespace sparse_mlp::diff {
namespace {

uint16_t ToBf16(float f) {  // truncation: the scores are exact in bfloat16 below
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

// The reference: per row, indices sorted by (score desc, index asc), the
// first k; the union over rows.
std::vector<bool> ReferenceTopK(const std::vector<float>& s, size_t rows, size_t cols,
                                size_t k) {
  std::vector<bool> out(cols, false);
  for (size_t r = 0; r < rows; ++r) {
    std::vector<size_t> order(cols);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      const float va = s[r * cols + a], vb = s[r * cols + b];
      return va != vb ? va > vb : a < b;
    });
    for (size_t j = 0; j < k; ++j) out[order[j]] = true;
  }
  return out;
}

std::string Diff(const NeuronMask& mask, const std::vector<bool>& want) {
  for (size_t c = 0; c < want.size(); ++c) {
    if (mask.Test(c) != want[c]) {
      return absl::StrFormat("neuron %u: got %d, expected %d", c, mask.Test(c), want[c]);
    }
  }
  return "";
}

TEST(ScoreSelectTest, TopKMatchesTheSortWithTiesToTheLowerIndex) {
  std::mt19937_64 rng(5);
  ScoreSelector selector;
  for (int trial = 0; trial < 200; ++trial) {
    const size_t cols = 1 + rng() % 300, rows = 1 + rng() % 3;
    // Many ties, or few; multiples of 1/8 below 32 are exact in bfloat16.
    const int levels = trial % 3 == 0 ? 4 : 500;
    std::vector<float> s(rows * cols);
    for (float& v : s) v = static_cast<float>(static_cast<int>(rng() % levels) - levels / 2) / 8;
    if (trial % 7 == 0) s[0] = -0.0f;  // equal to +0.0
    const size_t k = trial % 5 == 0 ? cols : rng() % (cols + 1);
    NeuronMask mask(cols);
    for (ScoreType type : {ScoreType::kFloat32, ScoreType::kBFloat16}) {
      std::vector<uint16_t> bf(s.size());
      for (size_t j = 0; j < s.size(); ++j) bf[j] = ToBf16(s[j]);
      const ScoreMatrix m{type == ScoreType::kFloat32 ? static_cast<const void*>(s.data())
                                                      : static_cast<const void*>(bf.data()),
                          rows, cols, type};
      ASSERT_TRUE(selector.TopK(m, k, &mask).ok());
      ASSERT_EQ(Diff(mask, ReferenceTopK(s, rows, cols, k)), "")
          << "trial " << trial << " rows " << rows << " cols " << cols << " k " << k;
      if (rows == 1) {
        ASSERT_EQ(mask.CountActive(), k);
      }
    }
  }
}

TEST(ScoreSelectTest, ThresholdIsStrictAndUnitesRows) {
  const std::vector<float> s = {0.5f, 1.0f, -2.0f, 0.7f,   // row 0
                                0.2f, 0.5f, 3.0f, -1.0f};  // row 1
  ScoreSelector selector;
  NeuronMask mask(4);
  ASSERT_TRUE(selector.Threshold({s.data(), 1, 4}, 0.5f, &mask).ok());
  EXPECT_EQ(mask.ToIndices(), (std::vector<uint32_t>{1, 3}));
  ASSERT_TRUE(selector.Threshold({s.data(), 2, 4}, 0.5f, &mask).ok());
  EXPECT_EQ(mask.ToIndices(), (std::vector<uint32_t>{1, 2, 3}));
  ASSERT_TRUE(selector.TopK({s.data(), 2, 4}, 1, &mask).ok());
  EXPECT_EQ(mask.ToIndices(), (std::vector<uint32_t>{1, 2}));
}

TEST(ScoreSelectErrorTest, BadShapeKAndNaNLeaveTheMaskUnchanged) {
  std::vector<float> s = {1, 2, 3, 4};
  ScoreSelector selector;
  NeuronMask mask = *NeuronMask::FromIndices(4, {0, 2});
  const NeuronMask before = mask;
  auto expect = [&](absl::Status st, const char* needle) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(std::string(st.message()).find(needle), std::string::npos) << st.message();
    EXPECT_TRUE(mask == before);
  };
  expect(selector.TopK({s.data(), 1, 4}, 5, &mask), "k = 5 exceeds the 4 neurons");
  expect(selector.TopK({s.data(), 1, 3}, 1, &mask), "scores have 3 columns, the mask has 4");
  expect(selector.TopK({s.data(), 0, 4}, 1, &mask), "scores have 0 rows");
  expect(selector.TopK({nullptr, 1, 4}, 1, &mask), "scores are null");
  s[2] = NAN;
  expect(selector.TopK({s.data(), 1, 4}, 1, &mask), "score of neuron 2 in row 0 is NaN");
  expect(selector.Threshold({s.data(), 1, 4}, 0.0f, &mask), "is NaN");
  s[2] = 3;
  expect(selector.Threshold({s.data(), 1, 4}, NAN, &mask), "threshold is NaN");
}

}  // namespace
}  // namespace sparse_mlp::diff
