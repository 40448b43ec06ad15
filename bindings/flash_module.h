// Python binding of cache::FlashModelCache and mlp::FlashLayerStep: a
// model's MLPs served from a bundle file under a DRAM budget
// (sparse_mlp.FlashModelCache, ModelCache.from_file).
#ifndef SPARSE_MLP_BINDINGS_FLASH_MODULE_H_
#define SPARSE_MLP_BINDINGS_FLASH_MODULE_H_

#include <pybind11/pybind11.h>

namespace sparse_mlp::bindings {

// Registers FlashModelCache on the module.
void RegisterFlash(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_FLASH_MODULE_H_
