#include "bindings/convert.h"

#include <pybind11/numpy.h>

#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "platform/threads.h"

namespace sparse_mlp::bindings {
namespace {

std::string ShapeString(const DLTensor& t) {
  std::string s = "[";
  for (int d = 0; d < t.ndim; ++d) s += (d ? ", " : "") + std::to_string(t.shape[d]);
  return s + "]";
}

DType DTypeOf(const DLTensor& t, const char* name) {
  const DLDataType dt = t.dtype;
  if (dt.lanes == 1) {
    if (dt.code == kDLFloat && dt.bits == 32) return DType::kFloat32;
    if (dt.code == kDLFloat && dt.bits == 16) return DType::kFloat16;
    if (dt.code == kDLBfloat && dt.bits == 16) return DType::kBFloat16;
  }
  throw py::type_error(absl::StrFormat(
      "%s must be float32, bfloat16 or float16, got DLPack type code %d with %d bits",
      name, dt.code, dt.bits));
}

// A NumPy array through the buffer protocol: read-only arrays (memory-mapped
// weight files) are taken as they are. NumPy has no bfloat16.
ImportedTensor ImportArray(const py::array& array, const char* name) {
  const char kind = array.dtype().kind();
  const py::ssize_t itemsize = array.itemsize();
  DType dtype;
  if (kind == 'f' && itemsize == 4) {
    dtype = DType::kFloat32;
  } else if (kind == 'f' && itemsize == 2) {
    dtype = DType::kFloat16;
  } else {
    throw py::type_error(absl::StrFormat(
        "%s must be float32 or float16 (NumPy has no bfloat16), got numpy dtype %s", name,
        std::string(py::str(array.dtype()))));
  }
  if (array.ndim() != 2) {
    throw py::value_error(absl::StrFormat(
        "%s must be 2-D, got shape %s", name,
        std::string(py::str(py::tuple(array.attr("shape"))))));
  }
  const bool empty = array.shape(0) == 0 || array.shape(1) == 0;
  if (!empty && !(array.flags() & py::array::c_style)) {
    throw py::value_error(absl::StrFormat(
        "%s must be C-contiguous (row-major, no gaps); got shape [%d, %d] with strides "
        "[%d, %d] bytes. Call numpy.ascontiguousarray first: the cache does not copy "
        "silently",
        name, array.shape(0), array.shape(1), array.strides(0), array.strides(1)));
  }
  return ImportedTensor::FromArray(array, dtype);
}

}  // namespace

// absl::Status -> the Python exception a caller expects.
void ThrowIfError(const absl::Status& status) {
  if (status.ok()) return;
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      throw py::value_error(message);
    case absl::StatusCode::kResourceExhausted:
      PyErr_SetString(PyExc_MemoryError, message.c_str());
      throw py::error_already_set();
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kPermissionDenied:
      PyErr_SetString(PyExc_OSError, message.c_str());
      throw py::error_already_set();
    default:
      throw std::runtime_error(message);
  }
}

std::string TypeName(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__"));
}

