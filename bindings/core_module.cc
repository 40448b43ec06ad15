// _sparse_mlp: the pybind11 extension behind the `sparse_mlp` Python package.
//
// Tensors cross the boundary through DLPack only, never through copies the
// caller did not ask for:
//   - weights come in via their __dlpack__() (torch tensors, NumPy arrays):
//     CPU, 2-D, C-contiguous, float32 / bfloat16 / float16, else TypeError /
//     ValueError naming the argument and what it got. With copy_sources the
//     cache copies them during construction; otherwise it reads gate and up
//     (and a neuron-major down) in place and keeps their DLPack handles
//     (hence the producers' storage) alive for its lifetime;
//   - views go out as objects implementing __dlpack__ / __dlpack_device__
//     (torch.from_dlpack, numpy.from_dlpack). Each holds a share of the
//     packed buffers (WeightCache::RetainStorage), so no view can reach freed
//     memory, whatever happens to the cache.
// Masks are small inputs read once: any C-contiguous bool/uint8 NumPy array
// (the Python layer converts torch masks).
#include <dlpack/dlpack.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gather/transpose.h"

namespace py = pybind11;

namespace sparse_mlp::bindings {
namespace {

using cache::DType;

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
    default:
      throw std::runtime_error(message);
  }
}

std::string TypeName(py::handle obj) {
  return py::str(py::type::handle_of(obj).attr("__name__"));
}

// A tensor taken from a DLPack producer; calls the producer's deleter when
// destroyed (which releases the producer's storage).
class ImportedTensor {
 public:
  ImportedTensor() = default;
  explicit ImportedTensor(DLManagedTensor* managed) : managed_(managed) {}
  ImportedTensor(ImportedTensor&& other) noexcept
      : managed_(std::exchange(other.managed_, nullptr)) {}
  ImportedTensor& operator=(ImportedTensor&& other) noexcept {
    std::swap(managed_, other.managed_);
    return *this;
  }
  ~ImportedTensor() {
    if (managed_ != nullptr && managed_->deleter != nullptr) managed_->deleter(managed_);
  }
  const DLTensor& tensor() const { return managed_->dl_tensor; }
  const void* data() const {
    return static_cast<const uint8_t*>(tensor().data) + tensor().byte_offset;
  }

 private:
  DLManagedTensor* managed_ = nullptr;
};

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

// Imports `obj` through __dlpack__ and checks it is a C-contiguous 2-D CPU
// tensor. Consumes the capsule (renamed "used_dltensor" per the protocol).
ImportedTensor ImportMatrix(py::handle obj, const char* name) {
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
  ImportedTensor imported(managed);
  const DLTensor& t = imported.tensor();
  if (t.device.device_type != kDLCPU) {
    throw py::value_error(absl::StrFormat(
        "%s must be on the CPU, got DLPack device type %d", name, t.device.device_type));
  }
  if (t.ndim != 2) {
    throw py::value_error(absl::StrFormat("%s must be 2-D, got shape %s", name,
                                          ShapeString(t)));
  }
  // Strides of size-1 dimensions do not matter; null strides mean compact.
  bool contiguous = true;
  if (t.strides != nullptr) {
    if (t.shape[1] > 1 && t.strides[1] != 1) contiguous = false;
    if (t.shape[0] > 1 && t.strides[0] != t.shape[1]) contiguous = false;
  }
  if (!contiguous) {
    throw py::value_error(absl::StrFormat(
        "%s must be C-contiguous (row-major, no gaps); got shape %s with strides [%d, %d]. "
        "Call .contiguous() first: the cache does not copy silently",
        name, ShapeString(t), t.strides ? t.strides[0] : 0, t.strides ? t.strides[1] : 0));
  }
  if (t.data == nullptr && t.shape[0] * t.shape[1] != 0) {
    throw py::value_error(absl::StrFormat("%s has no data", name));
  }
  return imported;
}

// A mask as bytes: a C-contiguous bool or uint8 array of 1 or 2 dimensions.
py::buffer_info MaskBuffer(const py::array& mask) {
  py::buffer_info info = mask.request();
  const bool byte_type = info.itemsize == 1 && (info.format == "?" || info.format == "B" ||
                                                info.format == "b");
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
  return info;
}

