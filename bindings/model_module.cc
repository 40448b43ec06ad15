#include "bindings/model_module.h"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "bindings/cache_module.h"
#include "bindings/convert.h"
#include "cache/model_cache.h"
#include "cache/weight_cache.h"

namespace sparse_mlp::bindings {
namespace {

// The native ModelCache: every layer's cache in one pool (cache/model_cache.h)
// and a PyWeightCache handle per layer sharing it.
class PyModelCache {
 public:
  // `layers`: a sequence of (gate or None, up, down) per layer, each as
  // WeightCache takes them and all of one shape and dtype; `masks`: None or
  // one [I] mask per layer.
  PyModelCache(const py::sequence& layers, const py::object& masks,
               double expected_active_fraction, const py::object& num_threads_arg,
               const py::object& tolerance_arg, const std::string& layout, bool copy_sources,
               bool down_neuron_major, double repack_fraction, const std::string& quant_type,
               const py::object& quant_group_arg, const py::object& hidden_arg) {
    // Quantized rows: every layer's [I, row_bytes] uint8 gate / up /
    // neuron-major down rows of one format; hidden_size given.
    const bool quantized = !quant_type.empty();
    const size_t quant_group =
        quantized ? static_cast<size_t>(
                        IntArg(quant_group_arg, "group", 0, std::numeric_limits<int32_t>::max()))
                  : 0;
    if (quantized) down_neuron_major = true;
    const size_t num_layers = layers.size();
    if (num_layers == 0) throw py::value_error("a model needs at least one layer, got 0");
    if (num_layers > cache::WeightCache::kMaxBatchCaches) {
      throw py::value_error(absl::StrFormat("a model holds at most %u layers, got %u",
                                            cache::WeightCache::kMaxBatchCaches, num_layers));
    }
    const int num_threads = NumThreadsArg(num_threads_arg);
    const int64_t tolerance =
        IntArg(tolerance_arg, "tolerance", 0, std::numeric_limits<int64_t>::max());
    auto state = std::make_shared<State>();
    std::vector<ImportedMlp> imported;
    std::vector<cache::MlpWeights> weights;
    int64_t hidden = 0;
    for (size_t l = 0; l < num_layers; ++l) {
      const std::string prefix = absl::StrFormat("layer %u: ", l);
      const py::object item = layers[l];
      if (!py::isinstance<py::sequence>(item) || py::len(item) != 3) {
        throw py::type_error(absl::StrFormat(
            "%sexpected a (gate, up, down) triple, got %s", prefix, TypeName(item)));
      }
      const py::sequence triple = item.cast<py::sequence>();
      if (l == 0 && quantized) {
        hidden = IntArg(hidden_arg, "hidden_size", 1, std::numeric_limits<int32_t>::max());
      } else if (l == 0) {
        const ImportedTensor probe = ImportMatrix(triple[1], "up_weight");
        hidden = probe.cols();
        if (hidden == 0) throw py::value_error("layer 0: up_weight has hidden size 0");
      }
      imported.push_back(quantized ? ImportQuantMlp(triple[0], triple[1], triple[2], hidden,
                                                    quant_type, quant_group, prefix)
                                   : ImportMlp(triple[0], triple[1], triple[2], hidden,
                                               down_neuron_major, prefix));
      const ImportedMlp& m = imported.back();
      const ImportedMlp& first = imported.front();
      if (m.dtype != first.dtype || m.neurons != first.neurons || m.has_gate != first.has_gate) {
        throw py::value_error(absl::StrFormat(
            "%s%s up_weight %s%s differs from layer 0's %s %s%s: every layer must have one "
            "shape and dtype",
            prefix, cache::DTypeName(m.dtype), m.up.ShapeString(),
            m.has_gate ? "" : " without gate", cache::DTypeName(first.dtype),
            first.up.ShapeString(), first.has_gate ? "" : " without gate"));
      }
      weights.push_back(m.Weights());
    }
    std::vector<diff::NeuronMask> initial;
    if (!masks.is_none()) {
      const py::sequence seq = masks.cast<py::sequence>();
      if (seq.size() != num_layers) {
        throw py::value_error(absl::StrFormat("masks: %u masks for %u layers", seq.size(),
                                              num_layers));
      }
      for (size_t l = 0; l < num_layers; ++l) {
        initial.push_back(MaskFromArray(seq[l].cast<py::array>(), imported[0].neurons,
                                        absl::StrFormat("masks[%u]", l)));
      }
    }
    cache::ModelCacheOptions o;
    o.num_layers = num_layers;
    cache::WeightCacheOptions& l = o.layer;
    l.hidden_size = static_cast<size_t>(hidden);
    l.intermediate_size = static_cast<size_t>(imported[0].neurons);
    l.dtype = imported[0].dtype;
    l.has_gate = imported[0].has_gate;
    l.layout = ParseLayout(layout);
    l.ownership = copy_sources ? cache::SourceOwnership::kCopy : cache::SourceOwnership::kBorrow;
    l.down_layout =
        down_neuron_major ? cache::DownLayout::kNeuronMajor : cache::DownLayout::kHiddenMajor;
    l.num_threads = num_threads;
    l.tolerance = static_cast<size_t>(tolerance);
    l.repack_fraction = repack_fraction;
    l.quant = imported[0].quant;
    o.expected_active_fraction = expected_active_fraction;
    absl::StatusOr<std::unique_ptr<cache::ModelCache>> model;
    {
      py::gil_scoped_release release;
      model = cache::ModelCache::Create(o, weights, initial);
    }
    ThrowIfError(model.status());
    if (!copy_sources) {
      for (ImportedMlp& m : imported) {
        state->sources.push_back(std::move(m.gate));
        state->sources.push_back(std::move(m.up));
        if (down_neuron_major) state->sources.push_back(std::move(m.down));
      }
    }
    state->model = *std::move(model);
    state->mutexes = std::make_unique<std::mutex[]>(num_layers);
    for (size_t l = 0; l < num_layers; ++l) {
      layers_.push_back(py::cast(new PyWeightCache(state, *state->model->layer(l),
                                                   &state->mutexes[l]),
                                 py::return_value_policy::take_ownership));
    }
    state_ = std::move(state);
  }

