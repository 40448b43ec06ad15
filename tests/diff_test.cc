// diff/: every SIMD level and thread count against plain-loop references on
// thousands of random masks (fixed seeds; failures print the case), plus one
// test per bad-input class.
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "diff/mask_diff.h"
#include "diff/mask_kernels.h"
#include "diff/neuron_mask.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "platform/simd_level.h"
#include "platform/threads.h"

namespace sparse_mlp::diff {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Random byte mask: each neuron active with probability `density`; active
// bytes take random non-zero values (any non-zero byte means active).
std::vector<uint8_t> RandomBytes(std::mt19937_64& rng, size_t n, double density) {
  std::bernoulli_distribution active(density);
  std::vector<uint8_t> bytes(n);
  for (auto& b : bytes) b = active(rng) ? static_cast<uint8_t>(1 + rng() % 255) : 0;
  return bytes;
}

double RandomDensity(std::mt19937_64& rng) {
  static constexpr double kDensities[] = {0.0, 0.01, 0.1, 0.3, 0.5, 0.9, 1.0};
  return kDensities[rng() % 7];
}

size_t RandomSize(std::mt19937_64& rng) {
  static constexpr size_t kEdges[] = {0, 1, 7, 63, 64, 65, 127, 128, 129, 511, 8192, 14336 + 5};
  return rng() % 3 == 0 ? kEdges[rng() % 12] : rng() % 1100;
}

// References: one neuron at a time, straight from the definition.
std::vector<uint32_t> ReferenceIndices(const std::vector<uint8_t>& bytes) {
  std::vector<uint32_t> indices;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (bytes[i] != 0) indices.push_back(static_cast<uint32_t>(i));
  }
  return indices;
}

std::string Describe(const std::vector<uint8_t>& bytes) {
  std::string s;
  for (uint8_t b : bytes) s += b ? '1' : '0';
  return s;
}

TEST(MaskKernelsTest, PackAndExtractMatchReferenceAtEverySimdLevel) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t n = RandomSize(rng);
    const std::vector<uint8_t> bytes = RandomBytes(rng, n, RandomDensity(rng));
    const std::vector<uint32_t> expected = ReferenceIndices(bytes);
    for (SimdLevel level : SupportedSimdLevels()) {
      SCOPED_TRACE(absl::StrFormat("trial %d, n=%d, level %s, mask %s", trial, n,
                                   SimdLevelName(level),
                                   n <= 200 ? Describe(bytes) : "(long)"));
      std::vector<uint64_t> words(WordsForNeurons(n) + 1, 0xDEADBEEF);
      PackBytes(bytes.data(), n, words.data(), level);
      ASSERT_EQ(words.back(), 0xDEADBEEFu) << "wrote past the last word";
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ((words[i / 64] >> (i % 64)) & 1, bytes[i] != 0) << "neuron " << i;
      }
      if (n % 64 != 0) {
        ASSERT_EQ(words[n / 64] >> (n % 64), 0u) << "bits past the end";
      }
      const size_t num_words = WordsForNeurons(n);
      ASSERT_EQ(CountSetBits(words.data(), num_words, level), expected.size());
      std::vector<uint32_t> indices(expected.size() + 1, 0xFFFFFFFF);
      const size_t count =
          ExtractAndNotBits(words.data(), nullptr, num_words, 0, indices.data(), level);
      ASSERT_EQ(count, expected.size());
      ASSERT_EQ(indices.back(), 0xFFFFFFFFu) << "wrote past the output";
      indices.pop_back();
      ASSERT_EQ(indices, expected);
    }
  }
}

TEST(MaskKernelsTest, UnionAndXorCountMatchReferenceAtEverySimdLevel) {
  std::mt19937_64 rng(2);
  for (int trial = 0; trial < 1000; ++trial) {
    const size_t n = RandomSize(rng);
    const size_t rows = rng() % 5;
    std::vector<uint8_t> matrix;
    std::vector<uint8_t> reference_union(n, 0);
    for (size_t r = 0; r < rows; ++r) {
      std::vector<uint8_t> row = RandomBytes(rng, n, RandomDensity(rng) * 0.3);
      for (size_t i = 0; i < n; ++i) reference_union[i] |= row[i] != 0;
      matrix.insert(matrix.end(), row.begin(), row.end());
    }
    const std::vector<uint8_t> other = RandomBytes(rng, n, RandomDensity(rng));
    size_t reference_changes = 0;
    for (size_t i = 0; i < n; ++i) {
      reference_changes += (reference_union[i] != 0) != (other[i] != 0);
    }
    for (SimdLevel level : SupportedSimdLevels()) {
      SCOPED_TRACE(absl::StrFormat("trial %d, n=%d, rows=%d, level %s", trial, n,
                                   rows, SimdLevelName(level)));
      std::vector<uint64_t> unioned(WordsForNeurons(n));
      std::vector<uint64_t> packed_other(WordsForNeurons(n));
      PackBytesUnion(matrix.data(), rows, n, unioned.data(), level);
      PackBytes(other.data(), n, packed_other.data(), level);
      for (size_t i = 0; i < n; ++i) {
        ASSERT_EQ((unioned[i / 64] >> (i % 64)) & 1, reference_union[i]) << "neuron " << i;
      }
      ASSERT_EQ(CountDifferentBits(unioned.data(), packed_other.data(),
                                   unioned.size(), level),
                reference_changes);
    }
  }
}

