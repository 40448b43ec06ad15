// Python bindings of quant/ (quantize and dequantize rows) and of the
// forward over quantized rows (mlp/quant_forward.h); sparse_mlp.quant wraps
// them.
#ifndef SPARSE_MLP_BINDINGS_QUANT_MODULE_H_
#define SPARSE_MLP_BINDINGS_QUANT_MODULE_H_

#include <pybind11/pybind11.h>

namespace sparse_mlp::bindings {

// Registers quant_row_bytes, quantize_rows, dequantize_rows and
// mlp_forward_quant on the module.
void RegisterQuant(pybind11::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_QUANT_MODULE_H_
