#include "quant/format.h"

#include "absl/strings/str_format.h"

namespace sparse_mlp::quant {

absl::StatusOr<RowLayout> RowLayout::Create(QuantFormat format, size_t hidden) {
  if (hidden == 0) return absl::InvalidArgumentError("hidden_size must be positive, got 0");
  const size_t group = format.group == 0 ? hidden : format.group;
  switch (format.type) {
    case QuantType::kInt8:
      if (group != hidden && (group % 32 != 0 || hidden % group != 0)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "int8 group %u must be the whole row (%u) or a multiple of 32 that divides it", group,
            hidden));
      }
      return RowLayout(format.type, hidden, group);
    case QuantType::kQ4:
      if ((group != 32 && group != 64) || hidden % group != 0) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "q4 group %u must be 32 or 64 and divide hidden_size %u", group, hidden));
      }
      return RowLayout(format.type, hidden, group);
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown quantized type %d", static_cast<int>(format.type)));
}

}  // namespace sparse_mlp::quant
