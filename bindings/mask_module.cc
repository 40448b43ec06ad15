#include "bindings/mask_module.h"

#include <pybind11/numpy.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_format.h"
#include "bindings/cache_module.h"
#include "bindings/convert.h"
#include "step/mask_step.h"

namespace sparse_mlp::bindings {
namespace {

// A [tokens, I] float32 NumPy array to write scores into.
float* ScoresOut(py::array out, size_t tokens, size_t neurons) {
  if (!py::isinstance<py::array_t<float>>(out) || !(out.flags() & py::array::c_style) ||
      !out.writeable() || out.ndim() != 2 || static_cast<size_t>(out.shape(0)) != tokens ||
      static_cast<size_t>(out.shape(1)) != neurons) {
    throw py::value_error(absl::StrFormat(
        "out must be a writable C-contiguous float32 array of shape (%u, %u)", tokens, neurons));
  }
  return static_cast<float*>(out.mutable_data());
}

py::array_t<uint8_t> MaskBytes(const diff::NeuronMask& mask) {
  py::array_t<uint8_t> out(static_cast<py::ssize_t>(mask.size()));
  mask.ToBytes(absl::MakeSpan(out.mutable_data(), mask.size()));
  return out;
}

class PyGateFirst {
 public:
  // ForwardOptions::quantize_x of every call (a quantized gate's pass and
  // the quantized rows it drives); Python's attribute of the same name.
  bool quantize_x = false;

  // A float gate [I, H], or with quant_type ("int8", "q4") quantized rows
  // [I, row_bytes] uint8 of hidden_size weights (x float32 then).
  PyGateFirst(const py::object& gate, const std::string& activation, const std::string& quant_type,
              const py::object& quant_group, const py::object& hidden_size)
      : activation_(ActivationArg(activation)) {
    absl::StatusOr<step::GateFirst> g;
    if (quant_type.empty()) {
      gate_ = ImportMatrix(gate, "gate");
      hidden_ = static_cast<size_t>(gate_.cols());
      g = step::GateFirst::Create(gate_.dtype(), hidden_, static_cast<size_t>(gate_.rows()),
                                  gate_.data(), hidden_);
    } else {
      hidden_ = static_cast<size_t>(
          IntArg(hidden_size, "hidden_size", 1, std::numeric_limits<int32_t>::max()));
      const size_t group = static_cast<size_t>(
          IntArg(quant_group, "group", 0, std::numeric_limits<int32_t>::max()));
      const quant::RowLayout layout = QuantLayoutArg(quant_type, group, hidden_);
      gate_ = ImportQuantRows(gate, "gate", -1, layout);
      quant_ = quant::QuantFormat{layout.type(), group};
      g = step::GateFirst::CreateQuant(*quant_, hidden_, static_cast<size_t>(gate_.rows()),
                                       gate_.data(), layout.row_bytes());
    }
    ThrowIfError(g.status());
    native_ = std::make_unique<step::GateFirst>(*std::move(g));
  }

  size_t neurons() const { return static_cast<size_t>(gate_.rows()); }
  size_t hidden() const { return hidden_; }

  void Activations(const py::object& x, py::array out, const py::object& threads) {
    const ImportedTensor xt = ImportMatrix(x, "x");
    if (static_cast<size_t>(xt.cols()) != hidden()) {
      throw py::value_error(absl::StrFormat("x must be [tokens, %u], got %s", hidden(),
                                            xt.ShapeString()));
    }
    const mlp::ConstTokens in{xt.data(), static_cast<size_t>(xt.rows()),
                              static_cast<size_t>(xt.cols()), xt.dtype()};
    float* data = ScoresOut(out, in.tokens, neurons());
    mlp::ForwardOptions o;
    o.activation = activation_;
    o.quantize_x = quantize_x;
    o.num_threads = NumThreadsArg(threads);
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = native_->Activations(in, o, &workspace_,
                                    absl::MakeSpan(data, in.tokens * neurons()));
    }
    ThrowIfError(status);
  }

