// NeuronMask: which of a layer's neurons are active, as a packed bitset.
//
// Callers hold masks in three forms; all convert to and from this one:
//   - bytes: one byte per neuron, any non-zero byte is active (a bool or
//     uint8 tensor, a predictor's thresholded output);
//   - words: a packed bitset of 64-bit words, neuron i = bit i % 64 of word
//     i / 64 (the form diffs are computed on);
//   - indices: the sorted, duplicate-free list of active neurons (uint32).
// A `[tokens, I]` byte matrix converts to the union over its rows (a batch
// of tokens needs every neuron any of them uses).
//
// Assign* replace the contents of a mask of a given size, reusing its
// storage: on the hot path nothing allocates. They validate before they
// write: on error the mask is unchanged and the Status names the bad value.
//
// Thread-compatible: const methods may run concurrently; mutation needs
// exclusive access. Conversions are O(I / 64) words + O(active) indices
// (byte packing O(I) bytes), SIMD per the SimdLevel argument.
#ifndef SPARSE_MLP_DIFF_NEURON_MASK_H_
#define SPARSE_MLP_DIFF_NEURON_MASK_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "platform/simd_level.h"

namespace sparse_mlp::diff {

class NeuronMask {
 public:
  // Neuron indices are uint32; masks of more neurons are refused.
  static constexpr size_t kMaxNeurons = size_t{1} << 31;

  // An empty mask of zero neurons.
  NeuronMask() = default;

  // num_neurons neurons, all inactive. Precondition: num_neurons <=
  // kMaxNeurons (use Create for caller-supplied sizes).
  explicit NeuronMask(size_t num_neurons);

  // As the constructor, but an InvalidArgument error for num_neurons >
  // kMaxNeurons.
  static absl::StatusOr<NeuronMask> Create(size_t num_neurons);

  // New masks sized by their input (bytes.size(), num_neurons).
  static absl::StatusOr<NeuronMask> FromBytes(
      absl::Span<const uint8_t> bytes, SimdLevel level = SimdLevel::kBest);
  static absl::StatusOr<NeuronMask> FromIndices(
      size_t num_neurons, absl::Span<const uint32_t> sorted_indices);
  static absl::StatusOr<NeuronMask> FromWords(size_t num_neurons,
                                              absl::Span<const uint64_t> words);

  // Replace the contents; the input must describe size() neurons.
  // Errors (InvalidArgument, mask unchanged): bytes.size() != size();
  // an index >= size(), or indices not strictly increasing (unsorted or
  // duplicated; the message names the position and values); words.size() !=
  // WordsForNeurons(size()) or a bit set past the last neuron; a byte matrix
  // whose size is not rows * size(), or of zero rows (a batch of no tokens
  // is taken for an upstream slicing mistake, not for the empty mask);
  // rows * size() overflowing a size_t is OutOfRange.
  absl::Status AssignBytes(absl::Span<const uint8_t> bytes,
                           SimdLevel level = SimdLevel::kBest);
  absl::Status AssignIndices(absl::Span<const uint32_t> sorted_indices);
  absl::Status AssignWords(absl::Span<const uint64_t> words);
  absl::Status AssignByteRowsUnion(absl::Span<const uint8_t> matrix,
                                   size_t rows,
                                   SimdLevel level = SimdLevel::kBest);

  // this |= other. InvalidArgument (unchanged) when sizes differ.
  absl::Status UnionWith(const NeuronMask& other);

  size_t size() const { return num_neurons_; }
  absl::Span<const uint64_t> words() const { return words_; }

  // Precondition: neuron < size().
  bool Test(size_t neuron) const {
    return (words_[neuron / 64] >> (neuron % 64)) & 1;
  }
  void Set(size_t neuron, bool active);
  void Clear();

  size_t CountActive(SimdLevel level = SimdLevel::kBest) const;

  // The active neurons, ascending. Resizes *out (no allocation when its
  // capacity suffices).
  void ToIndices(std::vector<uint32_t>* out,
                 SimdLevel level = SimdLevel::kBest) const;
  std::vector<uint32_t> ToIndices(SimdLevel level = SimdLevel::kBest) const;

  // One byte (0 or 1) per neuron. Precondition: out.size() == size().
  void ToBytes(absl::Span<uint8_t> out) const;

  friend bool operator==(const NeuronMask& a, const NeuronMask& b) {
    return a.num_neurons_ == b.num_neurons_ && a.words_ == b.words_;
  }
  friend bool operator!=(const NeuronMask& a, const NeuronMask& b) {
    return !(a == b);
  }

 private:
  size_t num_neurons_ = 0;
  std::vector<uint64_t> words_;
};

// InvalidArgument unless every index is < num_neurons and the list is
// strictly increasing; the message names the first offending position.
absl::Status ValidateSortedIndices(size_t num_neurons,
                                   absl::Span<const uint32_t> indices);

}  // namespace sparse_mlp::diff

#endif  // SPARSE_MLP_DIFF_NEURON_MASK_H_
