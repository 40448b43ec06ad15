// _sparse_mlp: the pybind11 extension behind the `sparse_mlp` Python package
// (imported as sparse_mlp._sparse_mlp; use the package instead). One binding
// source per component, each registering its classes and functions here;
// the conversions they share are in bindings/convert.h.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <string>

#include "bindings/cache_module.h"
#include "bindings/convert.h"
#include "bindings/flash_module.h"
#include "bindings/mask_module.h"
#include "bindings/mlp_module.h"
#include "bindings/model_module.h"
#include "bindings/quant_module.h"
#include "bindings/store_module.h"
#include "platform/simd_level.h"

namespace py = pybind11;

PYBIND11_MODULE(_sparse_mlp, m) {
  m.doc() = "Native core of sparse_mlp (use the sparse_mlp package instead).";
  sparse_mlp::bindings::RegisterViews(m);
  sparse_mlp::bindings::RegisterMlp(m);
  sparse_mlp::bindings::RegisterCache(m);
  sparse_mlp::bindings::RegisterModel(m);
  sparse_mlp::bindings::RegisterStore(m);
  sparse_mlp::bindings::RegisterFlash(m);
  sparse_mlp::bindings::RegisterMasks(m);
  sparse_mlp::bindings::RegisterQuant(m);

  // What `python3 -m sparse_mlp` reports for bug reports.
  m.def(
      "simd_level",
      [] {
        return std::string(sparse_mlp::SimdLevelName(sparse_mlp::Resolve(sparse_mlp::SimdLevel::kBest)));
      },
      "The SIMD level the kernels run at on this CPU (scalar, avx2, avx512).");
  m.def(
      "cpu_features",
      [] {
        py::dict d;
        d["avx512_vpopcntdq"] = sparse_mlp::HasCpuFeature(sparse_mlp::CpuFeature::kAvx512Vpopcntdq);
        d["avx512_bf16"] = sparse_mlp::HasCpuFeature(sparse_mlp::CpuFeature::kAvx512Bf16);
        d["fma"] = sparse_mlp::HasCpuFeature(sparse_mlp::CpuFeature::kFma);
        d["f16c"] = sparse_mlp::HasCpuFeature(sparse_mlp::CpuFeature::kF16c);
        return d;
      },
      "The single CPU features some kernels need beyond their SIMD level.");
  m.def(
      "openmp_max_threads", [] { return omp_get_max_threads(); },
      "omp_get_max_threads(): the team size OpenMP would start by default.");
}