  size_t num_layers() const { return layers_.size(); }

  py::object Layer(const py::object& index) const {
    const int64_t l = IntArg(index, "layer", 0, static_cast<int64_t>(layers_.size()) - 1);
    return layers_[static_cast<size_t>(l)];
  }

  // `updates`: a sequence of (layer, [I] mask) pairs, each layer at most
  // once; applied as one batch (ModelCache::UpdateMany) with the GIL
  // released and those layers' mutexes held.
  void UpdateMany(const py::sequence& updates) {
    const int64_t max_layer = static_cast<int64_t>(layers_.size()) - 1;
    std::vector<diff::NeuronMask> masks;
    std::vector<size_t> layers;
    masks.reserve(updates.size());
    for (size_t k = 0; k < updates.size(); ++k) {
      const py::object item = updates[k];
      if (!py::isinstance<py::sequence>(item) || py::len(item) != 2) {
        throw py::type_error(absl::StrFormat("updates[%u]: expected a (layer, mask) pair, got %s",
                                             k, TypeName(item)));
      }
      const py::sequence pair = item.cast<py::sequence>();
      layers.push_back(static_cast<size_t>(
          IntArg(pair[0], absl::StrFormat("updates[%u] layer", k).c_str(), 0, max_layer)));
      masks.push_back(MaskFromArray(pair[1].cast<py::array>(),
                                    static_cast<int64_t>(state_->model->options().layer.intermediate_size),
                                    absl::StrFormat("updates[%u] mask", k)));
    }
    std::vector<cache::LayerMask> batch;
    for (size_t k = 0; k < masks.size(); ++k) batch.push_back({layers[k], &masks[k]});
    // Each named layer's mutex, in ascending order (no deadlock with calls
    // that take one), once per layer (a repeated layer is the model's error).
    std::vector<size_t> lock_order = layers;
    std::sort(lock_order.begin(), lock_order.end());
    lock_order.erase(std::unique(lock_order.begin(), lock_order.end()), lock_order.end());
    absl::Status status;
    {
      py::gil_scoped_release release;
      std::vector<std::unique_lock<std::mutex>> locks;
      for (size_t l : lock_order) locks.emplace_back(state_->mutexes[l]);
      status = state_->model->UpdateMany(batch);
    }
    ThrowIfError(status);
  }

