// Python binding of cache::ModelCache: every layer's cache in one pool, a
// WeightCache handle (bindings/cache_module.h) per layer sharing the model.
#ifndef SPARSE_MLP_BINDINGS_MODEL_MODULE_H_
#define SPARSE_MLP_BINDINGS_MODEL_MODULE_H_

#include <pybind11/pybind11.h>

namespace sparse_mlp::bindings {

// Registers ModelCache on the module.
void RegisterModel(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_MODEL_MODULE_H_