  void Step(PyWeightCache& cache, const py::object& x, const py::object& out,
            const py::object& k, const py::object& threshold, bool accumulate) {
    const step::Selection sel = SelectionArg(k, threshold, neurons());
    const TokenArgs t = ImportTokens(x, out, hidden(), gate_.dtype());
    mlp::ForwardOptions o;
    o.activation = activation_;
    o.quantize_x = quantize_x;
    o.accumulate = accumulate;
    absl::Status status = cache.RunWithoutGil([&](cache::WeightCache& c) {
      std::lock_guard<std::mutex> lock(mutex_);
      o.num_threads = c.num_threads();
      return native_->Step(&c, sel, t.In(), t.Out(), o, &workspace_);
    });
    ThrowIfError(status);
  }

  // The step on a mask chosen elsewhere, with act from activations().
  void StepSelected(PyWeightCache& cache, const py::object& x, const py::object& out,
                    const py::array& mask, py::array act, bool accumulate) {
    const diff::NeuronMask m = MaskFromArray(mask, static_cast<int64_t>(neurons()), "mask");
    const TokenArgs t = ImportTokens(x, out, hidden(), gate_.dtype());
    if (!py::isinstance<py::array_t<float>>(act) || !(act.flags() & py::array::c_style) ||
        act.ndim() != 2) {
        throw py::type_error("act must be a C-contiguous float32 [tokens, I] array");
    }
    const auto* a = static_cast<const float*>(act.data());
    const size_t n = static_cast<size_t>(act.size());
    mlp::ForwardOptions o;
    o.activation = activation_;
    o.quantize_x = quantize_x;
    o.accumulate = accumulate;
    ThrowIfError(cache.RunWithoutGil([&](cache::WeightCache& c) {
      std::lock_guard<std::mutex> lock(mutex_);
      o.num_threads = c.num_threads();
      return native_->StepSelected(&c, m, absl::MakeConstSpan(a, n), t.In(), t.Out(), o,
                                   &workspace_);
    }));
  }

  // The direct form: up [I, H] and down_rows [I, H] (neuron-major) read
  // in place, no cache.
  void Forward(const py::object& up, const py::object& down_rows, const py::object& x,
               const py::object& out, const py::object& k, const py::object& threshold,
               const py::object& threads, bool accumulate) {
    const step::Selection sel = SelectionArg(k, threshold, neurons());
    if (quant_.has_value()) {
      return ForwardQuant(up, down_rows, x, out, sel, threads, accumulate);
    }
    const ImportedTensor u = ImportMatrix(up, "up");
    const ImportedTensor d = ImportMatrix(down_rows, "down_rows");
    for (const ImportedTensor* t : {&u, &d}) {
      if (t->dtype() != gate_.dtype()) {
        throw py::type_error(absl::StrFormat("up and down_rows must be %s like the gate, got %s",
                                             cache::DTypeName(gate_.dtype()),
                                             cache::DTypeName(t->dtype())));
      }
      if (t->rows() != gate_.rows() || t->cols() != gate_.cols()) {
        throw py::value_error(absl::StrFormat(
            "up and down_rows must be [%d, %d] like the gate, got %s", gate_.rows(),
            gate_.cols(), t->ShapeString()));
      }
    }
    const TokenArgs t = ImportTokens(x, out, hidden(), gate_.dtype());
    mlp::ForwardOptions o;
    o.activation = activation_;
    o.quantize_x = quantize_x;
    o.accumulate = accumulate;
    o.num_threads = NumThreadsArg(threads);
    const mlp::NeuronRows rows{gate_.dtype(), hidden(), neurons(), nullptr, 0,
                               u.data(), hidden(), d.data(), hidden()};
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = native_->Forward(rows, sel, t.In(), t.Out(), o, &workspace_);
    }
    ThrowIfError(status);
  }

  py::array_t<uint8_t> Mask() {
    std::lock_guard<std::mutex> lock(mutex_);
    return MaskBytes(native_->mask());
  }