  // Like the accessors of PyWeightCache: every layer's mutex while reading.
  template <typename F>
  auto ReadAll(F&& f) const {
    std::vector<std::unique_lock<std::mutex>> locks;
    for (size_t l = 0; l < layers_.size(); ++l) locks.emplace_back(state_->mutexes[l]);
    return f(static_cast<const cache::ModelCache&>(*state_->model));
  }

  py::dict Footprint() const {
    const cache::ModelFootprint f =
        ReadAll([](const cache::ModelCache& m) { return m.footprint(); });
    py::dict d;
    d["weight_bytes"] = f.weight_bytes;
    d["cache_bytes"] = f.cache_bytes;
    d["packed_bytes"] = f.packed_bytes;
    d["pool_capacity"] = f.pool_capacity;
    d["pool_in_use"] = f.pool_in_use;
    d["pool_blocks"] = f.pool_blocks;
    return d;
  }

  static py::dict TotalsDict(const cache::UpdateTotals& t) {
    py::dict d;
    d["updates"] = t.updates;
    d["skipped"] = t.skipped;
    d["changed_neurons"] = t.changed_neurons;
    d["rows_loaded"] = t.rows_loaded;
    d["rows_moved"] = t.rows_moved;
    d["bytes_copied"] = t.bytes_copied;
    d["repacks"] = t.repacks;
    d["growths"] = t.growths;
    return d;
  }

  py::dict LayerStats(const py::object& index) const {
    const int64_t l = IntArg(index, "layer", 0, static_cast<int64_t>(layers_.size()) - 1);
    std::lock_guard<std::mutex> lock(state_->mutexes[l]);
    const cache::LayerStats s = *state_->model->layer_stats(static_cast<size_t>(l));
    py::dict d;
    d["active"] = s.active;
    d["capacity"] = s.capacity;
    d["lag"] = s.lag;
    d["memory_bytes"] = s.memory_bytes;
    d["churn"] = s.churn;
    d["totals"] = TotalsDict(s.totals);
    return d;
  }

  py::dict Totals() const {
    return TotalsDict(ReadAll([](const cache::ModelCache& m) { return m.totals(); }));
  }

 private:
  struct State {
    // Borrowed sources (declared first: destroyed after the caches).
    std::vector<ImportedTensor> sources;
    std::unique_ptr<cache::ModelCache> model;
    std::unique_ptr<std::mutex[]> mutexes;
  };
  std::shared_ptr<State> state_;
  std::vector<py::object> layers_;
};

}  // namespace

void RegisterModel(py::module_& m) {
  py::class_<PyModelCache>(m, "ModelCache")
      .def(py::init<const py::sequence&, const py::object&, double, const py::object&,
                    const py::object&, const std::string&, bool, bool, double,
                    const std::string&, const py::object&, const py::object&>(),
           py::arg("layers"), py::kw_only(), py::arg("masks") = py::none(),
           py::arg("expected_active_fraction") = 0.5, py::arg("num_threads") = 1,
           py::arg("tolerance") = 0, py::arg("layout") = "split",
           py::arg("copy_sources") = false, py::arg("down_neuron_major") = false,
           py::arg("repack_fraction") =
               sparse_mlp::cache::WeightCacheOptions::kDefaultRepackFraction,
           py::arg("quant_type") = "", py::arg("quant_group") = 0,
           py::arg("hidden_size") = py::none())
      .def("layer", &PyModelCache::Layer, py::arg("layer"))
      .def("update_many", &PyModelCache::UpdateMany, py::arg("updates"))
      .def("footprint", &PyModelCache::Footprint)
      .def("layer_stats", &PyModelCache::LayerStats, py::arg("layer"))
      .def("totals", &PyModelCache::Totals)
      .def_property_readonly("num_layers", &PyModelCache::num_layers);
}

}  // namespace sparse_mlp::bindings
