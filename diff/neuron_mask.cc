#include "diff/neuron_mask.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"
#include "diff/mask_kernels.h"
#include "memory/size_math.h"

namespace sparse_mlp::diff {
namespace {

absl::Status CheckNeuronCount(size_t num_neurons) {
  if (num_neurons > NeuronMask::kMaxNeurons) {
    return absl::InvalidArgumentError(
        absl::StrFormat("mask of %u neurons exceeds the maximum of %u",
                        num_neurons, NeuronMask::kMaxNeurons));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSortedIndices(size_t num_neurons,
                                   absl::Span<const uint32_t> indices) {
  for (size_t k = 0; k < indices.size(); ++k) {
    if (indices[k] >= num_neurons) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "neuron index %u at position %u is out of range for a mask of %u "
          "neurons",
          indices[k], k, num_neurons));
    }
    if (k > 0 && indices[k] <= indices[k - 1]) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "neuron indices must be strictly increasing: position %u holds %u "
          "after %u (%s)",
          k, indices[k], indices[k - 1],
          indices[k] == indices[k - 1] ? "duplicate" : "unsorted"));
    }
  }
  return absl::OkStatus();
}

NeuronMask::NeuronMask(size_t num_neurons)
    : num_neurons_(num_neurons), words_(WordsForNeurons(num_neurons), 0) {}

absl::StatusOr<NeuronMask> NeuronMask::Create(size_t num_neurons) {
  if (absl::Status s = CheckNeuronCount(num_neurons); !s.ok()) return s;
  return NeuronMask(num_neurons);
}

absl::StatusOr<NeuronMask> NeuronMask::FromBytes(
    absl::Span<const uint8_t> bytes, SimdLevel level) {
  absl::StatusOr<NeuronMask> mask = Create(bytes.size());
  if (!mask.ok()) return mask.status();
  PackBytes(bytes.data(), bytes.size(), mask->words_.data(), level);
  return mask;
}

absl::StatusOr<NeuronMask> NeuronMask::FromIndices(
    size_t num_neurons, absl::Span<const uint32_t> sorted_indices) {
  absl::StatusOr<NeuronMask> mask = Create(num_neurons);
  if (!mask.ok()) return mask.status();
  if (absl::Status s = mask->AssignIndices(sorted_indices); !s.ok()) return s;
  return mask;
}

absl::StatusOr<NeuronMask> NeuronMask::FromWords(
    size_t num_neurons, absl::Span<const uint64_t> words) {
  absl::StatusOr<NeuronMask> mask = Create(num_neurons);
  if (!mask.ok()) return mask.status();
  if (absl::Status s = mask->AssignWords(words); !s.ok()) return s;
  return mask;
}

absl::Status NeuronMask::AssignBytes(absl::Span<const uint8_t> bytes,
                                     SimdLevel level) {
  if (bytes.size() != num_neurons_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("byte mask has %u entries, expected %u (one per neuron)",
                        bytes.size(), num_neurons_));
  }
  PackBytes(bytes.data(), bytes.size(), words_.data(), level);
  return absl::OkStatus();
}

absl::Status NeuronMask::AssignIndices(
    absl::Span<const uint32_t> sorted_indices) {
  if (absl::Status s = ValidateSortedIndices(num_neurons_, sorted_indices);
      !s.ok()) {
    return s;
  }
  Clear();
  for (uint32_t neuron : sorted_indices) {
    words_[neuron / 64] |= uint64_t{1} << (neuron % 64);
  }
  return absl::OkStatus();
}

absl::Status NeuronMask::AssignWords(absl::Span<const uint64_t> words) {
  if (words.size() != words_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "bitset has %u words, expected %u for %u neurons", words.size(),
        words_.size(), num_neurons_));
  }
  if (num_neurons_ % 64 != 0) {
    const uint64_t past_end = ~uint64_t{0} << (num_neurons_ % 64);
    if ((words.back() & past_end) != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "bitset sets neuron %u, but the mask has %u neurons",
          (words.size() - 1) * 64 +
              static_cast<size_t>(__builtin_ctzll(words.back() & past_end)),
          num_neurons_));
    }
  }
  std::copy(words.begin(), words.end(), words_.begin());
  return absl::OkStatus();
}

absl::Status NeuronMask::AssignByteRowsUnion(absl::Span<const uint8_t> matrix,
                                             size_t rows, SimdLevel level) {
  // A batch of no tokens is refused rather than read as the empty union:
  // it almost always comes from an empty slice upstream, and the empty mask
  // has unambiguous forms of its own.
  if (rows == 0) {
    return absl::InvalidArgumentError(
        "a [tokens, I] byte matrix needs at least one token row, got 0 rows");
  }
  const absl::StatusOr<size_t> expected = memory::CheckedMul(rows, num_neurons_);
  if (!expected.ok()) return expected.status();
  if (matrix.size() != *expected) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "byte matrix has %u entries, expected %u rows x %u neurons",
        matrix.size(), rows, num_neurons_));
  }
  PackBytesUnion(matrix.data(), rows, num_neurons_, words_.data(), level);
  return absl::OkStatus();
}

absl::Status NeuronMask::UnionWith(const NeuronMask& other) {
  if (other.num_neurons_ != num_neurons_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("cannot union a mask of %u neurons into one of %u",
                        other.num_neurons_, num_neurons_));
  }
  for (size_t w = 0; w < words_.size(); ++w) words_[w] |= other.words_[w];
  return absl::OkStatus();
}

void NeuronMask::Set(size_t neuron, bool active) {
  const uint64_t bit = uint64_t{1} << (neuron % 64);
  if (active) {
    words_[neuron / 64] |= bit;
  } else {
    words_[neuron / 64] &= ~bit;
  }
}

void NeuronMask::Clear() { std::fill(words_.begin(), words_.end(), 0); }

size_t NeuronMask::CountActive(SimdLevel level) const {
  return CountSetBits(words_.data(), words_.size(), level);
}

void NeuronMask::ToIndices(std::vector<uint32_t>* out, SimdLevel level) const {
  out->resize(CountActive(level));
  ExtractAndNotBits(words_.data(), nullptr, words_.size(), 0, out->data(),
                    level);
}

std::vector<uint32_t> NeuronMask::ToIndices(SimdLevel level) const {
  std::vector<uint32_t> indices;
  ToIndices(&indices, level);
  return indices;
}

void NeuronMask::ToBytes(absl::Span<uint8_t> out) const {
  for (size_t i = 0; i < num_neurons_; ++i) out[i] = Test(i) ? 1 : 0;
}

}  // namespace sparse_mlp::diff