 private:
  // The direct form over quantized up and neuron-major down rows of the
  // gate's format.
  void ForwardQuant(const py::object& up, const py::object& down_rows, const py::object& x,
                    const py::object& out, const step::Selection& sel, const py::object& threads,
                    bool accumulate) {
    const quant::RowLayout layout = *quant::RowLayout::Create(*quant_, hidden_);
    const ImportedTensor u = ImportQuantRows(up, "up", gate_.rows(), layout);
    const ImportedTensor d = ImportQuantRows(down_rows, "down_rows", gate_.rows(), layout);
    const TokenArgs t = ImportTokens(x, out, hidden(), DType::kFloat32);
    mlp::ForwardOptions o;
    o.activation = activation_;
    o.quantize_x = quantize_x;
    o.accumulate = accumulate;
    o.num_threads = NumThreadsArg(threads);
    const mlp::QuantNeuronRows rows{*quant_,  hidden(),          neurons(), nullptr,
                                    0,        u.data(),          layout.row_bytes(),
                                    d.data(), layout.row_bytes()};
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = native_->Forward(rows, sel, t.In(), t.Out(), o, &workspace_);
    }
    ThrowIfError(status);
  }

  ImportedTensor gate_;  // borrowed: outlives native_
  size_t hidden_ = 0;
  std::optional<quant::QuantFormat> quant_;
  mlp::Activation activation_;
  std::unique_ptr<step::GateFirst> native_;
  mlp::Workspace workspace_;
  std::mutex mutex_;
};

class PyLowRank {
 public:
  PyLowRank(const py::object& a, const py::object& b)
      : a_(ImportMatrix(a, "A")), b_(ImportMatrix(b, "B")) {
    if (a_.dtype() != b_.dtype()) {
      throw py::type_error(absl::StrFormat("A and B must have one type, got %s and %s",
                                           cache::DTypeName(a_.dtype()),
                                           cache::DTypeName(b_.dtype())));
    }
    if (b_.cols() != a_.rows()) {
      throw py::value_error(absl::StrFormat(
          "B must be [I, r] for A [r, H] = %s: B's columns must be %d, got B %s",
          a_.ShapeString(), a_.rows(), b_.ShapeString()));
    }
    absl::StatusOr<step::LowRankPredictor> p = step::LowRankPredictor::Create(
        a_.dtype(), static_cast<size_t>(a_.cols()), static_cast<size_t>(b_.rows()),
        static_cast<size_t>(a_.rows()), a_.data(), static_cast<size_t>(a_.cols()), b_.data(),
        static_cast<size_t>(b_.cols()));
    ThrowIfError(p.status());
    native_ = std::make_unique<step::LowRankPredictor>(*std::move(p));
  }

  size_t neurons() const { return static_cast<size_t>(b_.rows()); }
  size_t hidden() const { return static_cast<size_t>(a_.cols()); }

  mlp::ConstTokens In(const ImportedTensor& xt) const {
    if (static_cast<size_t>(xt.cols()) != hidden()) {
      throw py::value_error(absl::StrFormat("x must be [tokens, %u], got %s", hidden(),
                                            xt.ShapeString()));
    }
    return {xt.data(), static_cast<size_t>(xt.rows()), static_cast<size_t>(xt.cols()),
            xt.dtype()};
  }