ImportedTensor ImportMatrix(py::handle obj, const char* name) {
  if (py::isinstance<py::array>(obj)) {
    return ImportArray(py::reinterpret_borrow<py::array>(obj), name);
  }
  if (!py::hasattr(obj, "__dlpack__")) {
    throw py::type_error(absl::StrFormat(
        "%s must be a tensor supporting DLPack (torch.Tensor or numpy.ndarray), got %s",
        name, TypeName(obj)));
  }
  py::object capsule = obj.attr("__dlpack__")();
  auto* managed = static_cast<DLManagedTensor*>(
      PyCapsule_GetPointer(capsule.ptr(), "dltensor"));
  if (managed == nullptr) throw py::error_already_set();
  PyCapsule_SetName(capsule.ptr(), "used_dltensor");
  ImportedTensor imported = ImportedTensor::FromDLPack(managed);
  const DLTensor& t = managed->dl_tensor;
  if (t.device.device_type != kDLCPU) {
    throw py::value_error(absl::StrFormat(
        "%s must be on the CPU, got DLPack device type %d", name, t.device.device_type));
  }
  if (t.ndim != 2) {
    throw py::value_error(absl::StrFormat("%s must be 2-D, got shape %s", name,
                                          ShapeString(t)));
  }
  imported.dtype_ = DTypeOf(t, name);
  imported.shape_[0] = t.shape[0];
  imported.shape_[1] = t.shape[1];
  // Strides of size-1 dimensions do not matter, nor any of an empty tensor;
  // null strides mean compact.
  bool contiguous = true;
  if (t.strides != nullptr && t.shape[0] != 0 && t.shape[1] != 0) {
    if (t.shape[1] > 1 && t.strides[1] != 1) contiguous = false;
    if (t.shape[0] > 1 && t.strides[0] != t.shape[1]) contiguous = false;
  }
  if (!contiguous) {
    throw py::value_error(absl::StrFormat(
        "%s must be C-contiguous (row-major, no gaps); got shape %s with strides [%d, %d]. "
        "Call .contiguous() first: the cache does not copy silently",
        name, ShapeString(t), t.strides[0], t.strides[1]));
  }
  if (t.data == nullptr && t.shape[0] * t.shape[1] != 0) {
    throw py::value_error(absl::StrFormat("%s has no data", name));
  }
  return imported;
}

int64_t IntArg(py::handle obj, const char* name, int64_t lo, int64_t hi) {
  if (PyBool_Check(obj.ptr())) {
    throw py::type_error(absl::StrFormat("%s must be an int, got bool", name));
  }
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) {
    PyErr_Clear();
    throw py::type_error(absl::StrFormat("%s must be an int, got %s", name, TypeName(obj)));
  }
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0 || value < lo || value > hi) {
    throw py::value_error(absl::StrFormat("%s must be in [%d, %d], got %s", name, lo, hi,
                                          std::string(py::str(index))));
  }
  return value;
}

int NumThreadsArg(py::handle obj) {
  return static_cast<int>(IntArg(obj, "num_threads", 1, kMaxThreads));
}

py::buffer_info MaskBuffer(const py::array& mask) {
  py::buffer_info info = mask.request();
  const bool byte_type = info.itemsize == 1 && (info.format == "?" || info.format == "B");
  if (!byte_type) {
    throw py::type_error(absl::StrFormat(
        "mask must be bool or uint8, got numpy format '%s' of %d bytes", info.format,
        info.itemsize));
  }
  if (info.ndim != 1 && info.ndim != 2) {
    throw py::value_error(
        absl::StrFormat("mask must be 1-D [I] or 2-D [tokens, I], got %d dimensions", info.ndim));
  }
  if (!(mask.flags() & py::array::c_style)) {
    throw py::value_error("mask must be C-contiguous");
  }
  if (info.ndim == 2 && info.shape[0] == 0) {
    throw py::value_error(absl::StrFormat(
        "a [tokens, I] mask needs at least one token, got shape [0, %d]", info.shape[1]));
  }
  return info;
}

cache::PackedLayout ParseLayout(const std::string& layout) {
  absl::StatusOr<cache::PackedLayout> parsed = cache::ParsePackedLayout(layout);
  ThrowIfError(parsed.status());
  return *parsed;
}

mlp::Activation ActivationArg(const std::string& name) {
  absl::StatusOr<mlp::Activation> a = mlp::ParseActivation(name);
  ThrowIfError(a.status());
  return *a;
}

