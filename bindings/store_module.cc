#include "bindings/store_module.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "bindings/convert.h"
#include "quant/format.h"
#include "store/bundle_format.h"
#include "store/bundle_reader.h"
#include "store/bundle_writer.h"
#include "store/io_engine.h"

namespace sparse_mlp::bindings {

void ThrowIfFileError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kUnimplemented:
      PyErr_SetString(PyExc_OSError, std::string(status.message()).c_str());
      throw py::error_already_set();
    default:
      ThrowIfError(status);
  }
}

store::ReaderOptions ReaderOptionsArg(const std::string& engine, const py::object& queue_depth,
                                      const py::object& io_threads, bool verify,
                                      const std::string& direct_io) {
  store::ReaderOptions o;
  absl::StatusOr<store::IoEngineKind> e = store::ParseIoEngine(engine);
  ThrowIfError(e.status());
  o.engine = *e;
  o.queue_depth = static_cast<int>(IntArg(queue_depth, "queue_depth", 1, 4096));
  o.io_threads = static_cast<int>(IntArg(io_threads, "io_threads", 1, 256));
  o.verify_checksums = verify;
  absl::StatusOr<store::DirectIo> d = store::ParseDirectIo(direct_io);
  ThrowIfError(d.status());
  o.direct_io = *d;
  return o;
}

namespace {

py::dict LayoutDict(const store::BundleLayout& l) {
  const store::BundleShape& s = l.shape();
  py::dict d;
  d["dtype"] = s.quant.has_value() ? quant::QuantTypeName(s.quant->type) : DTypeName(s.dtype);
  d["quant_group"] = s.quant.has_value() ? s.quant->group : 0;
  d["row_bytes"] = l.row_bytes();
  d["hidden_size"] = s.hidden;
  d["intermediate_size"] = s.intermediate;
  d["num_layers"] = s.layers;
  d["gated"] = s.gated;
  d["neuron_begin"] = s.neuron_begin;
  d["model_intermediate_size"] = s.model_intermediate;
  d["alignment"] = l.alignment();
  d["bundle_bytes"] = l.bundle_bytes();
  d["bundle_stride"] = l.bundle_stride();
  d["header_bytes"] = l.header_bytes();
  d["file_bytes"] = l.file_bytes();
  d["format_version"] = store::kFormatVersion;
  return d;
}

class PyBundleWriter {
 public:
  PyBundleWriter(const std::string& path, const py::object& hidden, const py::object& intermediate,
                 const py::object& layers, const std::string& dtype, bool gated,
                 const py::object& alignment, const py::object& neuron_begin,
                 const py::object& model_intermediate, const py::object& num_threads,
                 const py::object& quant_group) {
    store::BundleShape s;
    if (absl::StatusOr<quant::QuantType> q = quant::ParseQuantType(dtype); q.ok()) {
      s.quant = quant::QuantFormat{
          *q, static_cast<size_t>(IntArg(quant_group, "quant_group", 0, store::kMaxHidden))};
    } else {
      absl::StatusOr<DType> d = ParseDType(dtype);
      if (!d.ok()) {
        throw py::value_error(absl::StrFormat(
            "dtype must be float32, bfloat16, float16, int8 or q4, got '%s'", dtype));
      }
      s.dtype = *d;
    }
    s.hidden = IntArg(hidden, "hidden_size", 1, store::kMaxHidden);
    s.intermediate = IntArg(intermediate, "intermediate_size", 1, store::kMaxNeurons);
    s.layers = IntArg(layers, "num_layers", 1, store::kMaxLayers);
    s.gated = gated;
    s.neuron_begin = IntArg(neuron_begin, "neuron_begin", 0, store::kMaxNeurons);
    s.model_intermediate = IntArg(model_intermediate, "model_intermediate_size", 0,
                                  store::kMaxNeurons);
    store::WriterOptions o;
    o.alignment = IntArg(alignment, "alignment", 1, store::kMaxAlignment);
    o.num_threads = NumThreadsArg(num_threads);
    absl::StatusOr<std::unique_ptr<store::BundleWriter>> w;
    {
      py::gil_scoped_release release;
      w = store::BundleWriter::Create(path, s, o);
    }
    ThrowIfFileError(w.status());
    writer_ = *std::move(w);
  }

