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
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "mlp/activation.h"
#include "mlp/mlp_forward.h"
#include "quant/format.h"
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
  // Quantized rows (uint8 [rows, row_bytes]); dtype() is float32, the
  // type of the x such rows take.
  static ImportedTensor FromBytes(py::array array) {
    return FromArray(std::move(array), DType::kFloat32);
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
    // Quantized rows travel as their bytes: uint8 [rows, row_bytes].
    const bool bytes = view_.quant.has_value();
    auto* ctx = new Context{owner_,
                            {static_cast<int64_t>(view_.rows), static_cast<int64_t>(cols())},
                            {static_cast<int64_t>(view_.row_stride),
                             static_cast<int64_t>(bytes ? 1 : view_.col_stride)},
                            {}};
    // Producers must not hand out null data even for empty tensors.
    static const uint64_t kEmpty[8] = {};
    DLTensor& t = ctx->managed.dl_tensor;
    t.data = const_cast<void*>(view_.data != nullptr ? view_.data : kEmpty);
    t.device = {kDLCPU, 0};
    t.ndim = 2;
    t.dtype = bytes                            ? DLDataType{kDLUInt, 8, 1}
              : view_.dtype == DType::kFloat32 ? DLDataType{kDLFloat, 32, 1}
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

  std::vector<size_t> shape() const { return {view_.rows, cols()}; }
  std::vector<size_t> strides() const {
    return {view_.row_stride, view_.quant.has_value() ? 1 : view_.col_stride};
  }
  std::string dtype() const {
    return view_.quant.has_value() ? "uint8" : cache::DTypeName(view_.dtype);
  }

 private:
  // Columns as handed out: bytes of a quantized row, else elements.
  size_t cols() const {
    if (!view_.quant.has_value()) return view_.cols;
    return quant::RowLayout::Create(*view_.quant, view_.cols)->row_bytes();
  }
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
// other: gate (optional) and up [I, H], down [H, I] or, neuron-major, [I, H];
// or, quantized, [I, row_bytes] uint8 rows each (down neuron-major).
struct ImportedMlp {
  ImportedTensor gate, up, down;
  DType dtype = DType::kFloat32;  // float32 for quantized rows
  std::optional<quant::QuantFormat> quant;
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

// The row layout of quantized rows: `type` "int8" or "q4", `group` (0:
// the whole row), `hidden` weights per row; ValueError naming the value.
quant::RowLayout QuantLayoutArg(const std::string& type, size_t group, size_t hidden);

// A C-contiguous 2-D NumPy array of exactly T (never converted: a copy here
// would be a silent one); TypeError / ValueError naming `name`.
template <typename T>
py::array_t<T, py::array::c_style> ExactArray(const py::object& a, const char* name,
                                              const char* type_name) {
  if (!py::isinstance<py::array_t<T>>(a)) {
    throw py::type_error(absl::StrFormat("%s must be a %s numpy array, got %s", name, type_name,
                                         TypeName(a)));
  }
  py::array arr = py::reinterpret_borrow<py::array>(a);
  if (!(arr.flags() & py::array::c_style) || arr.ndim() != 2) {
    throw py::value_error(absl::StrFormat("%s must be a C-contiguous 2-D array", name));
  }
  return py::reinterpret_borrow<py::array_t<T, py::array::c_style>>(a);
}

// `rows` quantized rows of `layout` as uint8 [rows, row_bytes], read in
// place (rows < 0: any count).
ImportedTensor ImportQuantRows(const py::object& obj, const char* name, int64_t rows,
                               const quant::RowLayout& layout);

// A quantized layer: gate (optional), up and neuron-major down as
// [I, row_bytes] uint8 rows of RowLayout(format, hidden_size).
ImportedMlp ImportQuantMlp(const py::object& gate, const py::object& up, const py::object& down,
                           int64_t hidden_size, const std::string& type, size_t group,
                           const std::string& prefix);

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
