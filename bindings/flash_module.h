// Python binding of flash::FlashModelCache and step::FlashLayerStep: a
// model's MLPs served from a bundle file under a DRAM budget
// (sparse_mlp.flash::FlashModelCache, ModelCache.from_file).
#ifndef SPARSE_MLP_BINDINGS_FLASH_MODULE_H_
#define SPARSE_MLP_BINDINGS_FLASH_MODULE_H_

#include <pybind11/pybind11.h>

namespace sparse_mlp::bindings {

// Registers flash::FlashModelCache on the module.
void RegisterFlash(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_FLASH_MODULE_H_
