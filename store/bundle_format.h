// The neuron-bundle weight file: its layout and header, as pure logic (no
// I/O). store/bundle_writer.h writes such files, store/bundle_reader.h reads
// bundles from them; docs/store_format.md describes the format with reasons.
//
// A file holds, for each of L layers and each of its I neurons, one bundle:
// the neuron's gate row, up row and down column (as a row), H elements each,
// contiguous (gate-less MLPs: up and down only). Loading a neuron is one read
// (LLM in a Flash's row-column bundling). Layout, all offsets in bytes:
//
//   [0, header_bytes)             the header (below), zero-padded
//   layer l: [layer_offset(l), + I x bundle_stride)
//                                  bundle n at layer_offset(l) + n x stride,
//                                  bundle_bytes of payload then zero padding
//   [checksum_offset, + L x I x 8) XXH3-64 of each bundle's payload, layer-major
//   file_bytes                     the end; the file's size must equal it
//
// bundle_stride is bundle_bytes rounded up to `alignment` (a power of two,
// >= 512, the logical block size O_DIRECT needs); layer offsets and the
// checksum table are aligned too, so every bundle and every run of adjacent
// bundles can be read with O_DIRECT into aligned memory.
//
// Header (little-endian; kFixedHeaderBytes fixed, then per-layer offsets):
//     0  8  magic "SPMLBNDL"          64  8  bundle_bytes
//     8  4  version (kFormatVersion)   72  8  bundle_stride
//    12  4  dtype (0 f32, 1 bf16,      80  8  checksum_offset
//             2 f16, 3 int8, 4 q4)     88  8  file_bytes
//    16  4  flags (bit 0: gated)       96  8  header_bytes
//    20  4  alignment                 104  4  quant_group (int8 / q4: weights
//    24  8  hidden (H)                         per scale; else 0)
//                                     108 20  reserved, zero
//    32  8  intermediate (I, here)    128  8L layer offsets
//    40  8  layers (L)           128 + 8L  8  XXH3-64 of bytes [0, 128 + 8L)
//    48  8  neuron_begin: the model neuron of this file's neuron 0
//    56  8  model_intermediate: neurons per layer in the whole model
// (neuron_begin / model_intermediate let a file hold one slice of a model's
// neurons; a whole model has 0 and I.)
// Quantized files (dtype 3 / 4, version 2) hold each row as one quantized
// row of quant/format.h (quants, then float16 scales: the scales are inside
// the bundle and its checksum); a row of a down column is that neuron's
// column quantized along H. Version 1 files (float types only, no
// quant_group) read as before.
//
// Thread-compatible value type; no allocation except the layer-offset
// vector; O(L) per decode/encode.
#ifndef SPARSE_MLP_STORE_BUNDLE_FORMAT_H_
#define SPARSE_MLP_STORE_BUNDLE_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "platform/dtype.h"
#include "quant/format.h"

namespace sparse_mlp::store {

inline constexpr char kMagic[8] = {'S', 'P', 'M', 'L', 'B', 'N', 'D', 'L'};
// The newest version, read along with 1. Quantized files are written as
// version 2, float files as version 1 (readable by older libraries).
inline constexpr uint32_t kFormatVersion = 2;
inline constexpr size_t kFixedHeaderBytes = 128;
inline constexpr size_t kMinAlignment = 512;
inline constexpr size_t kMaxAlignment = size_t{1} << 24;
inline constexpr size_t kDefaultAlignment = 4096;
// Bounds that keep every size product far from overflow.
inline constexpr uint64_t kMaxHidden = uint64_t{1} << 24;
inline constexpr uint64_t kMaxNeurons = uint64_t{1} << 26;
inline constexpr uint64_t kMaxLayers = uint64_t{1} << 16;

// What a file holds.
struct BundleShape {
  DType dtype = DType::kFloat32;  // unused when quant is set
  size_t hidden = 0;        // H
  size_t intermediate = 0;  // I: neurons per layer in this file
  size_t layers = 0;        // L
  bool gated = true;        // gate rows present (SwiGLU / GeGLU)
  size_t neuron_begin = 0;  // first model neuron held (a slice of the model)
  size_t model_intermediate = 0;  // neurons per layer in the model; 0: = intermediate
  // Quantized rows (quant/format.h) instead of rows of dtype.
  std::optional<quant::QuantFormat> quant;
};

class BundleLayout {
 public:
  // The layout of a file holding `shape` with bundles aligned to
  // `alignment`. InvalidArgument naming the field for a zero or oversized
  // dimension, an alignment that is not a power of two in
  // [kMinAlignment, kMaxAlignment], a slice outside the model, or a
  // quantized format rows of H cannot have.
  static absl::StatusOr<BundleLayout> Create(const BundleShape& shape,
                                             size_t alignment = kDefaultAlignment);

  // The header's total size (fixed part, offsets, checksum) given its fixed
  // part; InvalidArgument / DataLoss as DecodeHeader for a bad fixed part.
  static absl::StatusOr<size_t> EncodedHeaderSize(absl::Span<const uint8_t> fixed,
                                                  absl::string_view path);
  // Parses and validates a header (at least EncodedHeaderSize bytes) of a
  // file of `file_size` bytes; errors name `path` and the field: DataLoss
  // for a bad magic, header checksum, or inconsistent sizes and offsets,
  // Unimplemented for a newer version, InvalidArgument for an unknown dtype,
  // flag or out-of-range shape, OutOfRange when file_size differs from the
  // size the header states (a truncated or extended file).
  static absl::StatusOr<BundleLayout> DecodeHeader(absl::Span<const uint8_t> bytes,
                                                   uint64_t file_size, absl::string_view path);
  // Writes the header into out[0, header_bytes()) (padding zeroed).
  // InvalidArgument if out is smaller.
  absl::Status EncodeHeader(absl::Span<uint8_t> out) const;

  const BundleShape& shape() const { return shape_; }
  size_t alignment() const { return alignment_; }
  size_t row_bytes() const { return row_bytes_; }  // H x element size, or a quantized row
  size_t rows_per_bundle() const { return shape_.gated ? 3 : 2; }
  size_t bundle_bytes() const { return row_bytes_ * rows_per_bundle(); }
  size_t bundle_stride() const { return bundle_stride_; }
  size_t header_bytes() const { return header_bytes_; }
  uint64_t layer_offset(size_t layer) const { return layer_offsets_[layer]; }
  uint64_t bundle_offset(size_t layer, size_t neuron) const {
    return layer_offsets_[layer] + neuron * static_cast<uint64_t>(bundle_stride_);
  }
  uint64_t checksum_offset() const { return checksum_offset_; }
  uint64_t checksum_bytes() const { return uint64_t{8} * shape_.layers * shape_.intermediate; }
  uint64_t file_bytes() const { return file_bytes_; }
  // Offsets of the rows within a bundle (gate: gated files only).
  size_t gate_offset() const { return 0; }
  size_t up_offset() const { return shape_.gated ? row_bytes_ : 0; }
  size_t down_offset() const { return up_offset() + row_bytes_; }

 private:
  BundleShape shape_;
  size_t alignment_ = kDefaultAlignment;
  size_t row_bytes_ = 0, bundle_stride_ = 0, header_bytes_ = 0;
  uint64_t checksum_offset_ = 0, file_bytes_ = 0;
  std::vector<uint64_t> layer_offsets_;
};

// XXH3-64 of a bundle's payload (the checksum the table stores).
uint64_t BundleChecksum(const void* data, size_t bytes);

}  // namespace sparse_mlp::store

#endif  // SPARSE_MLP_STORE_BUNDLE_FORMAT_H_