TokenArgs ImportTokens(const py::object& x, const py::object& out, size_t hidden, DType weights) {
  TokenArgs a{ImportMatrix(x, "x"), ImportMatrix(out, "out")};
  if (static_cast<size_t>(a.x.cols()) != hidden || a.x.rows() == 0) {
    throw py::value_error(absl::StrFormat("x must be [tokens >= 1, hidden_size=%d], got %s",
                                          hidden, a.x.ShapeString()));
  }
  if (a.x.dtype() != DType::kFloat32 && weights == DType::kFloat32) {
    throw py::type_error(absl::StrFormat(
        "x must be float32 (with float32 or quantized weights), got %s",
        cache::DTypeName(a.x.dtype())));
  }
  if (a.x.dtype() != DType::kFloat32 && a.x.dtype() != weights) {
    throw py::type_error(absl::StrFormat("x must be float32 or %s (the weights' type), got %s",
                                         cache::DTypeName(weights),
                                         cache::DTypeName(a.x.dtype())));
  }
  if (!a.out.writable()) throw py::value_error("out must be writable, got a read-only array");
  if (a.out.rows() != a.x.rows() || a.out.cols() != a.x.cols()) {
    throw py::value_error(absl::StrFormat("out must have x's shape %s, got %s",
                                          a.x.ShapeString(), a.out.ShapeString()));
  }
  if (a.out.dtype() != a.x.dtype()) {
    throw py::type_error(absl::StrFormat("out must have x's type %s, got %s",
                                         cache::DTypeName(a.x.dtype()),
                                         cache::DTypeName(a.out.dtype())));
  }
  return a;
}

ImportedMlp ImportMlp(const py::object& gate, const py::object& up, const py::object& down,
                      int64_t hidden_size, bool down_neuron_major, const std::string& prefix) {
  ImportedMlp m;
  m.has_gate = !gate.is_none();
  m.up = ImportMatrix(up, "up_weight");
  m.dtype = m.up.dtype();
  m.neurons = m.up.rows();
  if (m.neurons == 0) {
    throw py::value_error(absl::StrFormat(
        "%sintermediate_size must be positive, got 0 (up_weight has shape %s)", prefix,
        m.up.ShapeString()));
  }
  if (m.up.cols() != hidden_size) {
    throw py::value_error(absl::StrFormat(
        "%sup_weight must be [intermediate_size, hidden_size=%d], got %s", prefix, hidden_size,
        m.up.ShapeString()));
  }
  if (m.has_gate) {
    m.gate = ImportMatrix(gate, "gate_weight");
    if (m.gate.dtype() != m.dtype) {
      throw py::type_error(absl::StrFormat(
          "%sgate_weight and up_weight must have the same dtype, got %s and %s", prefix,
          cache::DTypeName(m.gate.dtype()), cache::DTypeName(m.dtype)));
    }
    if (m.gate.rows() != m.neurons || m.gate.cols() != hidden_size) {
      throw py::value_error(
          absl::StrFormat("%sgate_weight must have up_weight's shape %s, got %s", prefix,
                          m.up.ShapeString(), m.gate.ShapeString()));
    }
  }
  m.down = ImportMatrix(down, "down_weight");
  if (m.down.dtype() != m.dtype) {
    throw py::type_error(absl::StrFormat(
        "%sdown_weight and up_weight must have the same dtype, got %s and %s", prefix,
        cache::DTypeName(m.down.dtype()), cache::DTypeName(m.dtype)));
  }
  const int64_t want0 = down_neuron_major ? m.neurons : hidden_size;
  const int64_t want1 = down_neuron_major ? hidden_size : m.neurons;
  if (m.down.rows() != want0 || m.down.cols() != want1) {
    throw py::value_error(absl::StrFormat("%sdown_weight must be [%d, %d], got %s", prefix,
                                          want0, want1, m.down.ShapeString()));
  }
  return m;
}

quant::RowLayout QuantLayoutArg(const std::string& type, size_t group, size_t hidden) {
  absl::StatusOr<quant::QuantType> t = quant::ParseQuantType(type);
  ThrowIfError(t.status());
  absl::StatusOr<quant::RowLayout> l = quant::RowLayout::Create({*t, group}, hidden);
  ThrowIfError(l.status());
  return *l;
}

ImportedTensor ImportQuantRows(const py::object& obj, const char* name, int64_t rows,
                               const quant::RowLayout& layout) {
  py::array a = ExactArray<uint8_t>(obj, name, "uint8");
  if ((rows >= 0 && a.shape(0) != rows) ||
      static_cast<size_t>(a.shape(1)) != layout.row_bytes()) {
    throw py::value_error(absl::StrFormat(
        "%s must be [%s, %u] rows of %s (%u weights each), got [%d, %d]", name,
        rows >= 0 ? absl::StrCat(rows) : "rows", layout.row_bytes(),
        quant::QuantTypeName(layout.type()), layout.hidden(), a.shape(0), a.shape(1)));
  }
  return ImportedTensor::FromBytes(std::move(a));
}