// A 2-D strided view handed to Python through DLPack.
class DLPackView {
 public:
  DLPackView(std::shared_ptr<const void> owner, const cache::MatrixView& view)
      : owner_(std::move(owner)), view_(view) {}

  py::capsule Capsule(const py::object& stream) const {
    if (!stream.is_none()) {
      throw py::value_error("stream must be None for CPU tensors");
    }
    struct Context {
      std::shared_ptr<const void> owner;
      int64_t shape[2];
      int64_t strides[2];
      DLManagedTensor managed;
    };
    auto* ctx = new Context{owner_,
                            {static_cast<int64_t>(view_.rows), static_cast<int64_t>(view_.cols)},
                            {static_cast<int64_t>(view_.row_stride),
                             static_cast<int64_t>(view_.col_stride)},
                            {}};
    // Producers must not hand out null data even for empty tensors.
    static const uint64_t kEmpty[8] = {};
    DLTensor& t = ctx->managed.dl_tensor;
    t.data = const_cast<void*>(view_.data != nullptr ? view_.data : kEmpty);
    t.device = {kDLCPU, 0};
    t.ndim = 2;
    t.dtype = view_.dtype == DType::kFloat32   ? DLDataType{kDLFloat, 32, 1}
              : view_.dtype == DType::kFloat16 ? DLDataType{kDLFloat, 16, 1}
                                               : DLDataType{kDLBfloat, 16, 1};
    t.shape = ctx->shape;
    t.strides = ctx->strides;
    t.byte_offset = 0;
    ctx->managed.manager_ctx = ctx;
    ctx->managed.deleter = [](DLManagedTensor* m) {
      delete static_cast<Context*>(m->manager_ctx);
    };
    return py::capsule(&ctx->managed, "dltensor", [](PyObject* capsule) {
      // Only an unconsumed capsule still owns the tensor.
      if (PyCapsule_IsValid(capsule, "dltensor")) {
        auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
        m->deleter(m);
      } else {
        PyErr_Clear();
      }
    });
  }

  std::vector<size_t> shape() const { return {view_.rows, view_.cols}; }
  std::vector<size_t> strides() const { return {view_.row_stride, view_.col_stride}; }
  std::string dtype() const { return cache::DTypeName(view_.dtype); }

 private:
  std::shared_ptr<const void> owner_;
  cache::MatrixView view_;
};

cache::PackedLayout ParseLayout(const std::string& layout) {
  if (layout == "split") return cache::PackedLayout::kSplit;
  if (layout == "interleaved") return cache::PackedLayout::kInterleavedGateUp;
  if (layout == "fused") return cache::PackedLayout::kFusedRows;
  throw py::value_error(
      absl::StrFormat("layout must be 'split', 'interleaved' or 'fused', got '%s'", layout));
}

