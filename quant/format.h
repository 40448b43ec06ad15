// Quantized row formats: how a row of H weights is stored as small integers
// with one scale per group of G consecutive weights, so that a neuron's
// gate row, up row or down column (the reduction dimension of the first
// two, the output dimension of the last) costs ~1 or ~0.5 bytes a weight.
//
// A quantized row is self-contained and planar:
//   [quants: H int8 (kInt8) or H / 2 bytes of nibbles (kQ4)][scales: H / G float16]
// so a cache slot, a bundle or a copy moves a row as opaque bytes, and the
// kernels read the quants with plain vector loads and the group's scale
// with one conversion. Weight i of the row is q_i x scale_{i / G}.
//   kInt8: q in [-127, 127] (symmetric; -128 unused, so |q| fits a sign
//          trick); G a multiple of 32 dividing H, or G = H (whole row, any H).
//   kQ4:   q in [-8, 7]; G 32 or 64 dividing H. Group g's nibbles fill bytes
//          [g G / 2, (g + 1) G / 2): byte k of each 32-weight block holds
//          weight k in its low nibble and weight k + 16 in its high nibble
//          (stored as q + 8), as ggml's q4_0 does, so one 128-bit load and
//          two masks give 32 weights in order.
// Scales are float16 (half the bytes of float32 at G = 32; the kernels
// convert 8 or 16 at once): a scale outside float16's range is an error at
// quantization time, never a silent clamp.
//
// Pure logic: thread-safe, no allocation, O(1).
#ifndef SPARSE_MLP_QUANT_FORMAT_H_
#define SPARSE_MLP_QUANT_FORMAT_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "platform/enum_names.h"

namespace sparse_mlp::quant {

enum class QuantType { kInt8, kQ4 };

inline constexpr EnumName<QuantType> kQuantTypeNames[] = {
    {QuantType::kInt8, "int8"},
    {QuantType::kQ4, "q4"},
};
// QuantTypeName: "int8", "q4"; ParseQuantType: the inverse (InvalidArgument
// naming the choices for any other name).
SPARSE_MLP_ENUM_NAME_FUNCTIONS(QuantType, kQuantTypeNames, QuantTypeName, ParseQuantType,
                               "quantized type")

struct QuantFormat {
  QuantType type = QuantType::kInt8;
  size_t group = 32;  // weights per scale; 0 means the whole row (G = H)
};

// The byte layout of one quantized row of `hidden` weights.
class RowLayout {
 public:
  // Validates `format` for rows of `hidden` weights. InvalidArgument naming
  // the value: hidden 0; an int8 group that is neither the whole row nor a
  // multiple of 32 dividing hidden; a q4 group other than 32 or 64, or one
  // that does not divide hidden.
  static absl::StatusOr<RowLayout> Create(QuantFormat format, size_t hidden);

  QuantType type() const { return type_; }
  size_t hidden() const { return hidden_; }
  size_t group() const { return group_; }  // resolved: never 0
  size_t groups() const { return hidden_ / group_; }
  size_t quant_bytes() const { return type_ == QuantType::kInt8 ? hidden_ : hidden_ / 2; }
  size_t scale_offset() const { return quant_bytes(); }  // float16 scales from here
  size_t row_bytes() const { return quant_bytes() + 2 * groups(); }

 private:
  RowLayout(QuantType type, size_t hidden, size_t group)
      : type_(type), hidden_(hidden), group_(group) {}

  QuantType type_;
  size_t hidden_;
  size_t group_;
};

}  // namespace sparse_mlp::quant

#endif  // SPARSE_MLP_QUANT_FORMAT_H_
