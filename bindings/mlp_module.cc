#include "bindings/mlp_module.h"

#include <pybind11/numpy.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "bindings/convert.h"
#include "gather/transpose.h"
#include "mlp/mlp_forward.h"

namespace sparse_mlp::bindings {
namespace {

// dst[c][r] = src[r][c], both taken through DLPack (no copies besides the
// transpose itself): src [R, C], dst [C, R], same dtype, C-contiguous.
void TransposeInto(const py::object& src, const py::object& dst,
                   const py::object& num_threads_arg) {
  const int num_threads = NumThreadsArg(num_threads_arg);
  ImportedTensor in = ImportMatrix(src, "src");
  ImportedTensor out = ImportMatrix(dst, "dst");
  if (!out.writable()) throw py::value_error("dst must be writable, got a read-only array");
  const DType dtype = in.dtype();
  if (out.dtype() != dtype) {
    throw py::type_error("src and dst must have the same dtype");
  }
  const int64_t rows = in.rows(), cols = in.cols();
  if (out.rows() != cols || out.cols() != rows) {
    throw py::value_error(absl::StrFormat("dst must be [%d, %d] for src %s, got %s", cols,
                                          rows, in.ShapeString(), out.ShapeString()));
  }
  const size_t elem = cache::DTypeSize(dtype);
  gather::TransposeOptions options;
  options.num_threads = num_threads;
  absl::Status status;
  {
    py::gil_scoped_release release;
    status = gather::Transpose(
        {in.data(), static_cast<size_t>(rows), static_cast<size_t>(cols) * elem},
        static_cast<size_t>(cols), elem,
        {const_cast<void*>(out.data()), static_cast<size_t>(cols),
         static_cast<size_t>(rows) * elem},
        options);
  }
  ThrowIfError(status);
}

// out = down(act(gate x) * (up x)) from full weights, dense or over sorted
// `indices` (uint32 array or None); gate may be None. down is [H, I]
// (nn.Linear) or, with down_neuron_major, [I, H]; direct-index needs the
// latter. One workspace per Python thread, kept between calls.
void MlpForward(const py::object& x, const py::object& gate, const py::object& up,
                const py::object& down, const py::object& indices, const py::object& out,
                const std::string& activation, bool down_neuron_major,
                const py::object& num_threads_arg, bool accumulate) {
  mlp::ForwardOptions o;
  o.activation = ActivationArg(activation);
  o.accumulate = accumulate;
  o.num_threads = NumThreadsArg(num_threads_arg);
  const ImportedTensor u = ImportMatrix(up, "up");
  const DType dtype = u.dtype();
  const int64_t neurons = u.rows(), hidden = u.cols();
  if (neurons == 0 || hidden == 0) {
    throw py::value_error(absl::StrFormat("up must be [I >= 1, H >= 1], got %s", u.ShapeString()));
  }
  ImportedTensor g;
  if (!gate.is_none()) {
    g = ImportMatrix(gate, "gate");
    if (g.dtype() != dtype) {
      throw py::type_error(absl::StrFormat("gate and up must have the same type, got %s and %s",
                                           cache::DTypeName(g.dtype()), cache::DTypeName(dtype)));
    }
    if (g.rows() != neurons || g.cols() != hidden) {
      throw py::value_error(absl::StrFormat("gate must have up's shape %s, got %s",
                                            u.ShapeString(), g.ShapeString()));
    }
  }
  const ImportedTensor d = ImportMatrix(down, "down");
  if (d.dtype() != dtype) {
    throw py::type_error(absl::StrFormat("down and up must have the same type, got %s and %s",
                                         cache::DTypeName(d.dtype()), cache::DTypeName(dtype)));
  }
  const int64_t want0 = down_neuron_major ? neurons : hidden;
  const int64_t want1 = down_neuron_major ? hidden : neurons;
  if (d.rows() != want0 || d.cols() != want1) {
    throw py::value_error(absl::StrFormat("down must be [%d, %d]%s, got %s", want0, want1,
                                          down_neuron_major ? " (neuron-major)" : "",
                                          d.ShapeString()));
  }
  const TokenArgs t = ImportTokens(x, out, static_cast<size_t>(hidden), dtype);
  const void* gate_data = gate.is_none() ? nullptr : g.data();
  thread_local mlp::Workspace workspace;
  absl::Status status;
  const size_t h = static_cast<size_t>(hidden), n = static_cast<size_t>(neurons);
  const mlp::NeuronRows rows{dtype, h, n, gate_data, h, u.data(), h, d.data(), h};
  if (indices.is_none()) {
    if (down_neuron_major) {
      py::gil_scoped_release release;
      status = mlp::Forward(rows, t.In(), t.Out(), o, &workspace);
    } else {
      const mlp::LinearWeights w{dtype, h, n, gate_data, u.data(), d.data()};
      py::gil_scoped_release release;
      status = mlp::ForwardLinear(w, t.In(), t.Out(), o, &workspace);
    }
  } else {
    if (!down_neuron_major) {
      throw py::value_error(
          "indices need a neuron-major down [I, H]: transpose it once "
          "(down.t().contiguous()) and pass down_neuron_major=True");
    }
    const IndicesArg idx(indices);
    py::gil_scoped_release release;
    status = mlp::ForwardIndexed(rows, idx.span, t.In(), t.Out(), o, &workspace);
  }
  ThrowIfError(status);
}

}  // namespace

void RegisterMlp(py::module_& m) {
  m.def("transpose", &TransposeInto, py::arg("src"), py::arg("dst"),
        py::arg("num_threads") = 1,
        "dst[c][r] = src[r][c] with the parallel SIMD transpose (zero-copy in and out).");

  m.def("mlp_forward", &MlpForward, py::arg("x"), py::arg("gate"),
        py::arg("up"), py::arg("down"), py::arg("indices"), py::arg("out"), py::kw_only(),
        py::arg("activation") = "silu", py::arg("down_neuron_major") = false,
        py::arg("num_threads") = 1, py::arg("accumulate") = false,
        "out = down(act(gate x) * (up x)), dense or over sorted uint32 indices (native).");
}

}  // namespace sparse_mlp::bindings