class PyWeightCache {
 public:
  PyWeightCache(const py::array& mask, int64_t hidden_size, const py::object& gate,
                const py::object& up, const py::object& down, int num_threads,
                int64_t tolerance, const std::string& layout, bool copy_sources,
                bool down_neuron_major, double repack_fraction) {
    if (hidden_size <= 0) {
      throw py::value_error(
          absl::StrFormat("hidden_size must be positive, got %d", hidden_size));
    }
    if (tolerance < 0) {
      throw py::value_error(absl::StrFormat("tolerance must be >= 0, got %d", tolerance));
    }
    const bool has_gate = !gate.is_none();
    if (has_gate) gate_ = ImportMatrix(gate, "gate_weight");
    up_ = ImportMatrix(up, "up_weight");
    down_ = ImportMatrix(down, "down_weight");
    const DLTensor& u = up_.tensor();
    const DType dtype = DTypeOf(u, "up_weight");
    const int64_t neurons = u.shape[0];
    if (u.shape[1] != hidden_size) {
      throw py::value_error(absl::StrFormat(
          "up_weight must be [intermediate_size, hidden_size=%d], got %s", hidden_size,
          ShapeString(u)));
    }
    if (has_gate) {
      if (DTypeOf(gate_.tensor(), "gate_weight") != dtype) {
        throw py::type_error("gate_weight and up_weight must have the same dtype");
      }
      if (gate_.tensor().shape[0] != neurons || gate_.tensor().shape[1] != hidden_size) {
        throw py::value_error(absl::StrFormat("gate_weight must have up_weight's shape %s, got %s",
                                              ShapeString(u), ShapeString(gate_.tensor())));
      }
    }
    if (DTypeOf(down_.tensor(), "down_weight") != dtype) {
      throw py::type_error("down_weight and up_weight must have the same dtype");
    }
    const int64_t want0 = down_neuron_major ? neurons : hidden_size;
    const int64_t want1 = down_neuron_major ? hidden_size : neurons;
    if (down_.tensor().shape[0] != want0 || down_.tensor().shape[1] != want1) {
      throw py::value_error(absl::StrFormat("down_weight must be [%d, %d], got %s", want0,
                                            want1, ShapeString(down_.tensor())));
    }
    py::buffer_info info = MaskBuffer(mask);
    if (info.ndim != 1 || info.shape[0] != neurons) {
      throw py::value_error(absl::StrFormat(
          "initial mask must be 1-D with %d entries (one per neuron), got shape %s", neurons,
          py::str(py::tuple(mask.attr("shape"))).cast<std::string>()));
    }
    absl::StatusOr<diff::NeuronMask> initial = diff::NeuronMask::FromBytes(
        absl::MakeConstSpan(static_cast<const uint8_t*>(info.ptr), info.shape[0]));
    ThrowIfError(initial.status());

    cache::WeightCacheOptions options;
    options.hidden_size = static_cast<size_t>(hidden_size);
    options.intermediate_size = static_cast<size_t>(neurons);
    options.dtype = dtype;
    options.has_gate = has_gate;
    options.layout = ParseLayout(layout);
    options.ownership = copy_sources ? cache::SourceOwnership::kCopy
                                     : cache::SourceOwnership::kBorrow;
    options.down_layout = down_neuron_major ? cache::DownLayout::kNeuronMajor
                                            : cache::DownLayout::kHiddenMajor;
    options.num_threads = num_threads;
    options.tolerance = static_cast<size_t>(tolerance);
    options.repack_fraction = repack_fraction;
    cache::MlpWeights weights{has_gate ? gate_.data() : nullptr, up_.data(), down_.data()};
    absl::StatusOr<cache::WeightCache> created;
    {
      py::gil_scoped_release release;
      created = cache::WeightCache::Create(options, weights, *initial);
    }
    ThrowIfError(created.status());
    cache_ = std::make_unique<cache::WeightCache>(*std::move(created));
    if (copy_sources) {
      // Nothing of the caller's is read again: let the producers go.
      gate_ = ImportedTensor();
      up_ = ImportedTensor();
      down_ = ImportedTensor();
    } else if (!down_neuron_major) {
      down_ = ImportedTensor();  // only the cache's transposed copy is read
    }
  }

  void Update(const py::array& mask) {
    py::buffer_info info = MaskBuffer(mask);
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    absl::Status status;
    {
      py::gil_scoped_release release;
      if (info.ndim == 1) {
        status = cache_->UpdateFromBytes(absl::MakeConstSpan(bytes, info.shape[0]));
      } else {
        status = cache_->UpdateFromByteRows(
            absl::MakeConstSpan(bytes, info.shape[0] * info.shape[1]), info.shape[0]);
      }
    }
    ThrowIfError(status);
  }