  // One layer: gate (None for a gate-less file) and up [I_model, H], down
  // [H, I_model] or, neuron-major, [I_model, H]; the file's dtype.
  void AppendLayer(const py::object& gate, const py::object& up, const py::object& down,
                   bool down_neuron_major) {
    const store::BundleShape& s = writer_->layout().shape();
    const std::string prefix = absl::StrFormat("layer %d: ", writer_->layers_written());
    if (s.quant.has_value()) return AppendQuantLayer(gate, up, down, down_neuron_major, prefix);
    ImportedMlp m = ImportMlp(gate, up, down, static_cast<int64_t>(s.hidden), down_neuron_major,
                              prefix);
    if (m.dtype != s.dtype) {
      throw py::type_error(absl::StrFormat("%sthe weights are %s, the file %s", prefix,
                                           DTypeName(m.dtype), DTypeName(s.dtype)));
    }
    if (static_cast<size_t>(m.neurons) != s.model_intermediate) {
      throw py::value_error(absl::StrFormat(
          "%sup_weight has %d neurons, the file's model has %d", prefix, m.neurons,
          s.model_intermediate));
    }
    if (m.has_gate != s.gated) {
      throw py::value_error(absl::StrFormat("%sthe file is %s but gate_weight is %s", prefix,
                                            s.gated ? "gated" : "gate-less",
                                            m.has_gate ? "given" : "None"));
    }
    const store::LayerWeights w{m.has_gate ? m.gate.data() : nullptr, m.up.data(),
                                m.down.data(), down_neuron_major};
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = writer_->AppendLayer(w);
    }
    ThrowIfFileError(status);
  }

  // A quantized file's layer: [I_model, row_bytes] uint8 rows each (down
  // neuron-major: sparse_mlp.quantize_mlp's rows).
  void AppendQuantLayer(const py::object& gate, const py::object& up, const py::object& down,
                        bool down_neuron_major, const std::string& prefix) {
    const store::BundleLayout& l = writer_->layout();
    const store::BundleShape& s = l.shape();
    if (!down_neuron_major) {
      throw py::value_error(prefix +
                            "a quantized file takes down as neuron-major quantized rows "
                            "(down_neuron_major=True)");
    }
    if (gate.is_none() == s.gated) {
      throw py::value_error(absl::StrFormat("%sthe file is %s but gate is %s", prefix,
                                            s.gated ? "gated" : "gate-less",
                                            gate.is_none() ? "None" : "given"));
    }
    using Rows = py::array_t<uint8_t, py::array::c_style>;
    auto rows = [&](const py::object& a, const char* name) -> Rows {
      if (!py::isinstance<py::array_t<uint8_t>>(a)) {
        throw py::type_error(
            absl::StrFormat("%s%s must be a uint8 numpy array of quantized rows", prefix, name));
      }
      Rows r = py::reinterpret_borrow<Rows>(a);
      if (!(py::reinterpret_borrow<py::array>(a).flags() & py::array::c_style) || r.ndim() != 2 ||
          static_cast<size_t>(r.shape(0)) != s.model_intermediate ||
          static_cast<size_t>(r.shape(1)) != l.row_bytes()) {
        throw py::value_error(absl::StrFormat(
            "%s%s must be C-contiguous [%u, %u] quantized rows, got %s", prefix, name,
            s.model_intermediate, l.row_bytes(),
            r.ndim() == 2 ? absl::StrFormat("[%d, %d]", r.shape(0), r.shape(1)) : "another shape"));
      }
      return r;
    };
    Rows g;
    if (s.gated) g = rows(gate, "gate");
    const Rows u = rows(up, "up"), d = rows(down, "down");
    const store::LayerWeights w{s.gated ? g.data() : nullptr, u.data(), d.data(), true};
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = writer_->AppendLayer(w);
    }
    ThrowIfFileError(status);
  }

  void Finish() {
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = writer_->Finish();
    }
    ThrowIfFileError(status);
  }

  py::dict Layout() const { return LayoutDict(writer_->layout()); }
  size_t layers_written() const { return writer_->layers_written(); }

 private:
  std::unique_ptr<store::BundleWriter> writer_;
};

class PyBundleReader {
 public:
  PyBundleReader(const std::string& path, const std::string& engine,
                 const py::object& queue_depth, const py::object& io_threads, bool verify,
                 const std::string& direct_io) {
    const store::ReaderOptions o =
        ReaderOptionsArg(engine, queue_depth, io_threads, verify, direct_io);
    absl::StatusOr<std::unique_ptr<store::BundleReader>> r;
    {
      py::gil_scoped_release release;
      r = store::BundleReader::Open(path, o);
    }
    ThrowIfFileError(r.status());
    reader_ = *std::move(r);
  }

