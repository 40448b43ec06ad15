#include "store/bundle_format.h"

#include <xxhash.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace sparse_mlp::store {
namespace {

// Field offsets of the fixed header part (see the header comment).
enum Field : size_t {
  kMagicAt = 0,
  kVersionAt = 8,
  kDTypeAt = 12,
  kFlagsAt = 16,
  kAlignmentAt = 20,
  kHiddenAt = 24,
  kIntermediateAt = 32,
  kLayersAt = 40,
  kNeuronBeginAt = 48,
  kModelIntermediateAt = 56,
  kBundleBytesAt = 64,
  kBundleStrideAt = 72,
  kChecksumOffsetAt = 80,
  kFileBytesAt = 88,
  kHeaderBytesAt = 96,
  kQuantGroupAt = 104,
  kReservedAt = 108,
};
constexpr uint32_t kGatedFlag = 1;
// dtype codes beyond DType's: quantized rows.
constexpr uint32_t kInt8Code = 3, kQ4Code = 4;

void Put32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void Put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t Get32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(p[i]) << (8 * i);
  return v;
}
uint64_t Get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

uint64_t RoundUp(uint64_t v, uint64_t alignment) { return (v + alignment - 1) / alignment * alignment; }

size_t VariableHeaderBytes(uint64_t layers) { return kFixedHeaderBytes + 8 * layers + 8; }

absl::Status CheckShape(const BundleShape& s, size_t alignment) {
  if (s.hidden == 0 || s.hidden > kMaxHidden) {
    return absl::InvalidArgumentError(
        absl::StrFormat("hidden must be in [1, %d], got %d", kMaxHidden, s.hidden));
  }
  if (s.intermediate == 0 || s.intermediate > kMaxNeurons) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "intermediate must be in [1, %d], got %d", kMaxNeurons, s.intermediate));
  }
  if (s.layers == 0 || s.layers > kMaxLayers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layers must be in [1, %d], got %d", kMaxLayers, s.layers));
  }
  const uint64_t model = s.model_intermediate == 0 ? s.intermediate : s.model_intermediate;
  if (model > kMaxNeurons || s.neuron_begin > model || s.intermediate > model - s.neuron_begin) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "neurons [%d, %d) lie outside the model's %d neurons per layer", s.neuron_begin,
        s.neuron_begin + s.intermediate, model));
  }
  if (s.quant.has_value()) {
    if (absl::Status q = quant::RowLayout::Create(*s.quant, s.hidden).status(); !q.ok()) return q;
  }
  if (alignment < kMinAlignment || alignment > kMaxAlignment ||
      (alignment & (alignment - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "alignment must be a power of two in [%d, %d], got %d", kMinAlignment, kMaxAlignment,
        alignment));
  }
  return absl::OkStatus();
}

}  // namespace

uint64_t BundleChecksum(const void* data, size_t bytes) { return XXH3_64bits(data, bytes); }

absl::StatusOr<BundleLayout> BundleLayout::Create(const BundleShape& shape, size_t alignment) {
  if (absl::Status s = CheckShape(shape, alignment); !s.ok()) return s;
  BundleLayout l;
  l.shape_ = shape;
  if (l.shape_.model_intermediate == 0) l.shape_.model_intermediate = shape.intermediate;
  l.alignment_ = alignment;
  l.row_bytes_ = shape.quant.has_value()
                     ? quant::RowLayout::Create(*shape.quant, shape.hidden)->row_bytes()
                     : shape.hidden * DTypeSize(shape.dtype);
  if (shape.quant.has_value()) {
    // Stored resolved: the group, never 0 for "the whole row".
    l.shape_.quant->group = quant::RowLayout::Create(*shape.quant, shape.hidden)->group();
  }
  l.bundle_stride_ = RoundUp(l.bundle_bytes(), alignment);
  l.header_bytes_ = RoundUp(VariableHeaderBytes(shape.layers), alignment);
  const uint64_t layer_bytes = RoundUp(uint64_t{l.bundle_stride_} * shape.intermediate, alignment);
  l.layer_offsets_.resize(shape.layers);
  for (size_t k = 0; k < shape.layers; ++k) l.layer_offsets_[k] = l.header_bytes_ + k * layer_bytes;
  l.checksum_offset_ = l.header_bytes_ + shape.layers * layer_bytes;
  l.file_bytes_ = RoundUp(l.checksum_offset_ + l.checksum_bytes(), alignment);
  return l;
}