  // Sorted, duplicate-free neuron indices (uint32, C-contiguous, 1-D).
  void UpdateIndices(const py::array& indices) {
    if (!py::isinstance<py::array_t<uint32_t>>(indices) ||
        !(indices.flags() & py::array::c_style) || indices.ndim() != 1) {
      throw py::type_error("indices must be a 1-D C-contiguous uint32 array");
    }
    const auto* data = static_cast<const uint32_t*>(indices.data());
    const size_t n = static_cast<size_t>(indices.shape(0));
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = cache_->UpdateFromIndices(absl::MakeConstSpan(data, n));
    }
    ThrowIfError(status);
  }

  void CatchUp() {
    absl::Status status;
    {
      py::gil_scoped_release release;
      status = cache_->CatchUp();
    }
    ThrowIfError(status);
  }

  void Reserve(int64_t active) {
    if (active < 0) throw py::value_error(absl::StrFormat("cannot reserve %d neurons", active));
    ThrowIfError(cache_->Reserve(static_cast<size_t>(active)));
  }

  DLPackView View(const cache::MatrixView& view) const {
    return DLPackView(cache_->RetainStorage(), view);
  }

  DLPackView Gate() const {
    if (!cache_->has_gate()) throw py::value_error("this cache has no gate projection");
    return View(cache_->gate());
  }
  DLPackView Interleaved() const {
    absl::StatusOr<cache::MatrixView> view = cache_->gate_up_interleaved();
    ThrowIfError(view.status());
    return View(*view);
  }

  void CopyConcatenatedGateUp(const py::object& out) {
    ImportedTensor t = ImportMatrix(out, "out");
    if (DTypeOf(t.tensor(), "out") != cache_->dtype()) {
      throw py::type_error(absl::StrFormat("out must be %s", cache::DTypeName(cache_->dtype())));
    }
    const size_t bytes = static_cast<size_t>(t.tensor().shape[0] * t.tensor().shape[1]) *
                         cache::DTypeSize(cache_->dtype());
    if (static_cast<size_t>(t.tensor().shape[1]) != cache_->hidden_size()) {
      throw py::value_error(absl::StrFormat("out must be [2 x num_active, %d], got %s",
                                            cache_->hidden_size(), ShapeString(t.tensor())));
    }
    ThrowIfError(cache_->CopyConcatenatedGateUp(
        absl::MakeSpan(static_cast<uint8_t*>(const_cast<void*>(t.data())), bytes)));
  }

  py::array_t<int64_t> ActiveIndices() const {
    const absl::Span<const uint32_t> slots = cache_->active_indices();
    py::array_t<int64_t> out(static_cast<py::ssize_t>(slots.size()));
    int64_t* p = out.mutable_data();
    for (size_t s = 0; s < slots.size(); ++s) p[s] = slots[s];
    return out;
  }

  py::dict LastUpdate() const {
    const cache::UpdateStats& u = cache_->last_update();
    py::dict d;
    d["changed_neurons"] = u.changed_neurons;
    d["rows_loaded"] = u.rows_loaded;
    d["rows_moved"] = u.rows_moved;
    d["bytes_copied"] = u.bytes_copied;
    d["repacked"] = u.repacked;
    d["skipped"] = u.skipped;
    d["grew"] = u.grew;
    return d;
  }

  const cache::WeightCache& cache() const { return *cache_; }
  cache::WeightCache& cache() { return *cache_; }

 private:
  // Declared before cache_: borrowed sources outlive the cache reading them.
  ImportedTensor gate_, up_, down_;
  std::unique_ptr<cache::WeightCache> cache_;
};

// dst[c][r] = src[r][c], both taken through DLPack (no copies besides the
// transpose itself): src [R, C], dst [C, R], same dtype, C-contiguous.
void TransposeInto(const py::object& src, const py::object& dst, int num_threads) {
  ImportedTensor in = ImportMatrix(src, "src");
  ImportedTensor out = ImportMatrix(dst, "dst");
  const DType dtype = DTypeOf(in.tensor(), "src");
  if (DTypeOf(out.tensor(), "dst") != dtype) {
    throw py::type_error("src and dst must have the same dtype");
  }
  const int64_t rows = in.tensor().shape[0], cols = in.tensor().shape[1];
  if (out.tensor().shape[0] != cols || out.tensor().shape[1] != rows) {
    throw py::value_error(absl::StrFormat("dst must be [%d, %d] for src %s, got %s", cols,
                                          rows, ShapeString(in.tensor()),
                                          ShapeString(out.tensor())));
  }
  if (num_threads < 1) {
    throw py::value_error(absl::StrFormat("num_threads must be at least 1, got %d", num_threads));
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

}  // namespace
}  // namespace sparse_mlp::bindings

