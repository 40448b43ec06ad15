// _sparse_mlp: the pybind11 extension behind the `sparse_mlp` Python package.
//
// Tensors cross the boundary without copies the caller did not ask for:
//   - weights come in through DLPack (torch tensors: __dlpack__()) or, for
//     NumPy arrays, through the buffer protocol, which also takes read-only
//     arrays such as np.load(path, mmap_mode="r") (NumPy's DLPack export
//     refuses them, and the cache only reads its sources): CPU, 2-D,
//     C-contiguous, float32 / bfloat16 / float16, else TypeError /
//     ValueError naming the argument and what it got. With copy_sources the
//     cache copies them during construction; otherwise it reads gate and up
//     (and a neuron-major down) in place and keeps their DLPack handles or
//     arrays (hence the producers' storage) alive for its lifetime;
//   - views go out as objects implementing __dlpack__ / __dlpack_device__
//     (torch.from_dlpack, numpy.from_dlpack). Each holds a share of the
//     packed buffers (WeightCache::RetainStorage), so no view can reach freed
//     memory, whatever happens to the cache.
// Masks are small inputs read once: a C-contiguous bool/uint8 NumPy array
// (the Python layer converts torch masks); any non-zero byte is active.
//
// Integer arguments (hidden_size, num_threads, tolerance, reserve's active)
// are taken as Python objects and range-checked here, so a wrong one gets a
// ValueError naming it, its value and the allowed range (pybind's own
// conversion would reject 2**64 with a dump of every overload).
//
// The forward (WeightCache.forward / step, mlp_forward) takes x and a
// preallocated out as 2-D [tokens, H] tensors through the same import (the
// Python layer reshapes [H] and allocates out in x's type), computes with
// the GIL released and writes out in place.
//
// Concurrency: each cache has a mutex. Mutating calls release the GIL,
// then take the mutex, so two threads updating one cache take turns while
// two caches update in parallel; accessors and views take the same mutex
// (briefly, with the GIL held: the mutating side never needs the GIL while
// it holds the mutex, so this cannot deadlock).
#include <dlpack/dlpack.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
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
#include "cache/model_cache.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "diff/score_select.h"
#include "gather/transpose.h"
#include "mlp/activation.h"
#include "mlp/layer_step.h"
#include "mlp/mlp_forward.h"
#include "platform/threads.h"

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

// A 2-D weight taken from the caller without a copy: through DLPack (a
// DLManagedTensor whose deleter releases the producer's storage) or through
// the buffer protocol (a NumPy array, referenced while this lives).
class ImportedTensor {
 public:
  ImportedTensor() = default;
  ImportedTensor(ImportedTensor&& other) noexcept { *this = std::move(other); }
  ImportedTensor& operator=(ImportedTensor&& other) noexcept {
    std::swap(managed_, other.managed_);
    std::swap(array_, other.array_);
    data_ = other.data_;
    shape_[0] = other.shape_[0];
    shape_[1] = other.shape_[1];
    dtype_ = other.dtype_;
    writable_ = other.writable_;
    return *this;
  }
  ~ImportedTensor() {
    if (managed_ != nullptr && managed_->deleter != nullptr) managed_->deleter(managed_);
  }

  static ImportedTensor FromDLPack(DLManagedTensor* managed) {
    ImportedTensor t;
    t.managed_ = managed;
    const DLTensor& dl = managed->dl_tensor;
    t.data_ = static_cast<const uint8_t*>(dl.data) + dl.byte_offset;
    t.writable_ = true;  // DLPack (before 1.0) has no read-only flag
    return t;
  }
  static ImportedTensor FromArray(py::array array, DType dtype) {
    ImportedTensor t;
    t.data_ = array.data();
    t.shape_[0] = array.shape(0);
    t.shape_[1] = array.shape(1);
    t.dtype_ = dtype;
    t.writable_ = array.writeable();
    t.array_ = std::move(array);
    return t;
  }

