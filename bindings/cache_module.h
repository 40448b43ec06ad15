// Python binding of cache::WeightCache (sparse_mlp.cache's native class).
//
// Concurrency: each cache has a mutex. Mutating calls release the GIL, then
// take the mutex, so two threads updating one cache take turns while two
// caches update in parallel; accessors and views take the same mutex
// (briefly, with the GIL held: the mutating side never needs the GIL while it
// holds the mutex, so this cannot deadlock). A model's layer (ModelCache)
// uses the model's per-layer mutex instead, which batches take too.
//
// The forward (forward / step) takes x and a preallocated out as 2-D
// [tokens, H] tensors (the Python layer reshapes [H] and allocates out in x's
// type), computes with the GIL released and writes out in place.
#ifndef SPARSE_MLP_BINDINGS_CACHE_MODULE_H_
#define SPARSE_MLP_BINDINGS_CACHE_MODULE_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "bindings/convert.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "diff/score_select.h"
#include "mlp/mlp_forward.h"
#include "step/layer_step.h"

namespace sparse_mlp::bindings {

class PyWeightCache {
 public:
  PyWeightCache(const py::array& mask, const py::object& hidden_size_arg,
                const py::object& gate, const py::object& up, const py::object& down,
                const py::object& num_threads_arg, const py::object& tolerance_arg,
                const std::string& layout, bool copy_sources, bool down_neuron_major,
                double repack_fraction, bool concat_gate_up, const std::string& quant_type,
                const py::object& quant_group_arg) {
    const int64_t hidden_size = IntArg(hidden_size_arg, "hidden_size", 1,
                                       std::numeric_limits<int64_t>::max());
    const int num_threads = NumThreadsArg(num_threads_arg);
    // Quantized rows: down is neuron-major by construction (each neuron's
    // column quantized along H).
    const bool quantized = !quant_type.empty();
    if (quantized) down_neuron_major = true;
    ImportedMlp w =
        quantized ? ImportQuantMlp(gate, up, down, hidden_size, quant_type,
                                   static_cast<size_t>(IntArg(quant_group_arg, "group", 0,
                                                              std::numeric_limits<int32_t>::max())),
                                   "")
                  : ImportMlp(gate, up, down, hidden_size, down_neuron_major, "");
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
    options.quant = w.quant;
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
      return rows == 0
                 ? c.Update(cache::MaskInput::Bytes(absl::MakeConstSpan(bytes, size)))
                 : c.Update(cache::MaskInput::ByteRows(absl::MakeConstSpan(bytes, size), rows));
    }));
  }

  // Sorted, duplicate-free neuron indices (uint32, C-contiguous, 1-D).
  void UpdateIndices(const py::array& indices) {
    const IndicesArg idx(indices);
    ThrowIfError(RunWithoutGil(
        [&](cache::WeightCache& c) { return c.Update(cache::MaskInput::Indices(idx.span)); }));
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
    ThrowIfError(RunWithoutGil([&](cache::WeightCache& c) {
      return c.Update(cache::MaskInput::TopK(m, static_cast<size_t>(k)));
    }));
  }

  void UpdateThreshold(const py::object& scores, double threshold) {
    const ImportedTensor t = ImportMatrix(scores, "scores");
    const diff::ScoreMatrix m = Scores(t);
    ThrowIfError(RunWithoutGil([&](cache::WeightCache& c) {
      return c.Update(cache::MaskInput::Threshold(m, static_cast<float>(threshold)));
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
  mlp::ForwardOptions ForwardOptionsFor(const std::string& activation, bool accumulate) const {
    mlp::ForwardOptions o;
    o.quantize_x = quantize_x;
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
      return step::CacheForward(c, t.In(), t.Out(), o, &workspace_);
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
      return step::LayerStepFromByteRows(&c, absl::MakeConstSpan(bytes, size), rows, t.In(),
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

  // ForwardOptions::quantize_x of forward and step (quantized rows).
  bool quantize_x = false;

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

// Registers WeightCache on the module.
void RegisterCache(py::module_& m);

}  // namespace sparse_mlp::bindings

#endif  // SPARSE_MLP_BINDINGS_CACHE_MODULE_H_
