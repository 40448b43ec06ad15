// Python bindings of the forward on full weights (mlp::Forward,
// ForwardIndexed, ForwardLinear: sparse_mlp.mlp_forward) and of the parallel
// transpose.
#ifndef SPARSE_MLP_BINDINGS_MLP_MODULE_H_
#define SPARSE_MLP_BINDINGS_MLP_MODULE_H_

#include <pybind11/pybind11.h>

namespace sparse_mlp::bindings {

// Registers mlp_forward and transpose on the module.
void RegisterMlp(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_MLP_MODULE_H_
