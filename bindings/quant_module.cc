#include "bindings/quant_module.h"

#include <pybind11/numpy.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "bindings/convert.h"
#include "mlp/quant_forward.h"
#include "quant/format.h"
#include "quant/quantize.h"

namespace sparse_mlp::bindings {
namespace {

using FloatArray = py::array_t<float, py::array::c_style>;
using ByteArray = py::array_t<uint8_t, py::array::c_style>;

size_t RowBytes(const std::string& type, size_t group, size_t hidden) {
  return QuantLayoutArg(type, group, hidden).row_bytes();
}

// dst[r] = the quantized row r of src ([R, H] float32 -> [R, row_bytes]);
// the first bad row's error names its index; rows before it are written,
// so callers pass a fresh buffer (sparse_mlp.quant does).
void QuantizeRows(const py::object& src_arg, const py::object& dst_arg, const std::string& type,
                  size_t group, int num_threads) {
  const FloatArray src = ExactArray<float>(src_arg, "weight", "float32");
  ByteArray dst = ExactArray<uint8_t>(dst_arg, "out", "uint8");
  const size_t rows = static_cast<size_t>(src.shape(0)), hidden = static_cast<size_t>(src.shape(1));
  const quant::RowLayout l = QuantLayoutArg(type, group, hidden);
  if (static_cast<size_t>(dst.shape(0)) != rows ||
      static_cast<size_t>(dst.shape(1)) != l.row_bytes()) {
    throw py::value_error(absl::StrFormat("out must be [%u, %u], got [%d, %d]", rows, l.row_bytes(),
                                          dst.shape(0), dst.shape(1)));
  }
  const float* s = src.data();
  uint8_t* d = dst.mutable_data();
  std::vector<absl::Status> errors(rows);
  {
    py::gil_scoped_release release;
#pragma omp parallel for num_threads(num_threads < 1 ? 1 : num_threads) schedule(static)
    for (long r = 0; r < static_cast<long>(rows); ++r) {
      errors[r] = quant::QuantizeRow(l, s + r * hidden, d + r * l.row_bytes());
    }
  }
  for (size_t r = 0; r < rows; ++r) {
    if (!errors[r].ok()) {
      throw py::value_error(absl::StrFormat("row %u: %s", r, errors[r].message()));
    }
  }
}

void DequantizeRows(const py::object& src_arg, const py::object& dst_arg, const std::string& type,
                    size_t group) {
  const ByteArray src = ExactArray<uint8_t>(src_arg, "rows", "uint8");
  FloatArray dst = ExactArray<float>(dst_arg, "out", "float32");
  const size_t rows = static_cast<size_t>(dst.shape(0)), hidden = static_cast<size_t>(dst.shape(1));
  const quant::RowLayout l = QuantLayoutArg(type, group, hidden);
  if (static_cast<size_t>(src.shape(0)) != rows ||
      static_cast<size_t>(src.shape(1)) != l.row_bytes()) {
    throw py::value_error(absl::StrFormat("rows must be [%u, %u], got [%d, %d]", rows,
                                          l.row_bytes(), src.shape(0), src.shape(1)));
  }
  for (size_t r = 0; r < rows; ++r) {
    quant::DequantizeRow(l, src.data() + r * l.row_bytes(), dst.mutable_data() + r * hidden);
  }
}

// out = down(act(gate x) * (up x)) over quantized neuron-major rows
// ([I, row_bytes] uint8 each; gate may be None), dense or over sorted
// uint32 indices. x and out float32 [tokens, H].
void MlpForwardQuant(const py::object& x, const py::object& gate, const py::object& up,
                     const py::object& down, const py::object& indices, const py::object& out,
                     const std::string& type, size_t group, size_t hidden,
                     const std::string& activation, const py::object& num_threads_arg,
                     bool accumulate, bool quantize_x) {
  mlp::ForwardOptions o;
  o.quantize_x = quantize_x;
  o.activation = ActivationArg(activation);
  o.accumulate = accumulate;
  o.num_threads = NumThreadsArg(num_threads_arg);
  const quant::RowLayout l = QuantLayoutArg(type, group, hidden);
  const ByteArray u = ExactArray<uint8_t>(up, "up", "uint8");
  const ByteArray d = ExactArray<uint8_t>(down, "down", "uint8");
  const size_t neurons = static_cast<size_t>(u.shape(0));
  auto check = [&](const ByteArray& a, const char* name) {
    if (static_cast<size_t>(a.shape(0)) != neurons ||
        static_cast<size_t>(a.shape(1)) != l.row_bytes()) {
      throw py::value_error(absl::StrFormat("%s must be [%u, %u] rows of %s, got [%d, %d]", name,
                                            neurons, l.row_bytes(), type, a.shape(0), a.shape(1)));
    }
  };
  check(u, "up");
  check(d, "down");
  const void* gate_data = nullptr;
  ByteArray g;
  if (!gate.is_none()) {
    g = ExactArray<uint8_t>(gate, "gate", "uint8");
    check(g, "gate");
    gate_data = g.data();
  }
  const TokenArgs t = ImportTokens(x, out, hidden, DType::kFloat32);
  const mlp::QuantNeuronRows rows{{l.type(), l.group()}, hidden,   neurons,       gate_data,
                                  l.row_bytes(),         u.data(), l.row_bytes(), d.data(),
                                  l.row_bytes()};
  thread_local mlp::Workspace workspace;
  absl::Status status;
  if (indices.is_none()) {
    py::gil_scoped_release release;
    status = mlp::ForwardQuant(rows, t.In(), t.Out(), o, &workspace);
  } else {
    const IndicesArg idx(indices);
    py::gil_scoped_release release;
    status = mlp::ForwardIndexedQuant(rows, idx.span, t.In(), t.Out(), o, &workspace);
  }
  ThrowIfError(status);
}

// out = the dense MLP in nn.Linear's layout: gate (or None) and up
// [I, row_bytes(H)], down [H, row_bytes(I)] (quantized along I).
void MlpForwardQuantLinear(const py::object& x, const py::object& gate, const py::object& up,
                           const py::object& down, const py::object& out, const std::string& type,
                           size_t group, size_t hidden, const std::string& activation,
                           const py::object& num_threads_arg, bool accumulate, bool quantize_x) {
  mlp::ForwardOptions o;
  o.quantize_x = quantize_x;
  o.activation = ActivationArg(activation);
  o.accumulate = accumulate;
  o.num_threads = NumThreadsArg(num_threads_arg);
  const quant::RowLayout l = QuantLayoutArg(type, group, hidden);
  const ImportedTensor u = ImportQuantRows(up, "up", -1, l);
  const size_t neurons = static_cast<size_t>(u.rows());
  const ImportedTensor g =
      gate.is_none() ? ImportedTensor() : ImportQuantRows(gate, "gate", u.rows(), l);
  const ImportedTensor d = ImportQuantRows(down, "down", static_cast<int64_t>(hidden),
                                           QuantLayoutArg(type, group, neurons));
  const TokenArgs t = ImportTokens(x, out, hidden, DType::kFloat32);
  const mlp::QuantLinearWeights w{{l.type(), group}, hidden,   neurons,
                                  gate.is_none() ? nullptr : g.data(), u.data(), d.data()};
  thread_local mlp::Workspace workspace;
  absl::Status status;
  {
    py::gil_scoped_release release;
    status = mlp::ForwardLinearQuant(w, t.In(), t.Out(), o, &workspace);
  }
  ThrowIfError(status);
}

}  // namespace

void RegisterQuant(py::module_& m) {
  m.def("quant_row_bytes", &RowBytes, py::arg("type"), py::arg("group"), py::arg("hidden"),
        "Bytes of one quantized row of `hidden` weights (quants, then float16 scales).");
  m.def("quantize_rows", &QuantizeRows, py::arg("weight"), py::arg("out"), py::arg("type"),
        py::arg("group"), py::arg("num_threads") = 1,
        "out[r] = row r of weight ([R, H] float32) quantized (int8 or q4, groups along H).");
  m.def("dequantize_rows", &DequantizeRows, py::arg("rows"), py::arg("out"), py::arg("type"),
        py::arg("group"), "out[r] = quantized row r as float32 (q x scale).");
  m.def("mlp_forward_quant", &MlpForwardQuant, py::arg("x"), py::arg("gate"), py::arg("up"),
        py::arg("down"), py::arg("indices"), py::arg("out"), py::kw_only(), py::arg("type"),
        py::arg("group"), py::arg("hidden"), py::arg("activation") = "silu",
        py::arg("num_threads") = 1, py::arg("accumulate") = false, py::arg("quantize_x") = false,
        "The MLP over quantized neuron-major rows, dense or over sorted uint32 indices.");
  m.def("mlp_forward_quant_linear", &MlpForwardQuantLinear, py::arg("x"), py::arg("gate"),
        py::arg("up"), py::arg("down"), py::arg("out"), py::kw_only(), py::arg("type"),
        py::arg("group"), py::arg("hidden"), py::arg("activation") = "silu",
        py::arg("num_threads") = 1, py::arg("accumulate") = false, py::arg("quantize_x") = false,
        "The dense MLP over quantized rows in nn.Linear's layout (down [H, I] along I).");
}

}  // namespace sparse_mlp::bindings
