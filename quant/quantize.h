// Reference quantization of rows into the formats of quant/format.h, and
// their exact dequantization. Plain loops: the oracle the SIMD kernels and
// every quantized path are checked against, and what writers call once per
// row (quantizing is not on a hot path).
//
// int8: scale = max |w| / 127 over the group (rounded to float16), q =
// round(w / scale). q4: the scale that minimises the group's squared error
// among 19 candidates around max |w| / 8 (the least-squares scale for each
// candidate's rounding, as llama.cpp's make_qx_quants searches), then q
// rounded against that scale in float16. Symmetric; no minimum (a minimum
// costs a second scale per group and the MLP's weights are centred).
//
// Thread-safe; QuantizeRow allocates O(H) scratch (quantizing is not on a
// hot path); O(H) per row (O(19 H) for q4).
#ifndef SPARSE_MLP_QUANT_QUANTIZE_H_
#define SPARSE_MLP_QUANT_QUANTIZE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "quant/format.h"

namespace sparse_mlp::quant {

// Quantizes layout.hidden() float32 weights `w` into one row at `out`
// (layout.row_bytes() bytes). Errors (InvalidArgument, naming the value and
// its index): a NaN or infinite weight; a group whose scale does not fit
// float16 (max |w| so large the scale overflows, or so small and non-zero
// that it rounds to 0). `out` is untouched after an error (every group is
// checked before anything is written).
absl::Status QuantizeRow(const RowLayout& layout, const float* w, uint8_t* out);

// The row's weights, q x scale, in float32 (exact: |q| < 2^8 and the scale
// has 11 significant bits).
void DequantizeRow(const RowLayout& layout, const uint8_t* row, float* out);

// Weight i of a row (the same value as DequantizeRow's, for references).
float WeightAt(const RowLayout& layout, const uint8_t* row, size_t i);

}  // namespace sparse_mlp::quant

#endif  // SPARSE_MLP_QUANT_QUANTIZE_H_