  const void* data() const { return data_; }
  int64_t rows() const { return shape_[0]; }
  int64_t cols() const { return shape_[1]; }
  DType dtype() const { return dtype_; }
  bool writable() const { return writable_; }
  std::string ShapeString() const {
    return absl::StrFormat("[%d, %d]", shape_[0], shape_[1]);
  }

 private:
  friend ImportedTensor ImportMatrix(py::handle obj, const char* name);
  DLManagedTensor* managed_ = nullptr;
  py::object array_;
  const void* data_ = nullptr;
  int64_t shape_[2] = {0, 0};
  DType dtype_ = DType::kFloat32;
  bool writable_ = false;
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

// Imports `obj` (a NumPy array through the buffer protocol, anything else
// through __dlpack__) and checks it is a C-contiguous 2-D CPU tensor of a
// supported dtype. A DLPack capsule is consumed (renamed "used_dltensor"
// per the protocol).
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

// An integer argument in [lo, hi]: TypeError unless it is an int (or has
// __index__, as NumPy integers do; bool is refused), ValueError naming the
// argument, its value and the range otherwise.
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

// A mask as bytes: a C-contiguous bool or uint8 array of 1 or 2 dimensions.
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
  absl::StatusOr<cache::PackedLayout> parsed = cache::ParsePackedLayout(layout);
  ThrowIfError(parsed.status());
  return *parsed;
}

mlp::Activation ActivationArg(const std::string& name) {
  absl::StatusOr<mlp::Activation> a = mlp::ParseActivation(name);
  ThrowIfError(a.status());
  return *a;
}

// x and out of a forward: [tokens, hidden] each, out writable, x float32 or
// the weights' type, out of x's type.
struct TokenArgs {
  ImportedTensor x, out;
  mlp::ConstTokens In() const {
    return {x.data(), static_cast<size_t>(x.rows()), static_cast<size_t>(x.cols()), x.dtype()};
  }
  mlp::Tokens Out() const {
    return {const_cast<void*>(out.data()), static_cast<size_t>(out.rows()),
            static_cast<size_t>(out.cols()), out.dtype()};
  }
};

