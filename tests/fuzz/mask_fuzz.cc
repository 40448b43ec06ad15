// Fuzz target: every way a caller's mask becomes a NeuronMask (bytes, sorted
// indices, packed words, a [tokens, I] byte matrix), then a diff against the
// previous mask, at every SIMD level, against plain loops. Malformed inputs
// (wrong lengths, unsorted / duplicated / out-of-range indices, bits past
// the last neuron, zero rows) must be refused with InvalidArgument and leave
// the mask unchanged.
//
// Input: a stream of commands (tests/fuzz/fuzz_util.h): the neuron count,
// then per command a form byte and its payload.
#include <cstdint>
#include <vector>

#include "diff/mask_diff.h"
#include "diff/neuron_mask.h"
#include "platform/simd_level.h"
#include "tests/fuzz/fuzz_util.h"

namespace sparse_mlp::fuzz {
namespace {

using diff::NeuronMask;

// The reference: one bool per neuron.
using Bits = std::vector<bool>;

void ExpectEqual(const NeuronMask& mask, const Bits& bits, const char* what) {
  FUZZ_CHECK(mask.size() == bits.size(), "%s: size %zu, expected %zu", what, mask.size(),
             bits.size());
  std::vector<uint32_t> expected;
  for (size_t k = 0; k < bits.size(); ++k) {
    FUZZ_CHECK(mask.Test(k) == bits[k], "%s: neuron %zu", what, k);
    if (bits[k]) expected.push_back(static_cast<uint32_t>(k));
  }
  for (SimdLevel level : SupportedSimdLevels()) {
    FUZZ_CHECK(mask.ToIndices(level) == expected, "%s: ToIndices at %s", what,
               SimdLevelName(level));
    FUZZ_CHECK(mask.CountActive(level) == expected.size(), "%s: CountActive at %s", what,
               SimdLevelName(level));
  }
  std::vector<uint8_t> bytes(bits.size());
  mask.ToBytes(absl::MakeSpan(bytes));
  for (size_t k = 0; k < bits.size(); ++k) FUZZ_CHECK(bytes[k] == bits[k], "%s: ToBytes", what);
  // Round trips through the other forms.
  FUZZ_CHECK(*NeuronMask::FromIndices(bits.size(), expected) == mask, "%s: indices", what);
  FUZZ_CHECK(*NeuronMask::FromWords(bits.size(), mask.words()) == mask, "%s: words", what);
}

void Run(FuzzInput& in) {
  const size_t n = in.Below(700);  // 0 neurons included
  NeuronMask mask(n);
  Bits bits(n, false);
  for (int command = 0; command < 32 && !in.empty(); ++command) {
    const NeuronMask before = mask;
    const Bits before_bits = bits;
    const uint8_t form = in.Byte() % 4;
    // Lengths a little off now and then, to reach the length checks.
    auto length = [&](size_t exact) {
      const uint8_t r = in.Byte();
      if (r < 240) return exact;
      return r % 2 ? exact + 1 : (exact > 0 ? exact - 1 : exact + 2);
    };
    absl::Status status;
    bool valid = true;
    Bits next(n, false);
    const SimdLevel level = SupportedSimdLevels()[in.Byte() % SupportedSimdLevels().size()];
    switch (form) {
      case 0: {  // bytes, any values (non-zero is active)
        std::vector<uint8_t> bytes(length(n));
        for (auto& b : bytes) b = in.Byte() % 4 == 0 ? in.Byte() : 0;
        valid = bytes.size() == n;
        for (size_t k = 0; valid && k < n; ++k) next[k] = bytes[k] != 0;
        status = mask.AssignBytes(bytes, level);
        break;
      }
      case 1: {  // indices, mostly sorted
        std::vector<uint32_t> indices(in.Below(64));
        uint32_t at = 0;
        for (auto& index : indices) {
          at += in.Byte() % 8;  // steps of 0 are duplicates
          index = in.Byte() < 8 ? static_cast<uint32_t>(in.U16()) : at;
        }
        for (size_t k = 0; k < indices.size(); ++k) {
          if (indices[k] >= n || (k > 0 && indices[k] <= indices[k - 1])) valid = false;
        }
        for (size_t k = 0; valid && k < indices.size(); ++k) next[indices[k]] = true;
        status = mask.AssignIndices(indices);
        break;
      }
      case 2: {  // words, sometimes with bits past the last neuron
        std::vector<uint64_t> words(length((n + 63) / 64));
        for (auto& w : words) {
          for (int b = 0; b < 8; ++b) w |= uint64_t{in.Byte()} << (8 * b);
        }
        valid = words.size() == (n + 63) / 64;
        for (size_t k = 0; valid && k < words.size() * 64; ++k) {
          const bool bit = (words[k / 64] >> (k % 64)) & 1;
          if (k >= n && bit) valid = false;
          if (k < n) next[k] = bit;
        }
        status = mask.AssignWords(words);
        break;
      }
      default: {  // a [rows, n] byte matrix: the union of its rows
        const size_t rows = in.Byte() % 5;  // 0 rows is refused
        std::vector<uint8_t> matrix(length(rows * n));
        for (auto& b : matrix) b = in.Byte() % 8 == 0;
        valid = rows > 0 && matrix.size() == rows * n;
        for (size_t k = 0; valid && k < matrix.size(); ++k) {
          if (matrix[k]) next[k % n] = true;
        }
        status = mask.AssignByteRowsUnion(matrix, rows, level);
        break;
      }
    }
    if (!valid) {
      FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument,
                 "form %d: malformed input not refused: %s", form, status.ToString().c_str());
      FUZZ_CHECK(mask == before, "form %d: a refused input changed the mask", form);
      continue;
    }
    FUZZ_CHECK(status.ok(), "form %d: valid input refused: %s", form, status.ToString().c_str());
    bits = next;
    ExpectEqual(mask, bits, "after assignment");
    // The diff from the previous mask, serial and parallel.
    std::vector<uint32_t> added, removed;
    for (size_t k = 0; k < n; ++k) {
      if (bits[k] && !before_bits[k]) added.push_back(static_cast<uint32_t>(k));
      if (!bits[k] && before_bits[k]) removed.push_back(static_cast<uint32_t>(k));
    }
    for (int threads : {1, 2}) {
      diff::MaskDiff d;
      diff::DiffOptions options;
      options.num_threads = threads;
      options.simd = level;
      options.min_words_per_thread = 1;
      FUZZ_CHECK(diff::ComputeMaskDiff(before, mask, &d, options).ok(), "diff failed");
      FUZZ_CHECK(d.added == added && d.removed == removed, "diff at %s, %d threads",
                 SimdLevelName(level), threads);
    }
  }
}

}  // namespace
}  // namespace sparse_mlp::fuzz

SPARSE_MLP_FUZZ_TARGET(sparse_mlp::fuzz::Run)