absl::Status BundleLayout::EncodeHeader(absl::Span<uint8_t> out) const {
  if (out.size() < header_bytes_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the header needs %d bytes, the buffer has %d", header_bytes_, out.size()));
  }
  uint8_t* p = out.data();
  std::memset(p, 0, header_bytes_);
  std::memcpy(p + kMagicAt, kMagic, sizeof(kMagic));
  // Float files stay version 1, so that readers from before quantized rows
  // still read them; only quantized files need version 2.
  Put32(p + kVersionAt, shape_.quant.has_value() ? kFormatVersion : 1);
  if (shape_.quant.has_value()) {
    Put32(p + kDTypeAt, shape_.quant->type == quant::QuantType::kInt8 ? kInt8Code : kQ4Code);
    Put32(p + kQuantGroupAt, static_cast<uint32_t>(shape_.quant->group));
  } else {
    Put32(p + kDTypeAt, static_cast<uint32_t>(shape_.dtype));
  }
  Put32(p + kFlagsAt, shape_.gated ? kGatedFlag : 0);
  Put32(p + kAlignmentAt, static_cast<uint32_t>(alignment_));
  Put64(p + kHiddenAt, shape_.hidden);
  Put64(p + kIntermediateAt, shape_.intermediate);
  Put64(p + kLayersAt, shape_.layers);
  Put64(p + kNeuronBeginAt, shape_.neuron_begin);
  Put64(p + kModelIntermediateAt, shape_.model_intermediate);
  Put64(p + kBundleBytesAt, bundle_bytes());
  Put64(p + kBundleStrideAt, bundle_stride_);
  Put64(p + kChecksumOffsetAt, checksum_offset_);
  Put64(p + kFileBytesAt, file_bytes_);
  Put64(p + kHeaderBytesAt, header_bytes_);
  for (size_t k = 0; k < shape_.layers; ++k) {
    Put64(p + kFixedHeaderBytes + 8 * k, layer_offsets_[k]);
  }
  const size_t covered = kFixedHeaderBytes + 8 * shape_.layers;
  Put64(p + covered, XXH3_64bits(p, covered));
  return absl::OkStatus();
}