PYBIND11_MODULE(_sparse_mlp, m) {
  using sparse_mlp::bindings::DLPackView;
  using sparse_mlp::bindings::PyWeightCache;
  m.doc() = "Native core of sparse_mlp (use the sparse_mlp package instead).";
  m.def("transpose", &sparse_mlp::bindings::TransposeInto, py::arg("src"), py::arg("dst"),
        py::arg("num_threads") = 1,
        "dst[c][r] = src[r][c] with the parallel SIMD transpose (zero-copy in and out).");

  py::class_<DLPackView>(m, "DLPackView",
                         "A zero-copy 2-D view of cache storage, consumable by "
                         "torch.from_dlpack / numpy.from_dlpack. Keeps that storage alive.")
      .def("__dlpack__", &DLPackView::Capsule, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const DLPackView&) { return py::make_tuple(1, 0); })
      .def_property_readonly("shape", &DLPackView::shape)
      .def_property_readonly("strides", &DLPackView::strides)
      .def_property_readonly("dtype", &DLPackView::dtype);

  py::class_<PyWeightCache>(m, "WeightCache")
      .def(py::init<const py::array&, int64_t, const py::object&, const py::object&,
                    const py::object&, int, int64_t, const std::string&, bool, bool, double>(),
           py::arg("mask"), py::arg("hidden_size"), py::arg("gate"), py::arg("up"),
           py::arg("down"), py::arg("num_threads") = 1, py::arg("tolerance") = 0,
           py::arg("layout") = "split", py::arg("copy_sources") = false,
           py::arg("down_neuron_major") = false,
           py::arg("repack_fraction") =
               sparse_mlp::cache::WeightCacheOptions::kDefaultRepackFraction)
      .def("update", &PyWeightCache::Update, py::arg("mask"))
      .def("update_indices", &PyWeightCache::UpdateIndices, py::arg("indices"))
      .def("catch_up", &PyWeightCache::CatchUp)
      .def("reserve", &PyWeightCache::Reserve, py::arg("active"))
      .def("gate", &PyWeightCache::Gate)
      .def("up", [](const PyWeightCache& c) { return c.View(c.cache().up()); })
      .def("down_rows", [](const PyWeightCache& c) { return c.View(c.cache().down_rows()); })
      .def("down_hidden_major",
           [](const PyWeightCache& c) { return c.View(c.cache().down_hidden_major()); })
      .def("gate_up_interleaved", &PyWeightCache::Interleaved)
      .def("copy_concatenated_gate_up", &PyWeightCache::CopyConcatenatedGateUp, py::arg("out"))
      .def("active_indices", &PyWeightCache::ActiveIndices)
      .def("last_update", &PyWeightCache::LastUpdate)
      .def_property_readonly("num_active",
                             [](const PyWeightCache& c) { return c.cache().num_active(); })
      .def_property_readonly("capacity",
                             [](const PyWeightCache& c) { return c.cache().capacity(); })
      .def_property_readonly("hidden_size",
                             [](const PyWeightCache& c) { return c.cache().hidden_size(); })
      .def_property_readonly("intermediate_size",
                             [](const PyWeightCache& c) { return c.cache().intermediate_size(); })
      .def_property_readonly("has_gate",
                             [](const PyWeightCache& c) { return c.cache().has_gate(); })
      .def_property_readonly(
          "dtype", [](const PyWeightCache& c) { return sparse_mlp::cache::DTypeName(c.cache().dtype()); })
      .def_property_readonly("lag", [](const PyWeightCache& c) { return c.cache().lag(); })
      .def_property_readonly("version",
                             [](const PyWeightCache& c) { return c.cache().version(); })
      .def_property_readonly("memory_bytes",
                             [](const PyWeightCache& c) { return c.cache().memory_bytes(); })
      .def_property(
          "num_threads", [](const PyWeightCache& c) { return c.cache().num_threads(); },
          [](PyWeightCache& c, int n) {
            sparse_mlp::bindings::ThrowIfError(c.cache().set_num_threads(n));
          })
      .def_property(
          "tolerance", [](const PyWeightCache& c) { return c.cache().tolerance(); },
          [](PyWeightCache& c, int64_t t) {
            if (t < 0) throw py::value_error("tolerance must be >= 0");
            c.cache().set_tolerance(static_cast<size_t>(t));
          });
}
