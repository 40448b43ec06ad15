#include "step/layer_step.h"

#include <algorithm>
#include <optional>

#include "mlp/forward_core.h"
#include "mlp/quant_forward.h"
#include "step/layer_step_internal.h"

namespace sparse_mlp::step {
namespace {

using mlp::internal::NeuronPtrs;

// Slots [0, num_active) of a planned update: kept rows in place, loaded
// rows from the sources and moved rows from their old slot, each of the
// latter two stored into its new slot.
class StepRows final : public mlp::internal::RowSource {
 public:
  explicit StepRows(const cache::PlannedUpdate& plan) : plan_(plan) {}

  void Locate(size_t first, size_t n, NeuronPtrs* out) const override {
    for (size_t k = 0; k < n; ++k) {
      for (int p = 0; p < 3; ++p) {
        out[k].row[p] = Slot(p, first + k);
        out[k].store[p] = nullptr;
      }
      out[k].neuron = plan_.slot_to_neuron[first + k];
    }
    // Loads and moves are each in ascending slot order (cache/update_plan.h).
    const auto by_slot = [](const gather::RowCopy& c, size_t slot) { return c.dst_row < slot; };
    for (auto it = std::lower_bound(plan_.loads.begin(), plan_.loads.end(), first, by_slot);
         it != plan_.loads.end() && it->dst_row < first + n; ++it) {
      NeuronPtrs& ptrs = out[it->dst_row - first];
      for (int p = 0; p < 3; ++p) {
        if (plan_.source[p] == nullptr) continue;
        ptrs.row[p] = plan_.source[p] + size_t{it->src_row} * plan_.source_stride[p];
        ptrs.store[p] = Slot(p, it->dst_row);
      }
    }
    for (auto it = std::lower_bound(plan_.moves.begin(), plan_.moves.end(), first, by_slot);
         it != plan_.moves.end() && it->dst_row < first + n; ++it) {
      NeuronPtrs& ptrs = out[it->dst_row - first];
      for (int p = 0; p < 3; ++p) {
        if (plan_.packed[p] == nullptr) continue;
        ptrs.row[p] = Slot(p, it->src_row);
        ptrs.store[p] = Slot(p, it->dst_row);
      }
    }
  }

 private:
  uint8_t* Slot(int part, size_t slot) const {
    return plan_.packed[part] == nullptr ? nullptr
                                         : plan_.packed[part] + slot * plan_.packed_stride[part];
  }

  const cache::PlannedUpdate& plan_;
};

// The type the forward computes in: the cache's, or float32 (x and y
// float32) over quantized rows.
DType ComputeDType(const cache::WeightCache& cache) {
  return cache.quant().has_value() ? DType::kFloat32 : cache.dtype();
}

// The executor of a layer step: the forward over the planned slots.
struct StepExecutor {
  DType dtype;  // the forward's (ComputeDType)
  size_t hidden_size;
  bool has_gate;
  const mlp::ConstTokens& x;
  const mlp::Tokens& y;
  const mlp::ForwardOptions& options;
  mlp::Workspace* workspace;
  const float* gate_act;  // given gate activations (gate-first), or null
  size_t gate_act_stride;
  const quant::RowLayout* quant;  // quantized rows, or null

