#include "bindings/flash_module.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "bindings/convert.h"
#include "bindings/store_module.h"
#include "diff/neuron_mask.h"
#include "flash/flash_cache.h"
#include "quant/format.h"
#include "step/flash_step.h"
#include "step/mask_step.h"
#include "store/bundle_reader.h"

namespace sparse_mlp::bindings {
namespace {

// Neuron indices as a new int64 NumPy array.
py::array_t<int64_t> IndexArray(absl::Span<const uint32_t> v) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(v.size()));
  for (size_t k = 0; k < v.size(); ++k) out.mutable_data()[k] = v[k];
  return out;
}

class PyFlashModelCache {
 public:
  // ForwardOptions::quantize_x of every step (quantized files and gates);
  // Python's attribute of the same name.
  bool quantize_x = false;

  PyFlashModelCache(const std::string& path, const py::object& budget_bytes,
                    const py::object& window, const py::object& num_threads,
                    const std::string& engine, const py::object& queue_depth,
                    const py::object& io_threads, bool verify, const std::string& direct_io,
                    const py::object& chunk_neurons, const py::object& io_lanes) {
    flash::FlashCacheOptions o;
    o.budget_bytes = static_cast<size_t>(
        IntArg(budget_bytes, "budget_bytes", 1, std::numeric_limits<int64_t>::max()));
    o.window = static_cast<size_t>(IntArg(window, "window", 1, 1 << 20));
    o.chunk_neurons = static_cast<size_t>(IntArg(chunk_neurons, "chunk_neurons", 1, 1 << 20));
    o.io_lanes = static_cast<size_t>(IntArg(io_lanes, "io_lanes", 1, 8));
    num_threads_ = NumThreadsArg(num_threads);
    o.reader = ReaderOptionsArg(engine, queue_depth, io_threads, verify, direct_io);
    absl::StatusOr<std::unique_ptr<flash::FlashModelCache>> c;
    {
      py::gil_scoped_release release;
      c = flash::FlashModelCache::Open(path, o);
    }
    ThrowIfFileError(c.status());
    cache_ = *std::move(c);
    mask_ = diff::NeuronMask(cache_->layout().shape().intermediate);
    indices_.reserve(cache_->layout().shape().intermediate);
  }

  size_t Layer(const py::object& index) const {
    return static_cast<size_t>(
        IntArg(index, "layer", 0, static_cast<int64_t>(cache_->num_layers()) - 1));
  }

  // The mask ([I] or [tokens, I] bytes) as sorted indices in indices_.
  void MaskIndices(const py::array& mask) {
    py::buffer_info info = MaskBuffer(mask);
    const size_t n = cache_->layout().shape().intermediate;
    if (static_cast<size_t>(info.shape[info.ndim - 1]) != n) {
      throw py::value_error(absl::StrFormat("mask must have %d entries per token, got %d", n,
                                            info.shape[info.ndim - 1]));
    }
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    const size_t rows = info.ndim == 1 ? 1 : static_cast<size_t>(info.shape[0]);
    ThrowIfError(mask_.AssignByteRowsUnion(absl::MakeConstSpan(bytes, rows * n), rows));
    mask_.ToIndices(&indices_);
  }

  // A step's phases into the totals io_stats() reports (under mutex_).
  void AddTimes(const step::FlashStepTimes& times) {
    plan_seconds_ += times.plan_seconds;
    compute_seconds_ += times.compute_seconds;
    wait_seconds_ += times.wait_seconds;
  }

