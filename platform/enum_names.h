// Enum <-> name tables: one statement of each enum's names, from which its
// Name() and Parse() functions (used by the benchmarks' flags and by the
// Python bindings) are derived.
//
//   inline constexpr EnumName<DType> kDTypeNames[] = {{DType::kFloat32, "float32"}, ...};
//   NameOf(kDTypeNames, DType::kFloat32)          -> "float32"
//   ParseName(kDTypeNames, "float32", "dtype")   -> DType::kFloat32, or
//     InvalidArgument "dtype must be one of float32, bfloat16, float16; got 'x'"
//
// Thread-safe; NameOf allocates nothing; O(table size).
#ifndef SPARSE_MLP_PLATFORM_ENUM_NAMES_H_
#define SPARSE_MLP_PLATFORM_ENUM_NAMES_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace sparse_mlp {

template <typename E>
struct EnumName {
  E value;
  const char* name;
};

// The name of `value`, or "unknown" for a value outside the table.
template <typename E, size_t N>
constexpr const char* NameOf(const EnumName<E> (&table)[N], E value) {
  for (const EnumName<E>& entry : table) {
    if (entry.value == value) return entry.name;
  }
  return "unknown";
}

// The value named `name`; InvalidArgument naming `what`, the choices and the
// name otherwise.
template <typename E, size_t N>
absl::StatusOr<E> ParseName(const EnumName<E> (&table)[N], absl::string_view name,
                            absl::string_view what) {
  std::string choices;
  for (const EnumName<E>& entry : table) {
    if (name == entry.name) return entry.value;
    absl::StrAppend(&choices, choices.empty() ? "" : ", ", entry.name);
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("%s must be one of %s; got '%s'", what, choices, name));
}

}  // namespace sparse_mlp

// Defines an enum's two named functions over its table:
//   constexpr const char* NameFn(Enum)               (NameOf)
//   absl::StatusOr<Enum> ParseFn(absl::string_view)  (ParseName, naming `what`)
#define SPARSE_MLP_ENUM_NAME_FUNCTIONS(Enum, table, NameFn, ParseFn, what) \
  constexpr const char* NameFn(Enum value) {                              \
    return ::sparse_mlp::NameOf(table, value);                            \
  }                                                                       \
  inline absl::StatusOr<Enum> ParseFn(absl::string_view name) {           \
    return ::sparse_mlp::ParseName(table, name, what);                    \
  }

#endif  // SPARSE_MLP_PLATFORM_ENUM_NAMES_H_