  void operator()(const cache::PlannedUpdate& plan) const {
    mlp::internal::Problem p;
    p.dtype = dtype;
    p.quant = quant;
    p.hidden_size = hidden_size;
    p.count = plan.num_active;
    p.has_gate = has_gate;
    p.stores = !plan.loads.empty() || !plan.moves.empty();
    p.prefetch = p.stores;  // entering rows are scattered over the sources
    p.gate_act = gate_act;
    p.gate_act_stride = gate_act_stride;
    mlp::internal::Run(StepRows(plan), p, x, y, options, workspace);
  }
};

// Every layer step: validates the call and sizes the workspace (nothing
// changes on an error), then updates the cache to `mask` with the forward
// as the plan's executor. given_gate: the gate's activations are given
// (gate_act) and the cache must be gate-less.
absl::Status Step(cache::WeightCache* cache, const cache::MaskInput& mask, bool given_gate,
                  const float* gate_act, size_t gate_act_stride, const mlp::ConstTokens& x,
                  const mlp::Tokens& y, const mlp::ForwardOptions& options,
                  mlp::Workspace* workspace) {
  if (cache == nullptr) return absl::InvalidArgumentError("cache is null");
  const DType dtype = ComputeDType(*cache);
  if (absl::Status s = mlp::internal::ValidateCall(dtype, cache->hidden_size(), x, y, options);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          mlp::internal::PrepareWorkspace(dtype, cache->hidden_size(), 0, x, options, workspace);
      !s.ok()) {
    return s;
  }
  if (given_gate && cache->has_gate()) {
    return absl::InvalidArgumentError(
        "a step with given gate activations needs a gate-less cache (up and down rows)");
  }
  std::optional<quant::RowLayout> layout;
  if (cache->quant().has_value()) {
    // Valid: the cache was created with it.
    layout = *quant::RowLayout::Create(*cache->quant(), cache->hidden_size());
  }
  const StepExecutor execute{dtype,
                             cache->hidden_size(),
                             cache->has_gate(),
                             x,
                             y,
                             options,
                             workspace,
                             gate_act,
                             gate_act_stride,
                             layout.has_value() ? &*layout : nullptr};
  return cache->UpdateWith(mask, execute);
}

}  // namespace

mlp::NeuronRows CacheRows(const cache::WeightCache& cache) {
  mlp::NeuronRows rows;
  rows.dtype = cache.dtype();
  rows.hidden_size = cache.hidden_size();
  rows.count = cache.num_active();
  const cache::MatrixView gate = cache.gate(), up = cache.up(), down = cache.down_rows();
  rows.gate = gate.data;
  rows.gate_stride = gate.row_stride;
  rows.up = up.data;
  rows.up_stride = up.row_stride;
  rows.down = down.data;
  rows.down_stride = down.row_stride;
  return rows;
}

mlp::QuantNeuronRows CacheQuantRows(const cache::WeightCache& cache) {
  mlp::QuantNeuronRows rows;
  if (!cache.quant().has_value()) return rows;
  rows.format = *cache.quant();
  rows.hidden_size = cache.hidden_size();
  rows.count = cache.num_active();
  const cache::MatrixView gate = cache.gate(), up = cache.up(), down = cache.down_rows();
  rows.gate = gate.data;
  rows.gate_stride = gate.row_stride;
  rows.up = up.data;
  rows.up_stride = up.row_stride;
  rows.down = down.data;
  rows.down_stride = down.row_stride;
  return rows;
}

absl::Status CacheForward(const cache::WeightCache& cache, const mlp::ConstTokens& x,
                          const mlp::Tokens& y, const mlp::ForwardOptions& options,
                          mlp::Workspace* workspace) {
  if (cache.quant().has_value()) {
    return mlp::ForwardQuant(CacheQuantRows(cache), x, y, options, workspace);
  }
  return mlp::Forward(CacheRows(cache), x, y, options, workspace);
}

absl::Status LayerStep(cache::WeightCache* cache, const diff::NeuronMask& mask,
                       const mlp::ConstTokens& x, const mlp::Tokens& y,
                       const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  return Step(cache, mask, false, nullptr, 0, x, y, options, workspace);
}

absl::Status LayerStepFromByteRows(cache::WeightCache* cache, absl::Span<const uint8_t> masks,
                                   size_t rows, const mlp::ConstTokens& x, const mlp::Tokens& y,
                                   const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  return Step(cache, cache::MaskInput::ByteRows(masks, rows), false, nullptr, 0, x, y, options,
              workspace);
}

namespace internal {

absl::Status LayerStepGivenGate(cache::WeightCache* cache, const diff::NeuronMask& mask,
                                const float* gate_act, size_t gate_act_stride,
                                const mlp::ConstTokens& x, const mlp::Tokens& y,
                                const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  return Step(cache, mask, true, gate_act, gate_act_stride, x, y, options, workspace);
}

}  // namespace internal
}  // namespace sparse_mlp::step