TEST(MaskDiffTest, MatchesReferenceForEveryLevelAndThreadCount) {
  std::mt19937_64 rng(3);
  MaskDiff diff;  // reused: exercises the no-allocation path
  for (int trial = 0; trial < 2000; ++trial) {
    const size_t n = RandomSize(rng);
    const std::vector<uint8_t> before_bytes = RandomBytes(rng, n, RandomDensity(rng));
    std::vector<uint8_t> after_bytes = before_bytes;
    // Flip a random fraction (0 = identical masks, 1 = complement).
    const double churn = RandomDensity(rng);
    std::bernoulli_distribution flip(churn);
    for (auto& b : after_bytes) {
      if (flip(rng)) b = b ? 0 : 1;
    }
    std::vector<uint32_t> expected_added, expected_removed;
    for (size_t i = 0; i < n; ++i) {
      const bool was = before_bytes[i] != 0, is = after_bytes[i] != 0;
      if (is && !was) expected_added.push_back(static_cast<uint32_t>(i));
      if (was && !is) expected_removed.push_back(static_cast<uint32_t>(i));
    }
    const NeuronMask before = *NeuronMask::FromBytes(before_bytes);
    const NeuronMask after = *NeuronMask::FromBytes(after_bytes);
    for (SimdLevel level : SupportedSimdLevels()) {
      // 8: more threads than cores (and, in this suite's OMP_THREAD_LIMIT /
      // OMP_DYNAMIC variants, than the runtime starts); every 50th trial,
      // as oversubscribed regions are slow to run.
      for (int threads : {1, 2, 3, 8}) {
        if (threads == 8 && trial % 50 != 0) continue;
        SCOPED_TRACE(absl::StrFormat(
            "trial %d, n=%d, level %s, %d threads\nbefore %s\nafter  %s", trial, n,
            SimdLevelName(level), threads, n <= 200 ? Describe(before_bytes) : "(long)",
            n <= 200 ? Describe(after_bytes) : "(long)"));
        DiffOptions options;
        options.num_threads = threads;
        options.simd = level;
        options.min_words_per_thread = 1;  // force the parallel path
        ASSERT_TRUE(ComputeMaskDiff(before, after, &diff, options).ok());
        ASSERT_EQ(diff.added, expected_added);
        ASSERT_EQ(diff.removed, expected_removed);
        ASSERT_EQ(*CountMaskChanges(before, after, level),
                  expected_added.size() + expected_removed.size());
      }
    }
  }
}

// The features a kernel may need beyond its level are only reported where
// the level itself runs; and the popcounts agree at every level however
// they are dispatched (AVX-512 without VPOPCNTDQ takes the AVX2 ones).
TEST(SimdLevelTest, FeaturesImplyTheirLevelAndPopcountsAgree) {
  if (HasCpuFeature(CpuFeature::kAvx512Vpopcntdq) || HasCpuFeature(CpuFeature::kAvx512Bf16)) {
    EXPECT_TRUE(IsSupported(SimdLevel::kAvx512));
  }
  std::mt19937_64 rng(5);
  std::vector<uint64_t> a(37), b(37);
  for (auto& w : a) w = rng();
  for (auto& w : b) w = rng();
  size_t expected_diff = 0, expected_set = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    expected_diff += static_cast<size_t>(__builtin_popcountll(a[k] ^ b[k]));
    expected_set += static_cast<size_t>(__builtin_popcountll(a[k]));
  }
  for (SimdLevel level : SupportedSimdLevels()) {
    EXPECT_EQ(CountDifferentBits(a.data(), b.data(), a.size(), level), expected_diff)
        << SimdLevelName(level);
    EXPECT_EQ(CountSetBits(a.data(), a.size(), level), expected_set) << SimdLevelName(level);
  }
}

TEST(NeuronMaskTest, FormsRoundTrip) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 500; ++trial) {
    const size_t n = RandomSize(rng);
    const std::vector<uint8_t> bytes = RandomBytes(rng, n, RandomDensity(rng));
    const NeuronMask from_bytes = *NeuronMask::FromBytes(bytes);
    const std::vector<uint32_t> indices = from_bytes.ToIndices();
    ASSERT_EQ(indices, ReferenceIndices(bytes)) << "trial " << trial;
    const NeuronMask from_indices = *NeuronMask::FromIndices(n, indices);
    ASSERT_EQ(from_indices, from_bytes) << "trial " << trial;
    const NeuronMask from_words = *NeuronMask::FromWords(
        n, std::vector<uint64_t>(from_bytes.words().begin(), from_bytes.words().end()));
    ASSERT_EQ(from_words, from_bytes) << "trial " << trial;
    std::vector<uint8_t> back(n);
    from_bytes.ToBytes(absl::MakeSpan(back));
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(back[i], bytes[i] != 0 ? 1 : 0);
    ASSERT_EQ(from_bytes.CountActive(), indices.size());
  }
}

