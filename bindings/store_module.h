// Python bindings of store/: the bundle file writer and reader
// (sparse_mlp.store's native classes) and the I/O engines available here.
#ifndef SPARSE_MLP_BINDINGS_STORE_MODULE_H_
#define SPARSE_MLP_BINDINGS_STORE_MODULE_H_

#include <pybind11/pybind11.h>

namespace sparse_mlp::bindings {

// Registers BundleWriter, BundleReader and io_engines on the module.
void RegisterStore(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_STORE_MODULE_H_
