// cache::DType: the element types of platform/dtype.h under the names the
// cache's and the forward's interfaces have always used.
#ifndef SPARSE_MLP_CACHE_DTYPE_H_
#define SPARSE_MLP_CACHE_DTYPE_H_

#include "platform/dtype.h"

namespace sparse_mlp::cache {

using ::sparse_mlp::DType;
using ::sparse_mlp::DTypeName;
using ::sparse_mlp::DTypeSize;
using ::sparse_mlp::kDTypeNames;
using ::sparse_mlp::ParseDType;

}  // namespace sparse_mlp::cache

#endif  // SPARSE_MLP_CACHE_DTYPE_H_