  void Step(const py::object& layer_arg, const py::array& mask, const py::object& x,
            const py::object& out, const std::string& activation, bool accumulate) {
    const size_t layer = Layer(layer_arg);
    const store::BundleShape& s = cache_->layout().shape();
    const TokenArgs t = ImportTokens(x, out, s.hidden, s.dtype);
    mlp::ForwardOptions o;
    o.activation = ActivationArg(activation);
    o.accumulate = accumulate;
    o.num_threads = num_threads_;
    o.quantize_x = quantize_x;
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      {
        py::gil_scoped_acquire acquire;
        MaskIndices(mask);
      }
      step::FlashStepTimes times;
      status = step::FlashLayerStep(cache_.get(), layer, indices_, t.In(), t.Out(), o, &workspace_,
                                    &times);
      AddTimes(times);
    }
    ThrowIfFileError(status);
  }

  // Gate-first needs each layer's gate in DRAM ([I, H] of the file's
  // type, any float type for a quantized file; or, with quant_type,
  // [I, row_bytes] uint8 quantized rows; the file gate-less): kept
  // (borrowed) with one GateFirst per layer.
  void SetGates(const py::list& gates, const std::string& activation,
                const std::string& quant_type, const py::object& quant_group_arg) {
    const store::BundleShape& s = cache_->layout().shape();
    if (gates.size() != s.layers) {
      throw py::value_error(absl::StrFormat("gates must hold one gate per layer (%d), got %d",
                                            s.layers, gates.size()));
    }
    std::vector<ImportedTensor> imported;
    std::vector<step::GateFirst> natives;
    for (size_t l = 0; l < s.layers; ++l) {
      const std::string name = absl::StrFormat("gates[%d]", l);
      if (!quant_type.empty()) {
        const size_t group = static_cast<size_t>(
            IntArg(quant_group_arg, "group", 0, std::numeric_limits<int32_t>::max()));
        const quant::RowLayout layout = QuantLayoutArg(quant_type, group, s.hidden);
        ImportedTensor g = ImportQuantRows(gates[l], name.c_str(),
                                           static_cast<int64_t>(s.intermediate), layout);
        absl::StatusOr<step::GateFirst> gf = step::GateFirst::CreateQuant(
            {layout.type(), group}, s.hidden, s.intermediate, g.data(), layout.row_bytes());
        ThrowIfError(gf.status());
        imported.push_back(std::move(g));
        natives.push_back(*std::move(gf));
        continue;
      }
      ImportedTensor g = ImportMatrix(gates[l], name.c_str());
      if ((g.dtype() != s.dtype && !s.quant.has_value()) ||
          static_cast<size_t>(g.rows()) != s.intermediate ||
          static_cast<size_t>(g.cols()) != s.hidden) {
        throw py::value_error(absl::StrFormat("%s must be %s [%d, %d] like the file, got %s %s",
                                              name, cache::DTypeName(s.dtype), s.intermediate,
                                              s.hidden, cache::DTypeName(g.dtype()),
                                              g.ShapeString()));
      }
      absl::StatusOr<step::GateFirst> gf =
          step::GateFirst::Create(g.dtype(), s.hidden, s.intermediate, g.data(), s.hidden);
      ThrowIfError(gf.status());
      imported.push_back(std::move(g));
      natives.push_back(*std::move(gf));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    gate_first_.clear();
    for (auto& n : natives) gate_first_.push_back(std::make_unique<step::GateFirst>(std::move(n)));
    gates_ = std::move(imported);
    gate_activation_ = ActivationArg(activation);
  }

  // Gate-first: act(gate x) from the gate in DRAM, the top k (or above the
  // threshold), only their up and down loaded from the file.
  void StepGateFirst(const py::object& layer_arg, const py::object& x, const py::object& out,
                     const py::object& k, const py::object& threshold, bool accumulate) {
    const size_t layer = Layer(layer_arg);
    const store::BundleShape& s = cache_->layout().shape();
    const step::Selection sel = SelectionArg(k, threshold, s.intermediate);
    const TokenArgs t = ImportTokens(x, out, s.hidden, s.dtype);
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      if (gate_first_.empty()) {
        status = absl::FailedPreconditionError(
            "gate-first needs the gates in DRAM: open the cache with gates=[...]");
      } else {
        mlp::ForwardOptions o;
        o.activation = gate_activation_;
        o.accumulate = accumulate;
        o.num_threads = num_threads_;
        o.quantize_x = quantize_x;
        step::FlashStepTimes times;
        status = gate_first_[layer]->FlashStep(cache_.get(), layer, sel, t.In(), t.Out(), o,
                                               &workspace_, &times);
        AddTimes(times);
      }
    }
    ThrowIfFileError(status);
  }

  // Speculative gate-first: the top `count` neurons by |act(gate x_early)|
  // of layer `layer`, their reads started (step/mask_step.h's Speculate);
  // returns how many it fetched or found resident.
  size_t SpeculateGateFirst(const py::object& layer_arg, const py::object& x_early,
                            const py::object& count_arg) {
    const size_t layer = Layer(layer_arg);
    const store::BundleShape& s = cache_->layout().shape();
    const int64_t count =
        IntArg(count_arg, "count", 0, static_cast<int64_t>(s.intermediate));
    const ImportedTensor xt = ImportMatrix(x_early, "x_early");
    if (static_cast<size_t>(xt.cols()) != s.hidden || xt.rows() == 0) {
      throw py::value_error(absl::StrFormat("x_early must be [tokens >= 1, %d], got %s", s.hidden,
                                            xt.ShapeString()));
    }
    const mlp::ConstTokens in{xt.data(), static_cast<size_t>(xt.rows()), s.hidden, xt.dtype()};
    absl::Status status;
    size_t fetched = 0;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      if (gate_first_.empty()) {
        status = absl::FailedPreconditionError(
            "speculative gate-first needs the gates in DRAM: open the cache with gates=[...]");
      } else {
        mlp::ForwardOptions o;
        o.activation = gate_activation_;
        o.num_threads = num_threads_;
        o.quantize_x = quantize_x;
        status = gate_first_[layer]->Speculate(cache_.get(), layer, in,
                                               static_cast<size_t>(count), o, &workspace_);
        fetched = gate_first_[layer]->speculation().size();
      }
    }
    ThrowIfFileError(status);
    return fetched;
  }

  // Layer `layer`'s last speculative set and last gate-first selection
  // (int64 arrays, ascending).
  py::array_t<int64_t> Speculation(const py::object& layer_arg) {
    const size_t layer = Layer(layer_arg);
    std::lock_guard<std::mutex> lock(mutex_);
    if (gate_first_.empty()) throw py::value_error("no gates: open the cache with gates=[...]");
    return IndexArray(gate_first_[layer]->speculation());
  }
  py::array_t<int64_t> Selection(const py::object& layer_arg) {
    const size_t layer = Layer(layer_arg);
    std::lock_guard<std::mutex> lock(mutex_);
    if (gate_first_.empty()) throw py::value_error("no gates: open the cache with gates=[...]");
    return IndexArray(gate_first_[layer]->mask().ToIndices());
  }

  // Makes `mask` resident in `layer` (loads, no compute).
  void Update(const py::object& layer_arg, const py::array& mask) {
    const size_t layer = Layer(layer_arg);
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      {
        py::gil_scoped_acquire acquire;
        MaskIndices(mask);
      }
      flash::FlashStepPlan plan;
      status = cache_->BeginStep(layer, indices_, &plan);
      if (status.ok()) status = cache_->FinishStep(layer);
    }
    ThrowIfFileError(status);
  }

  void Prefetch(const py::object& layer_arg, const py::array& mask) {
    const size_t layer = Layer(layer_arg);
    std::lock_guard<std::mutex> lock(mutex_);
    MaskIndices(mask);
    ThrowIfFileError(cache_->Prefetch(layer, indices_));
  }

  // Pins the neurons `mask` marks (flash/flash_cache.h's Pin).
  void Pin(const py::object& layer_arg, const py::array& mask) {
    const size_t layer = Layer(layer_arg);
    std::lock_guard<std::mutex> lock(mutex_);
    MaskIndices(mask);
    ThrowIfFileError(cache_->Pin(layer, indices_));
  }

  void Verify(const py::object& layer_arg) {
    const size_t layer = Layer(layer_arg);
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = cache_->Verify(layer);
    }
    ThrowIfFileError(status);
  }

  py::array_t<int64_t> Resident(const py::object& layer_arg) {
    const size_t layer = Layer(layer_arg);
    std::lock_guard<std::mutex> lock(mutex_);
    return IndexArray(cache_->resident_neurons(layer));
  }

  py::dict LayerStats(const py::object& layer_arg) {
    const flash::FlashLayerStats s = cache_->layer_stats(Layer(layer_arg));
    py::dict d;
    d["steps"] = s.steps;
    d["hits"] = s.hits;
    d["loads"] = s.loads;
    d["evictions"] = s.evictions;
    d["expirations"] = s.expirations;
    d["failed_loads"] = s.failed_loads;
    d["resident"] = s.resident;
    d["capacity"] = s.capacity;
    return d;
  }

  py::dict IoStats() {
    const store::ReaderStats s = cache_->io_stats();
    py::dict d;
    d["bytes_read"] = s.bytes_read;
    d["requests"] = s.requests;
    d["bundles"] = s.bundles;
    d["mean_request_bytes"] = s.requests == 0 ? 0.0 : double(s.bytes_read) / s.requests;
    d["staged_bundles"] = s.staged_bundles;
    d["errors"] = s.errors;
    std::lock_guard<std::mutex> lock(mutex_);
    d["plan_seconds"] = plan_seconds_;
    d["compute_seconds"] = compute_seconds_;
    d["wait_seconds"] = wait_seconds_;
    return d;
  }

  py::dict Footprint() {
    const flash::FlashFootprint f = cache_->footprint();
    py::dict d;
    d["budget_bytes"] = f.budget_bytes;
    d["slot_bytes"] = f.slot_bytes;
    d["resident_bytes"] = f.resident_bytes;
    d["reader_bytes"] = f.reader_bytes;
    d["bookkeeping_bytes"] = f.bookkeeping_bytes;
    d["total_bytes"] = f.total_bytes();
    return d;
  }

  const flash::FlashModelCache& cache() const { return *cache_; }
  int num_threads() const { return num_threads_; }

 private:
  std::unique_ptr<flash::FlashModelCache> cache_;
  int num_threads_ = 1;
  diff::NeuronMask mask_;
  std::vector<uint32_t> indices_;
  mlp::Workspace workspace_;
  double plan_seconds_ = 0, compute_seconds_ = 0, wait_seconds_ = 0;
  // Gate-first: the gates (borrowed, outliving gate_first_) and their steps.
  std::vector<ImportedTensor> gates_;
  std::vector<std::unique_ptr<step::GateFirst>> gate_first_;
  mlp::Activation gate_activation_ = mlp::Activation::kSiLU;
  std::mutex mutex_;  // one call at a time per cache (calls release the GIL)
};

}  // namespace