ImportedMlp ImportQuantMlp(const py::object& gate, const py::object& up, const py::object& down,
                           int64_t hidden_size, const std::string& type, size_t group,
                           const std::string& prefix) {
  const quant::RowLayout layout = QuantLayoutArg(type, group, static_cast<size_t>(hidden_size));
  ImportedMlp m;
  m.quant = quant::QuantFormat{layout.type(), group};
  m.has_gate = !gate.is_none();
  const std::string up_name = prefix + "up_weight";
  m.up = ImportQuantRows(up, up_name.c_str(), -1, layout);
  m.neurons = m.up.rows();
  if (m.neurons == 0) {
    throw py::value_error(absl::StrFormat("%sintermediate_size must be positive, got 0", prefix));
  }
  if (m.has_gate) {
    const std::string name = prefix + "gate_weight";
    m.gate = ImportQuantRows(gate, name.c_str(), m.neurons, layout);
  }
  const std::string down_name = prefix + "down_weight";
  m.down = ImportQuantRows(down, down_name.c_str(), m.neurons, layout);
  return m;
}

// A [I] mask array (bool/uint8, checked by the Python layer) as a NeuronMask
// of `neurons`; `what` names it in the error.
diff::NeuronMask MaskFromArray(const py::array& mask, int64_t neurons, const std::string& what) {
  py::buffer_info info = MaskBuffer(mask);
  if (info.ndim != 1 || info.shape[0] != neurons) {
    throw py::value_error(absl::StrFormat(
        "%s must be 1-D with %d entries (one per neuron), got shape %s", what, neurons,
        py::str(py::tuple(mask.attr("shape"))).cast<std::string>()));
  }
  absl::StatusOr<diff::NeuronMask> m = diff::NeuronMask::FromBytes(
      absl::MakeConstSpan(static_cast<const uint8_t*>(info.ptr), info.shape[0]));
  ThrowIfError(m.status());
  return *std::move(m);
}

void RegisterViews(py::module_& m) {
  py::class_<DLPackView>(m, "DLPackView",
                         "A zero-copy 2-D view of cache storage, consumable by "
                         "torch.from_dlpack / numpy.from_dlpack. Keeps that storage alive.")
      .def("__dlpack__", &DLPackView::Capsule, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const DLPackView&) { return py::make_tuple(1, 0); })
      .def_property_readonly("shape", &DLPackView::shape)
      .def_property_readonly("strides", &DLPackView::strides)
      .def_property_readonly("dtype", &DLPackView::dtype);
}

// k (per token) or threshold: exactly one of them.
step::Selection SelectionArg(const py::object& k, const py::object& threshold, size_t neurons) {
  step::Selection s;
  if (k.is_none() == threshold.is_none()) {
    throw py::value_error("give exactly one of k (neurons per token) and threshold");
  }
  if (!k.is_none()) {
    s.kind = step::Selection::Kind::kTopK;
    s.k = static_cast<size_t>(IntArg(k, "k", 0, static_cast<int64_t>(neurons)));
  } else {
    s.kind = step::Selection::Kind::kThreshold;
    const double t = threshold.cast<double>();
    if (std::isnan(t)) throw py::value_error("threshold must not be NaN");
    s.threshold = static_cast<float>(t);
  }
  return s;
}

IndicesArg::IndicesArg(const py::object& indices)
    : array(py::reinterpret_borrow<py::array>(indices)) {
  if (!py::isinstance<py::array_t<uint32_t>>(indices) || !(array.flags() & py::array::c_style) ||
      array.ndim() != 1) {
    throw py::type_error("indices must be a 1-D C-contiguous uint32 array");
  }
  span = absl::Span<const uint32_t>(static_cast<const uint32_t*>(array.data()),
                                    static_cast<size_t>(array.shape(0)));
}

}  // namespace sparse_mlp::bindings
