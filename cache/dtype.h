// Element types of MLP weights. The cache moves rows as raw bytes; the type
// only sets the row size and tags the views it hands out.
#ifndef SPARSE_MLP_CACHE_DTYPE_H_
#define SPARSE_MLP_CACHE_DTYPE_H_

#include <cstddef>

namespace sparse_mlp::cache {

enum class DType { kFloat32, kBFloat16, kFloat16 };

constexpr size_t DTypeSize(DType dtype) {
  return dtype == DType::kFloat32 ? 4 : 2;
}

constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
  }
  return "unknown";
}

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_DTYPE_H_
