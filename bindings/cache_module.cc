#include "bindings/cache_module.h"

#include <pybind11/stl.h>

namespace sparse_mlp::bindings {

void RegisterCache(py::module_& m) {
  using cache::WeightCache;
  py::class_<PyWeightCache>(m, "WeightCache")
      .def(py::init<const py::array&, const py::object&, const py::object&, const py::object&,
                    const py::object&, const py::object&, const py::object&,
                    const std::string&, bool, bool, double, bool, const std::string&,
                    const py::object&>(),
           py::arg("mask"), py::arg("hidden_size"), py::arg("gate"), py::arg("up"),
           py::arg("down"), py::kw_only(), py::arg("num_threads") = 1, py::arg("tolerance") = 0,
           py::arg("layout") = "split", py::arg("copy_sources") = false,
           py::arg("down_neuron_major") = false,
           py::arg("repack_fraction") =
               sparse_mlp::cache::WeightCacheOptions::kDefaultRepackFraction,
           py::arg("concat_gate_up") = false, py::arg("quant_type") = "",
           py::arg("quant_group") = 0)
      .def_readwrite("quantize_x", &PyWeightCache::quantize_x)
      .def("update", &PyWeightCache::Update, py::arg("mask"))
      .def("update_indices", &PyWeightCache::UpdateIndices, py::arg("indices"))
      .def("catch_up", &PyWeightCache::CatchUp)
      .def("update_topk", &PyWeightCache::UpdateTopK, py::arg("scores"), py::arg("k"))
      .def("update_threshold", &PyWeightCache::UpdateThreshold, py::arg("scores"),
           py::arg("threshold"))
      .def("reserve", &PyWeightCache::Reserve, py::arg("active"))
      .def("verify", &PyWeightCache::Verify)
      .def("gate", &PyWeightCache::Gate)
      .def("up", [](const PyWeightCache& c) {
        return c.View([](const WeightCache& w) { return w.up(); });
      })
      .def("down_rows", [](const PyWeightCache& c) {
        return c.View([](const WeightCache& w) { return w.down_rows(); });
      })
      .def("down_hidden_major", [](const PyWeightCache& c) {
        return c.View([](const WeightCache& w) { return w.down_hidden_major(); });
      })
      .def("gate_up_interleaved", &PyWeightCache::Interleaved)
      .def("concatenated_gate_up", &PyWeightCache::Concatenated)
      .def("copy_concatenated_gate_up", &PyWeightCache::CopyConcatenatedGateUp, py::arg("out"))
      .def("forward", &PyWeightCache::Forward, py::arg("x"), py::arg("out"), py::kw_only(),
           py::arg("activation") = "silu", py::arg("accumulate") = false)
      .def("step", &PyWeightCache::Step, py::arg("mask"), py::arg("x"), py::arg("out"),
           py::kw_only(), py::arg("activation") = "silu", py::arg("accumulate") = false)
      .def("active_indices", &PyWeightCache::ActiveIndices)
      .def("last_update", &PyWeightCache::LastUpdate)
      .def_property_readonly("num_active", [](const PyWeightCache& c) {
        return c.Read([](const WeightCache& w) { return w.num_active(); });
      })
      .def_property_readonly("capacity", [](const PyWeightCache& c) {
        return c.Read([](const WeightCache& w) { return w.capacity(); });
      })
      .def_property_readonly("hidden_size", [](const PyWeightCache& c) {
        return c.Read([](const WeightCache& w) { return w.hidden_size(); });
      })
      .def_property_readonly("intermediate_size", &PyWeightCache::intermediate_size)
      .def_property_readonly("has_gate", [](const PyWeightCache& c) {
        return c.Read([](const WeightCache& w) { return w.has_gate(); });
      })
      .def_property_readonly("dtype", [](const PyWeightCache& c) {
        return c.Read(
            [](const WeightCache& w) -> std::string {
              return w.quant().has_value() ? quant::QuantTypeName(w.quant()->type)
                                           : sparse_mlp::cache::DTypeName(w.dtype());
            });
      })
      .def_property_readonly("lag", [](const PyWeightCache& c) {
        return c.Read([](const WeightCache& w) { return w.lag(); });
      })
      .def_property_readonly("version", [](const PyWeightCache& c) {
        return c.Read([](const WeightCache& w) { return w.version(); });
      })
      .def_property_readonly("memory_bytes", [](const PyWeightCache& c) {
        return c.Read([](const WeightCache& w) { return w.memory_bytes(); });
      })
      .def_property(
          "num_threads",
          [](const PyWeightCache& c) {
            return c.Read([](const WeightCache& w) { return w.num_threads(); });
          },
          &PyWeightCache::SetNumThreads)
      .def_property(
          "tolerance",
          [](const PyWeightCache& c) {
            return c.Read([](const WeightCache& w) { return w.tolerance(); });
          },
          &PyWeightCache::SetTolerance);
}

}  // namespace sparse_mlp::bindings
