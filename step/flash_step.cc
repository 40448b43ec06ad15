#include "step/flash_step.h"

#include <chrono>
#include <cstring>

#include "absl/strings/str_format.h"
#include "mlp/forward_core.h"
#include "platform/float16.h"

namespace sparse_mlp::step {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

mlp::NeuronRows BundleRows(const store::BundleLayout& layout, const void* base, size_t count,
                           size_t stride_bytes) {
  const auto* b = static_cast<const uint8_t*>(base);
  if (layout.shape().quant.has_value()) return {};  // quantized: QuantBundleRows
  const size_t stride = stride_bytes / DTypeSize(layout.shape().dtype);
  return {layout.shape().dtype,
          layout.shape().hidden,
          count,
          layout.shape().gated ? b + layout.gate_offset() : nullptr,
          stride,
          b + layout.up_offset(),
          stride,
          b + layout.down_offset(),
          stride};
}

mlp::QuantNeuronRows QuantBundleRows(const store::BundleLayout& layout, const void* base,
                                     size_t count, size_t stride_bytes) {
  const auto* b = static_cast<const uint8_t*>(base);
  mlp::QuantNeuronRows rows;
  if (!layout.shape().quant.has_value()) return rows;
  rows.format = *layout.shape().quant;
  rows.hidden_size = layout.shape().hidden;
  rows.count = count;
  rows.gate = layout.shape().gated ? b + layout.gate_offset() : nullptr;
  rows.gate_stride = stride_bytes;
  rows.up = b + layout.up_offset();
  rows.up_stride = stride_bytes;
  rows.down = b + layout.down_offset();
  rows.down_stride = stride_bytes;
  return rows;
}

namespace {

// The step; gate_act non-null: the file is gate-less and the gate's
// activations are given (row r of a slot takes its neuron's).
absl::Status Step(flash::FlashModelCache* cache, size_t layer, absl::Span<const uint32_t> mask,
                  const float* gate_act, size_t gate_act_stride, const mlp::ConstTokens& x,
                  const mlp::Tokens& y, const mlp::ForwardOptions& options,
                  mlp::Workspace* workspace, FlashStepTimes* times) {
  const store::BundleLayout& layout = cache->layout();
  const DType dtype = layout.shape().dtype;
  const size_t hidden = layout.shape().hidden;
  // The caller's arguments, checked before any read starts.
  if (x.data == nullptr || x.tokens == 0 || x.stride < hidden) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "x must hold tokens >= 1 rows of hidden_size %d (tokens %d, stride %d)", hidden,
        x.tokens, x.stride));
  }
  if (y.data == nullptr || y.tokens != x.tokens || y.stride < hidden) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "y must hold x's %d tokens of hidden_size %d (tokens %d, stride %d)", x.tokens, hidden,
        y.tokens, y.stride));
  }
  const bool quantized = layout.shape().quant.has_value();
  if (quantized && (x.dtype != DType::kFloat32 || y.dtype != DType::kFloat32)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("x and y must be float32 with quantized rows, got %s and %s",
                        DTypeName(x.dtype), DTypeName(y.dtype)));
  }
  if (y.dtype != DType::kFloat32 && y.dtype != dtype) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "y must be float32 or %s (the weights' type), got %s", DTypeName(dtype),
        DTypeName(y.dtype)));
  }
  absl::StatusOr<float*> scratch = cache->Scratch(x.tokens);
  if (!scratch.ok()) return scratch.status();
  const mlp::Tokens sums{*scratch, x.tokens, hidden, DType::kFloat32};
  FlashStepTimes t;
  double t0 = Now();
  flash::FlashStepPlan plan;
  if (absl::Status s = cache->BeginStep(layer, mask, &plan); !s.ok()) return s;
  double t1 = Now();
  t.plan_seconds = t1 - t0;

  const mlp::NeuronRows rows =
      BundleRows(layout, cache->slots(layer), cache->capacity(), cache->slot_stride());
  const mlp::QuantNeuronRows qrows =
      QuantBundleRows(layout, cache->slots(layer), cache->capacity(), cache->slot_stride());
  const uint32_t* neuron_of = cache->slot_neurons(layer).data();
  // Slots `slots` into sums: the forward, or with the gate's activations given.
  auto forward = [&](absl::Span<const uint32_t> slots, const mlp::ForwardOptions& o) {
    if (quantized) {
      if (gate_act == nullptr) {
        return mlp::ForwardIndexedQuant(qrows, slots, x, sums, o, workspace);
      }
      return mlp::internal::ForwardIndexedQuantGivenGate(qrows, slots, gate_act, gate_act_stride, x,
                                                         sums, o, workspace, neuron_of);
    }
    if (gate_act == nullptr) return mlp::ForwardIndexed(rows, slots, x, sums, o, workspace);
    return mlp::internal::ForwardIndexedGivenGate(rows, slots, gate_act, gate_act_stride, x, sums,
                                                  o, workspace, neuron_of);
  };
  mlp::ForwardOptions o = options;
  o.accumulate = false;
  absl::Status status;
  if (!plan.hit_slots.empty()) {
    status = forward(plan.hit_slots, o);
  } else {
    for (size_t k = 0; k < x.tokens; ++k) std::memset(*scratch + k * hidden, 0, hidden * 4);
  }
  o.accumulate = true;
  const size_t c = plan.chunk_neurons;
  for (size_t j = 0; status.ok() && j < plan.chunks(); ++j) {
    const double w0 = Now();
    status = cache->WaitChunk(layer, j);
    const double w1 = Now();
    t.wait_seconds += w1 - w0;
    if (!status.ok()) break;
    const size_t begin = j * c, end = std::min(plan.entering_slots.size(), begin + c);
    status = forward(plan.entering_slots.subspan(begin, end - begin), o);
  }
  const double w0 = Now();
  const absl::Status finished = cache->FinishStep(layer);
  t.wait_seconds += Now() - w0;
  t.compute_seconds = Now() - t1 - t.wait_seconds;
  if (times != nullptr) *times = t;
  if (!status.ok()) return status;
  if (!finished.ok()) return finished;
  // y = sums (+ y), in y's type.
  for (size_t k = 0; k < x.tokens; ++k) {
    const float* s = *scratch + k * hidden;
    if (y.dtype == DType::kFloat32) {
      float* out = static_cast<float*>(y.data) + k * y.stride;
      for (size_t h = 0; h < hidden; ++h) out[h] = options.accumulate ? out[h] + s[h] : s[h];
    } else {
      uint16_t* out = static_cast<uint16_t*>(y.data) + k * y.stride;
      const bool bf16 = y.dtype == DType::kBFloat16;
      for (size_t h = 0; h < hidden; ++h) {
        float v = s[h];
        if (options.accumulate) v += bf16 ? BFloat16ToFloat(out[h]) : Float16ToFloat(out[h]);
        out[h] = bf16 ? FloatToBFloat16(v) : FloatToFloat16(v);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FlashLayerStep(flash::FlashModelCache* cache, size_t layer,
                            absl::Span<const uint32_t> mask, const mlp::ConstTokens& x,
                            const mlp::Tokens& y, const mlp::ForwardOptions& options,
                            mlp::Workspace* workspace, FlashStepTimes* times) {
  return Step(cache, layer, mask, nullptr, 0, x, y, options, workspace, times);
}

absl::Status FlashLayerStepGivenGate(flash::FlashModelCache* cache, size_t layer,
                                     absl::Span<const uint32_t> mask, const float* gate_act,
                                     size_t gate_act_stride, const mlp::ConstTokens& x,
                                     const mlp::Tokens& y, const mlp::ForwardOptions& options,
                                     mlp::Workspace* workspace, FlashStepTimes* times) {
  if (cache->layout().shape().gated) {
    return absl::InvalidArgumentError(
        "a step with the gate's activations given needs a gate-less bundle file (up and down "
        "only); this file holds gate rows");
  }
  if (gate_act == nullptr) return absl::InvalidArgumentError("gate activations are null");
  return Step(cache, layer, mask, gate_act, gate_act_stride, x, y, options, workspace, times);
}

}  // namespace sparse_mlp::step