void RegisterFlash(py::module_& m) {
  py::class_<PyFlashModelCache>(m, "FlashModelCache")
      .def(py::init<const std::string&, const py::object&, const py::object&, const py::object&,
                    const std::string&, const py::object&, const py::object&, bool,
                    const std::string&, const py::object&, const py::object&>(),
           py::arg("path"), py::arg("budget_bytes"), py::kw_only(), py::arg("window") = 1,
           py::arg("num_threads") = 1, py::arg("engine") = "auto", py::arg("queue_depth") = 32,
           py::arg("io_threads") = 4, py::arg("verify") = true, py::arg("direct_io") = "auto",
           py::arg("chunk_neurons") = 64, py::arg("io_lanes") = 1)
      .def_readwrite("quantize_x", &PyFlashModelCache::quantize_x)
      .def("set_gates", &PyFlashModelCache::SetGates, py::arg("gates"),
           py::arg("activation") = "silu", py::kw_only(), py::arg("quant_type") = "",
           py::arg("quant_group") = 0)
      .def("speculate_gate_first", &PyFlashModelCache::SpeculateGateFirst, py::arg("layer"),
           py::arg("x_early"), py::arg("count"))
      .def("speculation", &PyFlashModelCache::Speculation, py::arg("layer"))
      .def("gate_first_selection", &PyFlashModelCache::Selection, py::arg("layer"))
      .def("step_gate_first", &PyFlashModelCache::StepGateFirst, py::arg("layer"), py::arg("x"),
           py::arg("out"), py::kw_only(), py::arg("k") = py::none(),
           py::arg("threshold") = py::none(), py::arg("accumulate") = false)
      .def("step", &PyFlashModelCache::Step, py::arg("layer"), py::arg("mask"), py::arg("x"),
           py::arg("out"), py::kw_only(), py::arg("activation") = "silu",
           py::arg("accumulate") = false)
      .def("update", &PyFlashModelCache::Update, py::arg("layer"), py::arg("mask"))
      .def("prefetch", &PyFlashModelCache::Prefetch, py::arg("layer"), py::arg("mask"))
      .def("pin", &PyFlashModelCache::Pin, py::arg("layer"), py::arg("mask"))
      .def("verify", &PyFlashModelCache::Verify, py::arg("layer"))
      .def("resident_neurons", &PyFlashModelCache::Resident, py::arg("layer"))
      .def("layer_stats", &PyFlashModelCache::LayerStats, py::arg("layer"))
      .def("io_stats", &PyFlashModelCache::IoStats)
      .def("footprint", &PyFlashModelCache::Footprint)
      .def_property_readonly("num_layers",
                             [](const PyFlashModelCache& c) { return c.cache().num_layers(); })
      .def_property_readonly("capacity",
                             [](const PyFlashModelCache& c) { return c.cache().capacity(); })
      .def_property_readonly("window",
                             [](const PyFlashModelCache& c) { return c.cache().window(); })
      .def_property_readonly("num_threads", &PyFlashModelCache::num_threads)
      .def_property_readonly(
          "hidden_size",
          [](const PyFlashModelCache& c) { return c.cache().layout().shape().hidden; })
      .def_property_readonly(
          "intermediate_size",
          [](const PyFlashModelCache& c) { return c.cache().layout().shape().intermediate; })
      .def_property_readonly("dtype",
                             [](const PyFlashModelCache& c) {
                               const store::BundleShape& s = c.cache().layout().shape();
                               return std::string(s.quant.has_value()
                                                      ? quant::QuantTypeName(s.quant->type)
                                                      : DTypeName(s.dtype));
                             })
      .def_property_readonly(
          "gated", [](const PyFlashModelCache& c) { return c.cache().layout().shape().gated; });
}

}  // namespace sparse_mlp::bindings