  void Scores(const py::object& x, py::array out, const py::object& threads) {
    const ImportedTensor xt = ImportMatrix(x, "x");
    const mlp::ConstTokens in = In(xt);
    float* data = ScoresOut(out, in.tokens, neurons());
    mlp::ForwardOptions o;
    o.num_threads = NumThreadsArg(threads);
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = native_->Scores(in, o, &workspace_, absl::MakeSpan(data, in.tokens * neurons()));
    }
    ThrowIfError(status);
  }

  py::array_t<uint8_t> Select(const py::object& x, const py::object& k,
                              const py::object& threshold, const py::object& threads) {
    const step::Selection sel = SelectionArg(k, threshold, neurons());
    const ImportedTensor xt = ImportMatrix(x, "x");
    const mlp::ConstTokens in = In(xt);
    mlp::ForwardOptions o;
    o.num_threads = NumThreadsArg(threads);
    diff::NeuronMask mask(neurons());
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::lock_guard<std::mutex> lock(mutex_);
      status = native_->Select(in, sel, o, &workspace_, &mask);
    }
    ThrowIfError(status);
    return MaskBytes(mask);
  }

  void Step(PyWeightCache& cache, const py::object& x, const py::object& out,
            const py::object& k, const py::object& threshold, const std::string& activation,
            bool accumulate) {
    const step::Selection sel = SelectionArg(k, threshold, neurons());
    const TokenArgs t = ImportTokens(x, out, hidden(), a_.dtype());
    mlp::ForwardOptions o;
    o.activation = ActivationArg(activation);
    o.accumulate = accumulate;
    ThrowIfError(cache.RunWithoutGil([&](cache::WeightCache& c) {
      std::lock_guard<std::mutex> lock(mutex_);
      o.num_threads = c.num_threads();
      return native_->Step(&c, sel, t.In(), t.Out(), o, &workspace_);
    }));
  }

 private:
  ImportedTensor a_, b_;  // borrowed: outlive native_
  std::unique_ptr<step::LowRankPredictor> native_;
  mlp::Workspace workspace_;
  std::mutex mutex_;
};

}  // namespace

void RegisterMasks(py::module_& m) {
  py::class_<PyGateFirst>(m, "GateFirst")
      .def(py::init<const py::object&, const std::string&, const std::string&, const py::object&,
                    const py::object&>(),
           py::arg("gate"), py::arg("activation") = "silu", py::kw_only(),
           py::arg("quant_type") = "", py::arg("quant_group") = 0,
           py::arg("hidden_size") = py::none())
      .def("activations", &PyGateFirst::Activations, py::arg("x"), py::arg("out"),
           py::kw_only(), py::arg("num_threads") = 1)
      .def("step", &PyGateFirst::Step, py::arg("cache"), py::arg("x"), py::arg("out"),
           py::kw_only(), py::arg("k") = py::none(), py::arg("threshold") = py::none(),
           py::arg("accumulate") = false)
      .def("step_selected", &PyGateFirst::StepSelected, py::arg("cache"), py::arg("x"),
           py::arg("out"), py::arg("mask"), py::arg("act"), py::kw_only(),
           py::arg("accumulate") = false)
      .def("forward", &PyGateFirst::Forward, py::arg("up"), py::arg("down_rows"), py::arg("x"),
           py::arg("out"), py::kw_only(), py::arg("k") = py::none(),
           py::arg("threshold") = py::none(), py::arg("num_threads") = 1,
           py::arg("accumulate") = false)
      .def("mask", &PyGateFirst::Mask)
      .def_readwrite("quantize_x", &PyGateFirst::quantize_x)
      .def_property_readonly("intermediate_size", &PyGateFirst::neurons)
      .def_property_readonly("hidden_size", &PyGateFirst::hidden);

  py::class_<PyLowRank>(m, "LowRankPredictor")
      .def(py::init<const py::object&, const py::object&>(), py::arg("a"), py::arg("b"))
      .def("scores", &PyLowRank::Scores, py::arg("x"), py::arg("out"), py::kw_only(),
           py::arg("num_threads") = 1)
      .def("select", &PyLowRank::Select, py::arg("x"), py::kw_only(),
           py::arg("k") = py::none(), py::arg("threshold") = py::none(),
           py::arg("num_threads") = 1)
      .def("step", &PyLowRank::Step, py::arg("cache"), py::arg("x"), py::arg("out"),
           py::kw_only(), py::arg("k") = py::none(), py::arg("threshold") = py::none(),
           py::arg("activation") = "silu", py::arg("accumulate") = false)
      .def_property_readonly("intermediate_size", &PyLowRank::neurons)
      .def_property_readonly("hidden_size", &PyLowRank::hidden);
}

}  // namespace sparse_mlp::bindings