TEST(NeuronMaskTest, SetTestClearAndUnion) {
  NeuronMask a(130), b(130);
  a.Set(0, true);
  a.Set(129, true);
  b.Set(64, true);
  b.Set(129, true);
  ASSERT_TRUE(a.UnionWith(b).ok());
  EXPECT_THAT(a.ToIndices(), ElementsAre(0, 64, 129));
  a.Set(64, false);
  EXPECT_FALSE(a.Test(64));
  a.Clear();
  EXPECT_THAT(a.ToIndices(), IsEmpty());
}

TEST(NeuronMaskTest, ByteRowsUnion) {
  const std::vector<uint8_t> matrix = {1, 0, 0, 0, 0,
                                       0, 0, 2, 0, 0,
                                       0, 0, 0, 0, 9};
  NeuronMask mask(5);
  ASSERT_TRUE(mask.AssignByteRowsUnion(matrix, 3).ok());
  EXPECT_THAT(mask.ToIndices(), ElementsAre(0, 2, 4));
}

// ---- One test per bad-input class: the error names the value, and the
// mask (or diff) is unchanged.

TEST(NeuronMaskErrorTest, ByteLengthMismatch) {
  NeuronMask mask = *NeuronMask::FromIndices(10, {3});
  const absl::Status s = mask.AssignBytes(std::vector<uint8_t>(11, 1));
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("11 entries, expected 10"));
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, IndexOutOfRange) {
  NeuronMask mask = *NeuronMask::FromIndices(10, {3});
  const absl::Status s = mask.AssignIndices({1, 10});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("index 10 at position 1"));
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, UnsortedIndices) {
  NeuronMask mask = *NeuronMask::FromIndices(10, {3});
  const absl::Status s = mask.AssignIndices({5, 2});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("position 1 holds 2 after 5 (unsorted)"));
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, DuplicatedIndices) {
  NeuronMask mask = *NeuronMask::FromIndices(10, {3});
  const absl::Status s = mask.AssignIndices({4, 4});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("(duplicate)"));
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, WordCountMismatchAndBitsPastTheEnd) {
  NeuronMask mask = *NeuronMask::FromIndices(70, {3});
  absl::Status s = mask.AssignWords({1});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("1 words, expected 2"));
  s = mask.AssignWords({1, uint64_t{1} << 6});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("sets neuron 70"));
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, ByteMatrixShapeMismatch) {
  NeuronMask mask = *NeuronMask::FromIndices(4, {3});
  const absl::Status s = mask.AssignByteRowsUnion(std::vector<uint8_t>(9, 1), 2);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("9 entries, expected 2 rows x 4"));
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, ByteMatrixOfZeroRows) {
  NeuronMask mask = *NeuronMask::FromIndices(4, {3});
  const absl::Status s = mask.AssignByteRowsUnion({}, 0);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("at least one token row, got 0 rows"));
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, ByteMatrixSizeOverflow) {
  NeuronMask mask = *NeuronMask::FromIndices(4, {3});
  const absl::Status s = mask.AssignByteRowsUnion({}, ~size_t{0} / 2);
  ASSERT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(mask.ToIndices(), ElementsAre(3));
}

TEST(NeuronMaskErrorTest, TooManyNeurons) {
  const absl::StatusOr<NeuronMask> mask = NeuronMask::Create(NeuronMask::kMaxNeurons + 1);
  ASSERT_EQ(mask.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mask.status().message(), HasSubstr("exceeds the maximum"));
}

TEST(MaskDiffErrorTest, SizeMismatch) {
  MaskDiff diff;
  diff.added = {7};
  const absl::Status s = ComputeMaskDiff(NeuronMask(10), NeuronMask(11), &diff);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("10 and 11"));
  EXPECT_THAT(diff.added, ElementsAre(7));
  EXPECT_FALSE(CountMaskChanges(NeuronMask(10), NeuronMask(11)).ok());
  EXPECT_FALSE(NeuronMask(10).UnionWith(NeuronMask(11)).ok());
}

TEST(MaskDiffErrorTest, ThreadCountOutOfRange) {
  for (int threads : {0, -3, kMaxThreads + 1, 2147483647}) {
    MaskDiff diff;
    diff.added = {7};
    DiffOptions options;
    options.num_threads = threads;
    const absl::Status s = ComputeMaskDiff(NeuronMask(10), NeuronMask(10), &diff, options);
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr(absl::StrFormat(
                                 "num_threads must be in [1, %d], got %d", kMaxThreads,
                                 threads)));
    EXPECT_THAT(diff.added, ElementsAre(7));
  }
}

}  // namespace
}  // namespace sparse_mlp::diff
