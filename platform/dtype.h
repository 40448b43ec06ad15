// Element types of MLP weights, shared by every component that stores or
// moves them (store/ writes them into files, cache/ moves rows as raw bytes:
// the type sets the row size and tags the views it hands out; mlp/ computes
// on them).
#ifndef SPARSE_MLP_PLATFORM_DTYPE_H_
#define SPARSE_MLP_PLATFORM_DTYPE_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "platform/enum_names.h"

namespace sparse_mlp {

enum class DType { kFloat32, kBFloat16, kFloat16 };

inline constexpr EnumName<DType> kDTypeNames[] = {
    {DType::kFloat32, "float32"},
    {DType::kBFloat16, "bfloat16"},
    {DType::kFloat16, "float16"},
};

constexpr size_t DTypeSize(DType dtype) {
  return dtype == DType::kFloat32 ? 4 : 2;
}

// DTypeName: "float32", "bfloat16", "float16"; ParseDType: the inverse
// (InvalidArgument naming the choices for any other name).
SPARSE_MLP_ENUM_NAME_FUNCTIONS(DType, kDTypeNames, DTypeName, ParseDType, "dtype")

}  // namespace sparse_mlp

#endif  // SPARSE_MLP_PLATFORM_DTYPE_H_