  // Reads bundle (layers[k], neurons[k]) into row k of out ([n, bundle
  // elements], the file's dtype, writable, C-contiguous).
  void ReadInto(const py::array& layers, const py::array& neurons, const py::object& out) {
    const store::BundleLayout& l = reader_->layout();
    auto indices = [](const py::array& a, const char* name) {
      if (!py::isinstance<py::array_t<int64_t>>(a) || a.ndim() != 1 ||
          !(a.flags() & py::array::c_style)) {
        throw py::type_error(absl::StrFormat("%s must be a 1-D C-contiguous int64 array", name));
      }
      return absl::MakeConstSpan(static_cast<const int64_t*>(a.data()),
                                 static_cast<size_t>(a.shape(0)));
    };
    const absl::Span<const int64_t> ls = indices(layers, "layers");
    const absl::Span<const int64_t> ns = indices(neurons, "neurons");
    if (ls.size() != ns.size()) {
      throw py::value_error(absl::StrFormat("layers has %d entries, neurons %d", ls.size(),
                                            ns.size()));
    }
    ImportedTensor t = ImportMatrix(out, "out");
    const size_t elems = l.bundle_bytes() / DTypeSize(l.shape().dtype);
    if (!t.writable()) throw py::value_error("out must be writable, got a read-only array");
    if (t.dtype() != l.shape().dtype) {
      throw py::type_error(absl::StrFormat("out must be %s (the file's dtype), got %s",
                                           DTypeName(l.shape().dtype), DTypeName(t.dtype())));
    }
    if (static_cast<size_t>(t.rows()) != ls.size() || static_cast<size_t>(t.cols()) != elems) {
      throw py::value_error(absl::StrFormat("out must be [%d, %d], got %s", ls.size(), elems,
                                            t.ShapeString()));
    }
    requests_.resize(ls.size());
    auto* base = static_cast<uint8_t*>(const_cast<void*>(t.data()));
    for (size_t k = 0; k < ls.size(); ++k) {
      if (ls[k] < 0 || ns[k] < 0) {
        throw py::value_error(absl::StrFormat("requests[%d]: negative layer or neuron (%d, %d)",
                                              k, ls[k], ns[k]));
      }
      requests_[k] = {static_cast<size_t>(ls[k]), static_cast<size_t>(ns[k]),
                      base + k * l.bundle_bytes()};
    }
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = reader_->Read(requests_);
    }
    ThrowIfFileError(status);
  }

  py::dict Layout() const { return LayoutDict(reader_->layout()); }
  py::dict Stats() const {
    const store::ReaderStats& s = reader_->stats();
    py::dict d;
    d["batches"] = s.batches;
    d["bundles"] = s.bundles;
    d["requests"] = s.requests;
    d["bytes_read"] = s.bytes_read;
    d["staged_bundles"] = s.staged_bundles;
    d["errors"] = s.errors;
    return d;
  }
  std::string engine() const { return store::IoEngineName(reader_->engine()); }
  bool direct_io() const { return reader_->direct_io(); }

 private:
  std::unique_ptr<store::BundleReader> reader_;
  std::vector<store::BundleRequest> requests_;
  std::mutex mutex_;  // one batch at a time (calls release the GIL)
};

}  // namespace

void RegisterStore(py::module_& m) {
  py::class_<PyBundleWriter>(m, "BundleWriter")
      .def(py::init<const std::string&, const py::object&, const py::object&, const py::object&,
                    const std::string&, bool, const py::object&, const py::object&,
                    const py::object&, const py::object&, const py::object&>(),
           py::arg("path"), py::arg("hidden_size"), py::arg("intermediate_size"),
           py::arg("num_layers"), py::arg("dtype"), py::kw_only(), py::arg("gated") = true,
           py::arg("alignment") = store::kDefaultAlignment, py::arg("neuron_begin") = 0,
           py::arg("model_intermediate_size") = 0, py::arg("num_threads") = 1,
           py::arg("quant_group") = 32)
      .def("append_layer", &PyBundleWriter::AppendLayer, py::arg("gate"), py::arg("up"),
           py::arg("down"), py::kw_only(), py::arg("down_neuron_major") = false)
      .def("finish", &PyBundleWriter::Finish)
      .def("layout", &PyBundleWriter::Layout)
      .def_property_readonly("layers_written", &PyBundleWriter::layers_written);
  py::class_<PyBundleReader>(m, "BundleReader")
      .def(py::init<const std::string&, const std::string&, const py::object&, const py::object&,
                    bool, const std::string&>(),
           py::arg("path"), py::kw_only(), py::arg("engine") = "auto",
           py::arg("queue_depth") = 32, py::arg("io_threads") = 4, py::arg("verify") = true,
           py::arg("direct_io") = "auto")
      .def("read_into", &PyBundleReader::ReadInto, py::arg("layers"), py::arg("neurons"),
           py::arg("out"))
      .def("layout", &PyBundleReader::Layout)
      .def("stats", &PyBundleReader::Stats)
      .def_property_readonly("engine", &PyBundleReader::engine)
      .def_property_readonly("direct_io", &PyBundleReader::direct_io);
  m.def("io_engines", [] {
    py::list out;
    for (const store::IoEngineAvailability& a : store::AvailableIoEngines()) {
      out.append(py::make_tuple(store::IoEngineName(a.kind), a.available, a.reason));
    }
    return out;
  });
}

}  // namespace sparse_mlp::bindings