TokenArgs ImportTokens(const py::object& x, const py::object& out, size_t hidden, DType weights) {
  TokenArgs a{ImportMatrix(x, "x"), ImportMatrix(out, "out")};
  if (static_cast<size_t>(a.x.cols()) != hidden || a.x.rows() == 0) {
    throw py::value_error(absl::StrFormat("x must be [tokens >= 1, hidden_size=%d], got %s",
                                          hidden, a.x.ShapeString()));
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

// One layer's weights, imported without copies and checked against each
// other: gate (optional) and up [I, H], down [H, I] or, neuron-major, [I, H].
struct ImportedMlp {
  ImportedTensor gate, up, down;
  DType dtype = DType::kFloat32;
  int64_t neurons = 0;
  bool has_gate = false;
  cache::MlpWeights Weights() const {
    return {has_gate ? gate.data() : nullptr, up.data(), down.data()};
  }
};

// `prefix` names the layer in messages of a model ("layer 3: "), or is empty.
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

class PyWeightCache {
 public:
  PyWeightCache(const py::array& mask, const py::object& hidden_size_arg,
                const py::object& gate, const py::object& up, const py::object& down,
                const py::object& num_threads_arg, const py::object& tolerance_arg,
                const std::string& layout, bool copy_sources, bool down_neuron_major,
                double repack_fraction, bool concat_gate_up) {
    const int64_t hidden_size = IntArg(hidden_size_arg, "hidden_size", 1,
                                       std::numeric_limits<int64_t>::max());
    const int num_threads = NumThreadsArg(num_threads_arg);
    ImportedMlp w = ImportMlp(gate, up, down, hidden_size, down_neuron_major, "");
    const int64_t tolerance =
        IntArg(tolerance_arg, "tolerance", 0, std::numeric_limits<int64_t>::max());
    const diff::NeuronMask initial = MaskFromArray(mask, w.neurons, "initial mask");

    cache::WeightCacheOptions options;
    options.hidden_size = static_cast<size_t>(hidden_size);
    options.intermediate_size = static_cast<size_t>(w.neurons);
    options.dtype = w.dtype;
    options.has_gate = w.has_gate;
    options.layout = ParseLayout(layout);
    options.ownership = copy_sources ? cache::SourceOwnership::kCopy
                                     : cache::SourceOwnership::kBorrow;
    options.down_layout = down_neuron_major ? cache::DownLayout::kNeuronMajor
                                            : cache::DownLayout::kHiddenMajor;
    options.num_threads = num_threads;
    options.tolerance = static_cast<size_t>(tolerance);
    options.repack_fraction = repack_fraction;
    options.concat_gate_up = concat_gate_up;
    absl::StatusOr<cache::WeightCache> created;
    {
      py::gil_scoped_release release;
      created = cache::WeightCache::Create(options, w.Weights(), initial);
    }
    ThrowIfError(created.status());
    owned_ = std::make_unique<cache::WeightCache>(*std::move(created));
    cache_ = owned_.get();
    // Borrowed sources stay imported (referenced) while the cache reads
    // them; copied ones, and a hidden-major down the cache transposed, are
    // let go.
    if (!copy_sources) {
      gate_ = std::move(w.gate);
      up_ = std::move(w.up);
      if (down_neuron_major) down_ = std::move(w.down);
    }
  }

  // One layer of a model: `owner` keeps the model (its pool, caches, mutexes
  // and borrowed sources) alive as long as this handle or any view of it.
  PyWeightCache(std::shared_ptr<const void> owner, cache::WeightCache* cache, std::mutex* mutex)
      : owner_(std::move(owner)), cache_(cache), mutex_(mutex) {}

  // Runs f(cache) without the GIL, holding this cache's mutex: mutating
  // calls and long const ones (two threads on one cache take turns, caches
  // run in parallel).
  template <typename F>
  absl::Status RunWithoutGil(F&& f) const {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(*mutex_);
    return f(*cache_);
  }
  // Runs f(cache) with the GIL, holding this cache's mutex (accessors).
  template <typename F>
  auto Read(F&& f) const {
    std::lock_guard<std::mutex> lock(*mutex_);
    return f(static_cast<const cache::WeightCache&>(*cache_));
  }

  void Update(const py::array& mask) {
    py::buffer_info info = MaskBuffer(mask);
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    const size_t rows = info.ndim == 1 ? 0 : static_cast<size_t>(info.shape[0]);
    const size_t size = static_cast<size_t>(info.size);
    ThrowIfError(RunWithoutGil([&](cache::WeightCache& c) {
      return rows == 0 ? c.UpdateFromBytes(absl::MakeConstSpan(bytes, size))
                       : c.UpdateFromByteRows(absl::MakeConstSpan(bytes, size), rows);
    }));
  }

  // Sorted, duplicate-free neuron indices (uint32, C-contiguous, 1-D).
  void UpdateIndices(const py::array& indices) {
    if (!py::isinstance<py::array_t<uint32_t>>(indices) ||
        !(indices.flags() & py::array::c_style) || indices.ndim() != 1) {
      throw py::type_error("indices must be a 1-D C-contiguous uint32 array");
    }
    const auto* data = static_cast<const uint32_t*>(indices.data());
    const size_t n = static_cast<size_t>(indices.shape(0));
    ThrowIfError(RunWithoutGil([&](cache::WeightCache& c) {
      return c.UpdateFromIndices(absl::MakeConstSpan(data, n));
    }));
  }

  void CatchUp() {
    ThrowIfError(RunWithoutGil([](cache::WeightCache& c) { return c.CatchUp(); }));
  }

  // Scores [rows, I] (the Python layer makes [I] one row), float32 or
  // bfloat16, C-contiguous.
  static diff::ScoreMatrix Scores(const ImportedTensor& t) {
    if (t.dtype() == DType::kFloat16) {
      throw py::type_error("scores must be float32 or bfloat16, got float16");
    }
    return {t.data(), static_cast<size_t>(t.rows()), static_cast<size_t>(t.cols()),
            t.dtype() == DType::kFloat32 ? diff::ScoreType::kFloat32
                                         : diff::ScoreType::kBFloat16};
  }

  void UpdateTopK(const py::object& scores, const py::object& k_arg) {
    const ImportedTensor t = ImportMatrix(scores, "scores");
    const int64_t k = IntArg(k_arg, "k", 0, std::numeric_limits<int64_t>::max());
    const diff::ScoreMatrix m = Scores(t);
    ThrowIfError(RunWithoutGil(
        [&](cache::WeightCache& c) { return c.UpdateTopK(m, static_cast<size_t>(k)); }));
  }

  void UpdateThreshold(const py::object& scores, double threshold) {
    const ImportedTensor t = ImportMatrix(scores, "scores");
    const diff::ScoreMatrix m = Scores(t);
    ThrowIfError(RunWithoutGil([&](cache::WeightCache& c) {
      return c.UpdateThreshold(m, static_cast<float>(threshold));
    }));
  }

  void Reserve(const py::object& active_arg) {
    const int64_t active = IntArg(active_arg, "active", 0,
                                  static_cast<int64_t>(intermediate_size()));
    ThrowIfError(RunWithoutGil(
        [&](cache::WeightCache& c) { return c.Reserve(static_cast<size_t>(active)); }));
  }

  void SetNumThreads(const py::object& value) {
    const int n = NumThreadsArg(value);
    ThrowIfError(RunWithoutGil([&](cache::WeightCache& c) { return c.set_num_threads(n); }));
  }

  void SetTolerance(const py::object& value) {
    const int64_t t = IntArg(value, "tolerance", 0, std::numeric_limits<int64_t>::max());
    ThrowIfError(RunWithoutGil(
        [&](cache::WeightCache& c) { return c.set_tolerance(static_cast<size_t>(t)); }));
  }

  void Verify() const {
    ThrowIfError(RunWithoutGil([](const cache::WeightCache& c) { return c.Verify(); }));
  }

  // Fixed at construction: no lock needed.
  size_t intermediate_size() const { return cache_->intermediate_size(); }

  // The forward's options (its thread count is the cache's, set under the
  // mutex in the call).
  static mlp::ForwardOptions ForwardOptionsFor(const std::string& activation, bool accumulate) {
    mlp::ForwardOptions o;
    o.activation = ActivationArg(activation);
    o.accumulate = accumulate;
    return o;
  }

  // What a view keeps alive: the packed storage it points into and, for a
  // model's layer, the model (whose pool holds that storage; held first,
  // released last).
  std::shared_ptr<const void> Retain() const {
    std::shared_ptr<const void> storage = cache_->RetainStorage();
    if (owner_ == nullptr) return storage;
    return std::make_shared<std::pair<std::shared_ptr<const void>, std::shared_ptr<const void>>>(
        owner_, std::move(storage));
  }

  // A view and the storage it points into, taken under the mutex.
  template <typename F>
  DLPackView View(F&& view_of) const {
    std::lock_guard<std::mutex> lock(*mutex_);
    return DLPackView(Retain(), view_of(*cache_));
  }

  DLPackView Gate() const {
    if (!cache_->has_gate()) throw py::value_error("this cache has no gate projection");
    return View([](const cache::WeightCache& c) { return c.gate(); });
  }
  DLPackView Concatenated() const {
    std::lock_guard<std::mutex> lock(*mutex_);
    absl::StatusOr<cache::MatrixView> view = cache_->concatenated_gate_up();
    ThrowIfError(view.status());
    return DLPackView(Retain(), *view);
  }

  DLPackView Interleaved() const {
    std::lock_guard<std::mutex> lock(*mutex_);
    absl::StatusOr<cache::MatrixView> view = cache_->gate_up_interleaved();
    ThrowIfError(view.status());
    return DLPackView(Retain(), *view);
  }

  void CopyConcatenatedGateUp(const py::object& out) {
    ImportedTensor t = ImportMatrix(out, "out");
    if (!t.writable()) throw py::value_error("out must be writable, got a read-only array");
    if (t.dtype() != cache_->dtype()) {
      throw py::type_error(absl::StrFormat("out must be %s, got %s",
                                           cache::DTypeName(cache_->dtype()),
                                           cache::DTypeName(t.dtype())));
    }
    const size_t bytes = static_cast<size_t>(t.rows() * t.cols()) *
                         cache::DTypeSize(cache_->dtype());
    if (static_cast<size_t>(t.cols()) != cache_->hidden_size()) {
      throw py::value_error(absl::StrFormat("out must be [2 x num_active, %d], got %s",
                                            cache_->hidden_size(), t.ShapeString()));
    }
    auto* data = static_cast<uint8_t*>(const_cast<void*>(t.data()));
    ThrowIfError(RunWithoutGil([&](const cache::WeightCache& c) {
      return c.CopyConcatenatedGateUp(absl::MakeSpan(data, bytes));
    }));
  }

  py::array_t<int64_t> ActiveIndices() const {
    std::lock_guard<std::mutex> lock(*mutex_);
    const absl::Span<const uint32_t> slots = cache_->active_indices();
    py::array_t<int64_t> out(static_cast<py::ssize_t>(slots.size()));
    int64_t* p = out.mutable_data();
    for (size_t s = 0; s < slots.size(); ++s) p[s] = slots[s];
    return out;
  }

  // out = MLP(x) over the active neurons (out += with accumulate).
  void Forward(const py::object& x, const py::object& out, const std::string& activation,
               bool accumulate) {
    const TokenArgs t = ImportTokens(x, out, cache_->hidden_size(), cache_->dtype());
    mlp::ForwardOptions o = ForwardOptionsFor(activation, accumulate);
    ThrowIfError(RunWithoutGil([&](const cache::WeightCache& c) {
      o.num_threads = c.num_threads();
      return mlp::CacheForward(c, t.In(), t.Out(), o, &workspace_);
    }));
  }

  // The fused layer step: update to `mask` and compute out = MLP(x).
  void Step(const py::array& mask, const py::object& x, const py::object& out,
            const std::string& activation, bool accumulate) {
    py::buffer_info info = MaskBuffer(mask);
    const auto* bytes = static_cast<const uint8_t*>(info.ptr);
    const size_t rows = info.ndim == 1 ? 1 : static_cast<size_t>(info.shape[0]);
    const size_t size = static_cast<size_t>(info.size);
    const TokenArgs t = ImportTokens(x, out, cache_->hidden_size(), cache_->dtype());
    mlp::ForwardOptions o = ForwardOptionsFor(activation, accumulate);
    ThrowIfError(RunWithoutGil([&](cache::WeightCache& c) {
      o.num_threads = c.num_threads();
      return mlp::LayerStepFromByteRows(&c, absl::MakeConstSpan(bytes, size), rows, t.In(),
                                        t.Out(), o, &workspace_);
    }));
  }

  py::dict LastUpdate() const {
    const cache::UpdateStats u =
        Read([](const cache::WeightCache& c) { return c.last_update(); });
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

 private:
  // The forward's scratch, used under the mutex (allocated by the first
  // call).
  mutable mlp::Workspace workspace_;
  // A cache of its own: the borrowed sources it reads (declared before it,
  // so they outlive it) and the cache.
  ImportedTensor gate_, up_, down_;
  std::unique_ptr<cache::WeightCache> owned_;
  // A model's layer: the model's state.
  std::shared_ptr<const void> owner_;
  cache::WeightCache* cache_ = nullptr;
  mutable std::mutex own_mutex_;
  // Serializes calls on this cache: own_mutex_, or the model's for the layer
  // (which UpdateMany takes too).
  std::mutex* mutex_ = &own_mutex_;
};

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
               bool down_neuron_major, double repack_fraction) {
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
      if (l == 0) {
        const ImportedTensor probe = ImportMatrix(triple[1], "up_weight");
        hidden = probe.cols();
        if (hidden == 0) throw py::value_error("layer 0: up_weight has hidden size 0");
      }
      imported.push_back(ImportMlp(triple[0], triple[1], triple[2], hidden, down_neuron_major,
                                   prefix));
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
    const py::array index_array = py::reinterpret_borrow<py::array>(indices);
    if (!py::isinstance<py::array_t<uint32_t>>(indices) ||
        !(index_array.flags() & py::array::c_style) || index_array.ndim() != 1) {
      throw py::type_error("indices must be a 1-D C-contiguous uint32 array");
    }
    const absl::Span<const uint32_t> idx(static_cast<const uint32_t*>(index_array.data()),
                                         static_cast<size_t>(index_array.shape(0)));
    py::gil_scoped_release release;
    status = mlp::ForwardIndexed(rows, idx, t.In(), t.Out(), o, &workspace);
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

  m.def("mlp_forward", &sparse_mlp::bindings::MlpForward, py::arg("x"), py::arg("gate"),
        py::arg("up"), py::arg("down"), py::arg("indices"), py::arg("out"), py::kw_only(),
        py::arg("activation") = "silu", py::arg("down_neuron_major") = false,
        py::arg("num_threads") = 1, py::arg("accumulate") = false,
        "out = down(act(gate x) * (up x)), dense or over sorted uint32 indices (native).");

  py::class_<DLPackView>(m, "DLPackView",
                         "A zero-copy 2-D view of cache storage, consumable by "
                         "torch.from_dlpack / numpy.from_dlpack. Keeps that storage alive.")
      .def("__dlpack__", &DLPackView::Capsule, py::arg("stream") = py::none())
      .def("__dlpack_device__", [](const DLPackView&) { return py::make_tuple(1, 0); })
      .def_property_readonly("shape", &DLPackView::shape)
      .def_property_readonly("strides", &DLPackView::strides)
      .def_property_readonly("dtype", &DLPackView::dtype);

  using sparse_mlp::cache::WeightCache;
  py::class_<PyWeightCache>(m, "WeightCache")
      .def(py::init<const py::array&, const py::object&, const py::object&, const py::object&,
                    const py::object&, const py::object&, const py::object&,
                    const std::string&, bool, bool, double, bool>(),
           py::arg("mask"), py::arg("hidden_size"), py::arg("gate"), py::arg("up"),
           py::arg("down"), py::kw_only(), py::arg("num_threads") = 1, py::arg("tolerance") = 0,
           py::arg("layout") = "split", py::arg("copy_sources") = false,
           py::arg("down_neuron_major") = false,
           py::arg("repack_fraction") =
               sparse_mlp::cache::WeightCacheOptions::kDefaultRepackFraction,
           py::arg("concat_gate_up") = false)
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
            [](const WeightCache& w) { return sparse_mlp::cache::DTypeName(w.dtype()); });
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

  using sparse_mlp::bindings::PyModelCache;
  py::class_<PyModelCache>(m, "ModelCache")
      .def(py::init<const py::sequence&, const py::object&, double, const py::object&,
                    const py::object&, const std::string&, bool, bool, double>(),
           py::arg("layers"), py::kw_only(), py::arg("masks") = py::none(),
           py::arg("expected_active_fraction") = 0.5, py::arg("num_threads") = 1,
           py::arg("tolerance") = 0, py::arg("layout") = "split",
           py::arg("copy_sources") = false, py::arg("down_neuron_major") = false,
           py::arg("repack_fraction") =
               sparse_mlp::cache::WeightCacheOptions::kDefaultRepackFraction)
      .def("layer", &PyModelCache::Layer, py::arg("layer"))
      .def("update_many", &PyModelCache::UpdateMany, py::arg("updates"))
      .def("footprint", &PyModelCache::Footprint)
      .def("layer_stats", &PyModelCache::LayerStats, py::arg("layer"))
      .def("totals", &PyModelCache::Totals)
      .def_property_readonly("num_layers", &PyModelCache::num_layers);
}
