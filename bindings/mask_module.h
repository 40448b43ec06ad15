// Python bindings of step/mask_step.h: the gate-first step (GateFirst) and
// the native low-rank predictor (LowRankPredictor), each stepping a
// WeightCache binding (a cache of its own or a ModelCache's layer).
#ifndef SPARSE_MLP_BINDINGS_MASK_MODULE_H_
#define SPARSE_MLP_BINDINGS_MASK_MODULE_H_

#include <pybind11/pybind11.h>

namespace sparse_mlp::bindings {

// Registers GateFirst and LowRankPredictor on the module.
void RegisterMasks(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_MASK_MODULE_H_
