// Conversions shared by every binding of the `sparse_mlp` extension: weights
// and tokens in (DLPack or the buffer protocol, no copies), views out
// (DLPack), masks, integer and enum arguments, and absl::Status -> Python
// exceptions. One statement of each rule, used by cache, forward and model
// bindings alike.
//
// Tensors cross the boundary without copies the caller did not ask for:
//   - weights come in through DLPack (torch tensors: __dlpack__()) or, for
//     NumPy arrays, through the buffer protocol, which also takes read-only
//     arrays such as np.load(path, mmap_mode="r") (NumPy's DLPack export
//     refuses them, and the cache only reads its sources): CPU, 2-D,
//     C-contiguous, float32 / bfloat16 / float16, else TypeError /
//     ValueError naming the argument and what it got. An ImportedTensor keeps
//     the producer's storage alive while it lives;
//   - views go out as DLPackView objects implementing __dlpack__ /
//     __dlpack_device__ (torch.from_dlpack, numpy.from_dlpack), each holding a
//     share of the storage it points into.
// Masks are small inputs read once: a C-contiguous bool/uint8 NumPy array
// (the Python layer converts torch masks); any non-zero byte is active.
// Integer arguments are taken as Python objects and range-checked here, so a
// wrong one gets a ValueError naming it, its value and the allowed range
// (pybind's own conversion would reject 2**64 with a dump of every overload).
//
// Every function here needs the GIL.
#ifndef SPARSE_MLP_BINDINGS_CONVERT_H_
#define SPARSE_MLP_BINDINGS_CONVERT_H_

#include <dlpack/dlpack.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "mlp/activation.h"
#include "mlp/mlp_forward.h"
#include "step/mask_step.h"

namespace sparse_mlp::bindings {

namespace py = pybind11;
using cache::DType;

// absl::Status -> the Python exception a caller expects (InvalidArgument,
// OutOfRange, FailedPrecondition: ValueError; ResourceExhausted:
// MemoryError; NotFound / Unavailable / PermissionDenied: OSError; anything
// else, e.g. DataLoss from WeightCache::Verify, RuntimeError).
void ThrowIfError(const absl::Status& status);

// The name of obj's type, for messages.
std::string TypeName(py::handle obj);

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

// Imports `obj` (a NumPy array through the buffer protocol, anything else
// through __dlpack__) and checks it is a C-contiguous 2-D CPU tensor of a
// supported dtype. A DLPack capsule is consumed (renamed "used_dltensor"
// per the protocol). `name` names the argument in errors.
ImportedTensor ImportMatrix(py::handle obj, const char* name);

// An integer argument in [lo, hi]: TypeError unless it is an int (or has
// __index__, as NumPy integers do; bool is refused), ValueError naming the
// argument, its value and the range otherwise.
int64_t IntArg(py::handle obj, const char* name, int64_t lo, int64_t hi);

// num_threads in [1, kMaxThreads] (platform/threads.h).
int NumThreadsArg(py::handle obj);

// A mask as bytes: a C-contiguous bool or uint8 array of 1 or 2 dimensions
// (a 2-D one with at least one row).
py::buffer_info MaskBuffer(const py::array& mask);

// A [I] mask array as a NeuronMask of `neurons`; `what` names it in errors.
diff::NeuronMask MaskFromArray(const py::array& mask, int64_t neurons, const std::string& what);

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

cache::PackedLayout ParseLayout(const std::string& layout);
mlp::Activation ActivationArg(const std::string& name);

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

// x and out of a forward: [tokens >= 1, hidden] each, out writable, x
// float32 or the weights' type, out of x's type.
TokenArgs ImportTokens(const py::object& x, const py::object& out, size_t hidden, DType weights);

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

// One layer's weights, checked against each other and against hidden_size.
// `prefix` names the layer in messages of a model ("layer 3: "), or is empty.
ImportedMlp ImportMlp(const py::object& gate, const py::object& up, const py::object& down,
                      int64_t hidden_size, bool down_neuron_major, const std::string& prefix);

// Sorted neuron indices from Python: a 1-D C-contiguous uint32 NumPy array
// (TypeError otherwise), viewed without a copy; `array` keeps it alive.
struct IndicesArg {
  explicit IndicesArg(const py::object& indices);
  py::array array;
  absl::Span<const uint32_t> span;
};

// A mask source's selection: exactly one of k (neurons per token, in
// [0, neurons]) and threshold (not NaN); ValueError / TypeError otherwise.
step::Selection SelectionArg(const py::object& k, const py::object& threshold, size_t neurons);

// Registers DLPackView on the module.
void RegisterViews(py::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_CONVERT_H_