absl::StatusOr<size_t> BundleLayout::EncodedHeaderSize(absl::Span<const uint8_t> fixed,
                                                       absl::string_view path) {
  if (fixed.size() < kFixedHeaderBytes) {
    return absl::DataLossError(absl::StrFormat(
        "%s: too short for a bundle file header (%d bytes, need %d)", path, fixed.size(),
        kFixedHeaderBytes));
  }
  if (std::memcmp(fixed.data() + kMagicAt, kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError(absl::StrFormat(
        "%s: not a sparse_mlp bundle file (magic is not \"SPMLBNDL\")", path));
  }
  const uint32_t version = Get32(fixed.data() + kVersionAt);
  if (version < 1 || version > kFormatVersion) {
    return absl::UnimplementedError(
        absl::StrFormat("%s: format version %d; this library reads versions 1 to %d", path, version,
                        kFormatVersion));
  }
  const uint64_t layers = Get64(fixed.data() + kLayersAt);
  if (layers == 0 || layers > kMaxLayers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: header field layers = %d outside [1, %d]", path, layers, kMaxLayers));
  }
  return VariableHeaderBytes(layers);
}

absl::StatusOr<BundleLayout> BundleLayout::DecodeHeader(absl::Span<const uint8_t> bytes,
                                                        uint64_t file_size,
                                                        absl::string_view path) {
  absl::StatusOr<size_t> need = EncodedHeaderSize(bytes, path);
  if (!need.ok()) return need.status();
  if (bytes.size() < *need) {
    return absl::DataLossError(absl::StrFormat(
        "%s: header cut short (%d bytes, its layer table needs %d)", path, bytes.size(), *need));
  }
  const uint8_t* p = bytes.data();
  const size_t covered = *need - 8;
  if (XXH3_64bits(p, covered) != Get64(p + covered)) {
    return absl::DataLossError(
        absl::StrFormat("%s: header checksum mismatch (the header is corrupted)", path));
  }
  const uint32_t dtype = Get32(p + kDTypeAt);
  const uint32_t version = Get32(p + kVersionAt);
  const uint32_t max_code = version >= 2 ? kQ4Code : static_cast<uint32_t>(DType::kFloat16);
  if (dtype > max_code) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: header field dtype = %d is not 0 (f32), 1 (bf16), 2 (f16)%s", path,
                        dtype, version >= 2 ? ", 3 (int8) or 4 (q4)" : " (version 1)"));
  }
  const uint32_t group = Get32(p + kQuantGroupAt);
  const bool quantized = dtype >= kInt8Code;
  if (quantized ? group == 0 : group != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: header field quant_group = %d %s", path, group,
        quantized ? "must be positive for quantized rows" : "must be 0 for float rows"));
  }
  const uint32_t flags = Get32(p + kFlagsAt);
  if ((flags & ~kGatedFlag) != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: header field flags = %#x has unknown bits", path, flags));
  }
  for (size_t k = kReservedAt; k < kFixedHeaderBytes; ++k) {
    if (p[k] != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: reserved header byte %d is not zero", path, k));
    }
  }
  BundleShape shape;
  if (quantized) {
    shape.quant = quant::QuantFormat{
        dtype == kInt8Code ? quant::QuantType::kInt8 : quant::QuantType::kQ4, group};
  } else {
    shape.dtype = static_cast<DType>(dtype);
  }
  shape.gated = (flags & kGatedFlag) != 0;
  const uint64_t hidden = Get64(p + kHiddenAt), inter = Get64(p + kIntermediateAt),
                 layers = Get64(p + kLayersAt), begin = Get64(p + kNeuronBeginAt),
                 model = Get64(p + kModelIntermediateAt);
  // Range-check before narrowing to size_t (32-bit hosts).
  if (hidden > kMaxHidden || inter > kMaxNeurons || model > kMaxNeurons || begin > kMaxNeurons) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: header shape out of range (hidden %d, intermediate %d, neuron_begin %d, "
        "model_intermediate %d)",
        path, hidden, inter, begin, model));
  }
  shape.hidden = hidden;
  shape.intermediate = inter;
  shape.layers = layers;
  shape.neuron_begin = begin;
  shape.model_intermediate = model;
  absl::StatusOr<BundleLayout> layout = Create(shape, Get32(p + kAlignmentAt));
  if (!layout.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: header: %s", path, layout.status().message()));
  }
  // Every derived field must be what the shape implies: a file whose
  // offsets disagree is refused rather than read at the wrong places.
  const struct {
    const char* name;
    uint64_t stored, expected;
  } derived[] = {
      {"bundle_bytes", Get64(p + kBundleBytesAt), layout->bundle_bytes()},
      {"bundle_stride", Get64(p + kBundleStrideAt), layout->bundle_stride()},
      {"checksum_offset", Get64(p + kChecksumOffsetAt), layout->checksum_offset()},
      {"file_bytes", Get64(p + kFileBytesAt), layout->file_bytes()},
      {"header_bytes", Get64(p + kHeaderBytesAt), layout->header_bytes()},
  };
  for (const auto& d : derived) {
    if (d.stored != d.expected) {
      return absl::DataLossError(absl::StrFormat(
          "%s: header field %s = %d disagrees with the shape (expected %d)", path, d.name,
          d.stored, d.expected));
    }
  }
  for (size_t k = 0; k < layers; ++k) {
    const uint64_t stored = Get64(p + kFixedHeaderBytes + 8 * k);
    if (stored != layout->layer_offset(k)) {
      return absl::DataLossError(absl::StrFormat(
          "%s: header layer %d offset = %d disagrees with the shape (expected %d)", path, k,
          stored, layout->layer_offset(k)));
    }
  }
  if (file_size != layout->file_bytes()) {
    return absl::OutOfRangeError(absl::StrFormat(
        "%s: the file has %d bytes, its header says %d (%s)", path, file_size,
        layout->file_bytes(), file_size < layout->file_bytes() ? "truncated" : "extended"));
  }
  return layout;
}

}  // namespace sparse_mlp::store
