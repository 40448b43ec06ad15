#include "step/mask_step.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_format.h"
#include "memory/size_math.h"
#include "mlp/forward_core.h"
#include "step/flash_step.h"
#include "step/layer_step.h"
#include "step/layer_step_internal.h"

namespace sparse_mlp::step {
namespace {

bool ValidDType(DType d) {
  return d == DType::kFloat32 || d == DType::kBFloat16 || d == DType::kFloat16;
}

absl::Status CheckShape(DType dtype, size_t hidden, size_t intermediate) {
  if (!ValidDType(dtype)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("unsupported weight type %d", static_cast<int>(dtype)));
  }
  if (hidden == 0) return absl::InvalidArgumentError("hidden_size must be positive, got 0");
  if (intermediate == 0) {
    return absl::InvalidArgumentError("intermediate_size must be positive, got 0");
  }
  if (intermediate > diff::NeuronMask::kMaxNeurons) {
    return absl::InvalidArgumentError(
        absl::StrFormat("intermediate_size %u is above the masks' limit", intermediate));
  }
  return absl::OkStatus();
}

absl::Status CheckRows(const char* name, const void* data, size_t stride, size_t length) {
  if (data == nullptr) return absl::InvalidArgumentError(absl::StrFormat("%s is null", name));
  if (stride < length) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s row stride %u is smaller than its row length %u", name, stride, length));
  }
  return absl::OkStatus();
}

// `any_dtype`: a quantized side (the gate or the cache) takes float32 x,
// so the types need not agree.
absl::Status CheckCache(const cache::WeightCache* cache, DType dtype, size_t hidden,
                        size_t intermediate, bool any_dtype = false) {
  if (cache == nullptr) return absl::InvalidArgumentError("cache is null");
  if ((!any_dtype && cache->dtype() != dtype) || cache->hidden_size() != hidden ||
      cache->intermediate_size() != intermediate) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cache is %s [%u neurons x %u] but the mask source is %s [%u x %u]",
        DTypeName(cache->dtype()), cache->intermediate_size(), cache->hidden_size(),
        DTypeName(dtype), intermediate, hidden));
  }
  return absl::OkStatus();
}

absl::Status CheckOut(absl::Span<float> out, size_t tokens, size_t intermediate) {
  if (out.size() < tokens * intermediate) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "out holds %u floats; %u tokens x %u neurons need %u", out.size(), tokens,
        intermediate, tokens * intermediate));
  }
  return absl::OkStatus();
}

// The forward's checks of x, y and the options, and the workspace sized.
absl::Status PrepareCall(DType dtype, size_t hidden, const mlp::ConstTokens& x,
                         const mlp::Tokens& y, const mlp::ForwardOptions& options,
                         mlp::Workspace* workspace) {
  if (absl::Status s = mlp::internal::ValidateCall(dtype, hidden, x, y, options); !s.ok()) return s;
  return mlp::internal::PrepareWorkspace(dtype, hidden, 0, x, options, workspace);
}

// Selects into scratch->incoming (scores: [tokens, I] float32).
absl::Status SelectInto(const float* scores, size_t tokens, size_t intermediate,
                        const Selection& selection, ScoreScratch* scratch) {
  diff::ScoreMatrix m;
  m.data = scores;
  m.rows = tokens;
  m.cols = intermediate;
  m.type = diff::ScoreType::kFloat32;
  switch (selection.kind) {
    case Selection::Kind::kTopK:
      return scratch->selector.TopK(m, selection.k, &scratch->incoming);
    case Selection::Kind::kThreshold:
      return scratch->selector.Threshold(m, selection.threshold, &scratch->incoming);
  }
  return absl::InvalidArgumentError(
      absl::StrFormat("unknown selection kind %d", static_cast<int>(selection.kind)));
}

}  // namespace

absl::Status ScoreScratch::Reserve(size_t floats0, size_t floats1, size_t intermediate) {
  const size_t want[2] = {floats0, floats1};
  memory::AlignedBuffer grown[2];
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<size_t> bytes = memory::CheckedMul(want[i], sizeof(float));
    if (!bytes.ok()) return bytes.status();
    if (*bytes <= buffers_[i].size()) continue;
    absl::StatusOr<memory::AlignedBuffer> b = memory::AlignedBuffer::Allocate(*bytes);
    if (!b.ok()) return b.status();
    grown[i] = *std::move(b);
  }
  if (incoming.size() != intermediate) {
    absl::StatusOr<diff::NeuronMask> a = diff::NeuronMask::Create(intermediate);
    if (!a.ok()) return a.status();
    absl::StatusOr<diff::NeuronMask> b = diff::NeuronMask::Create(intermediate);
    if (!b.ok()) return b.status();
    incoming = *std::move(a);
    selected = *std::move(b);
    selector.Reserve(intermediate);
  }
  for (int i = 0; i < 2; ++i) {
    if (grown[i].size() != 0) buffers_[i] = std::move(grown[i]);
  }
  return absl::OkStatus();
}

size_t ScoreScratch::bytes() const {
  return buffers_[0].size() + buffers_[1].size() + selector.bytes() +
         2 * (incoming.size() + 63) / 64 * sizeof(uint64_t);
}

// --- GateFirst ---------------------------------------------------------------

absl::StatusOr<GateFirst> GateFirst::Create(DType dtype, size_t hidden, size_t intermediate,
                                            const void* gate, size_t gate_stride) {
  if (absl::Status s = CheckShape(dtype, hidden, intermediate); !s.ok()) return s;
  if (absl::Status s = CheckRows("gate", gate, gate_stride, hidden); !s.ok()) return s;
  GateFirst g;
  g.gate_.dtype = dtype;
  g.gate_.hidden_size = hidden;
  g.gate_.count = intermediate;
  g.gate_.up = gate;  // RunActivations reads the `up` rows
  g.gate_.up_stride = gate_stride;
  g.intermediate_size_ = intermediate;
  if (absl::Status s = g.Reserve(1); !s.ok()) return s;
  return g;
}

absl::StatusOr<GateFirst> GateFirst::CreateQuant(quant::QuantFormat format, size_t hidden,
                                                 size_t intermediate, const void* gate,
                                                 size_t gate_stride) {
  if (absl::Status s = CheckShape(DType::kFloat32, hidden, intermediate); !s.ok()) return s;
  absl::StatusOr<quant::RowLayout> layout = quant::RowLayout::Create(format, hidden);
  if (!layout.ok()) return layout.status();
  if (gate == nullptr) return absl::InvalidArgumentError("gate is null");
  if (gate_stride < layout->row_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "gate row stride %u bytes is smaller than a %s row of %u weights (%u bytes)", gate_stride,
        quant::QuantTypeName(format.type), hidden, layout->row_bytes()));
  }
  absl::StatusOr<GateFirst> g = Create(DType::kFloat32, hidden, intermediate, gate, hidden);
  if (!g.ok()) return g.status();
  g->gate_quant_ = format;
  g->gate_quant_stride_ = gate_stride;
  return g;
}

absl::Status GateFirst::Reserve(size_t tokens) {
  absl::StatusOr<size_t> n = memory::CheckedMul(tokens, intermediate_size_);
  if (!n.ok()) return n.status();
  return scratch_.Reserve(*n, *n, intermediate_size_);
}

absl::Status GateFirst::Activations(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
                                    mlp::Workspace* workspace, absl::Span<float> out) {
  const mlp::Tokens no_y{out.data(), x.tokens, gate_.hidden_size, DType::kFloat32};
  // y is not written; validate x and the options as the forward does.
  if (absl::Status s = CheckOut(out, x.tokens, intermediate_size_); !s.ok()) return s;
  if (gate_quant_.has_value()) {
    if (absl::Status s = mlp::internal::CheckQuantizeX(gate_.hidden_size, options); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s =
          PrepareCall(gate_.dtype, gate_.hidden_size, x, no_y, options, workspace);
      !s.ok()) {
    return s;
  }
  RunGate(x, options, workspace, out.data(), nullptr);
  return absl::OkStatus();
}

absl::Status GateFirst::Step(cache::WeightCache* cache, const Selection& selection,
                             const mlp::ConstTokens& x, const mlp::Tokens& y,
                             const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  if (absl::Status s =
          CheckCache(cache, gate_.dtype, gate_.hidden_size, intermediate_size_,
                     cache != nullptr && Drives(cache->dtype(), cache->quant().has_value()));
      !s.ok()) {
    return s;
  }
  if (cache->has_gate()) {
    return absl::InvalidArgumentError(
        "the gate-first step needs a gate-less cache over the layer's up and down (its gate "
        "activations come from the gate pass); this cache holds gate rows");
  }
  if (absl::Status s = PrepareCall(gate_.dtype, gate_.hidden_size, x, y, options, workspace);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Select(x, selection, options, workspace); !s.ok()) return s;
  const float* act = scratch_.buffer(0);
  if (absl::Status s = internal::LayerStepGivenGate(cache, scratch_.incoming, act,
                                                    intermediate_size_, x, y, options,
                                                    workspace);
      !s.ok()) {
    return s;
  }
  std::swap(scratch_.selected, scratch_.incoming);
  return absl::OkStatus();
}

absl::Status GateFirst::StepSelected(cache::WeightCache* cache, const diff::NeuronMask& mask,
                                     absl::Span<const float> act, const mlp::ConstTokens& x,
                                     const mlp::Tokens& y, const mlp::ForwardOptions& options,
                                     mlp::Workspace* workspace) {
  if (absl::Status s =
          CheckCache(cache, gate_.dtype, gate_.hidden_size, intermediate_size_,
                     cache != nullptr && Drives(cache->dtype(), cache->quant().has_value()));
      !s.ok()) {
    return s;
  }
  if (mask.size() != intermediate_size_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "mask has %u neurons but the gate has %u", mask.size(), intermediate_size_));
  }
  if (act.size() != x.tokens * intermediate_size_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "act holds %u floats; %u tokens x %u neurons need %u", act.size(), x.tokens,
        intermediate_size_, x.tokens * intermediate_size_));
  }
  if (absl::Status s = internal::LayerStepGivenGate(cache, mask, act.data(), intermediate_size_,
                                                    x, y, options, workspace);
      !s.ok()) {
    return s;
  }
  return scratch_.selected.AssignWords(mask.words());
}

absl::Status GateFirst::FlashStep(flash::FlashModelCache* cache, size_t layer,
                                  const Selection& selection, const mlp::ConstTokens& x,
                                  const mlp::Tokens& y, const mlp::ForwardOptions& options,
                                  mlp::Workspace* workspace, FlashStepTimes* times) {
  if (absl::Status s = CheckFlash(cache, layer); !s.ok()) return s;
  if (absl::Status s = PrepareCall(gate_.dtype, gate_.hidden_size, x, y, options, workspace);
      !s.ok()) {
    return s;
  }
  if (indices_.capacity() < intermediate_size_) indices_.reserve(intermediate_size_);
  if (absl::Status s = Select(x, selection, options, workspace); !s.ok()) return s;
  scratch_.incoming.ToIndices(&indices_);
  if (absl::Status s = FlashLayerStepGivenGate(cache, layer, indices_, scratch_.buffer(0),
                                               intermediate_size_, x, y, options, workspace, times);
      !s.ok()) {
    return s;
  }
  std::swap(scratch_.selected, scratch_.incoming);
  return absl::OkStatus();
}

void GateFirst::RunGate(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
                        mlp::Workspace* workspace, float* act, float* magnitude) const {
  if (gate_quant_.has_value()) {
    mlp::internal::RunQuantActivations(*quant::RowLayout::Create(*gate_quant_, gate_.hidden_size),
                                       intermediate_size_, gate_.up, gate_quant_stride_, x, options,
                                       workspace, act, magnitude, intermediate_size_);
  } else {
    mlp::internal::RunActivations(gate_, x, options, workspace, act, magnitude, intermediate_size_);
  }
}

absl::Status GateFirst::CheckFlash(const flash::FlashModelCache* cache, size_t layer) const {
  if (cache == nullptr) return absl::InvalidArgumentError("cache is null");
  const store::BundleShape& shape = cache->layout().shape();
  if (!Drives(shape.dtype, shape.quant.has_value()) || shape.hidden != gate_.hidden_size ||
      shape.intermediate != intermediate_size_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the bundle file is %s [%u neurons x %u] but the gate is %s [%u x %u]",
                        DTypeName(shape.dtype), shape.intermediate, shape.hidden,
                        DTypeName(gate_.dtype), intermediate_size_, gate_.hidden_size));
  }
  if (shape.gated) {
    return absl::InvalidArgumentError(
        "the gate-first flash step needs a gate-less bundle file (up and down only): the gate "
        "stays in DRAM");
  }
  if (layer >= shape.layers) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer %u is out of range for %u layers", layer, shape.layers));
  }
  return absl::OkStatus();
}

absl::Status GateFirst::Speculate(flash::FlashModelCache* cache, size_t layer,
                                  const mlp::ConstTokens& x_early, size_t count,
                                  const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  if (absl::Status s = CheckFlash(cache, layer); !s.ok()) return s;
  // x is validated as for a forward (y is not written).
  const mlp::Tokens no_y{const_cast<void*>(x_early.data), x_early.tokens, x_early.stride,
                         x_early.dtype};
  if (absl::Status s =
          PrepareCall(gate_.dtype, gate_.hidden_size, x_early, no_y, options, workspace);
      !s.ok()) {
    return s;
  }
  if (speculated_.capacity() < intermediate_size_) {
    speculated_.reserve(intermediate_size_);
    speculated_rank_.reserve(intermediate_size_);
  }
  const size_t slots = cache->capacity();
  Selection sel;
  sel.k = std::min({count, intermediate_size_, slots});
  if (absl::Status s = Select(x_early, sel, options, workspace); !s.ok()) return s;
  // The union over several tokens may exceed the slots: fewer per token.
  while (scratch_.incoming.CountActive() > slots && sel.k > 1) {
    sel.k = std::max<size_t>(1, sel.k * slots / scratch_.incoming.CountActive());
    if (absl::Status s =
            SelectInto(scratch_.buffer(1), x_early.tokens, intermediate_size_, sel, &scratch_);
        !s.ok()) {
      return s;
    }
  }
  scratch_.incoming.ToIndices(&speculated_);
  // Most likely first (the largest |act| over the tokens): those enter
  // first when not all fit.
  const float* magnitude = scratch_.buffer(1);
  const size_t neurons = intermediate_size_;
  auto score = [&](uint32_t j) {
    float m = 0;
    for (size_t t = 0; t < x_early.tokens; ++t) m = std::max(m, magnitude[t * neurons + j]);
    return m;
  };
  speculated_rank_.assign(speculated_.begin(), speculated_.end());
  std::stable_sort(speculated_rank_.begin(), speculated_rank_.end(),
                   [&](uint32_t a, uint32_t b) { return score(a) > score(b); });
  return cache->PrefetchGuess(layer, speculated_, speculated_rank_);
}

absl::Status GateFirst::Select(const mlp::ConstTokens& x, const Selection& selection,
                               const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  if (gate_quant_.has_value()) {
    if (absl::Status s = mlp::internal::CheckQuantizeX(gate_.hidden_size, options); !s.ok()) {
      return s;
    }
  }
  if (absl::Status s = Reserve(x.tokens); !s.ok()) return s;
  float* act = scratch_.buffer(0);
  float* magnitude = scratch_.buffer(1);
  RunGate(x, options, workspace, act, magnitude);
  return SelectInto(magnitude, x.tokens, intermediate_size_, selection, &scratch_);
}

absl::Status GateFirst::Forward(const mlp::NeuronRows& up_down, const Selection& selection,
                                const mlp::ConstTokens& x, const mlp::Tokens& y,
                                const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  if (!Drives(up_down.dtype, false) || up_down.hidden_size != gate_.hidden_size ||
      up_down.count != intermediate_size_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "up_down rows are %s [%u x %u] but the gate is %s [%u x %u]",
        DTypeName(up_down.dtype), up_down.count, up_down.hidden_size, DTypeName(gate_.dtype),
        intermediate_size_, gate_.hidden_size));
  }
  if (up_down.gate != nullptr) {
    return absl::InvalidArgumentError(
        "up_down must have no gate rows (the gate pass computes their part)");
  }
  if (absl::Status s = mlp::internal::ValidateRows(up_down); !s.ok()) return s;
  if (absl::Status s = PrepareCall(gate_.dtype, gate_.hidden_size, x, y, options, workspace);
      !s.ok()) {
    return s;
  }
  if (indices_.capacity() < intermediate_size_) {
    // Growth of a std::vector: sized once, like the other scratch.
    indices_.reserve(intermediate_size_);
  }
  if (absl::Status s = Select(x, selection, options, workspace); !s.ok()) return s;
  scratch_.incoming.ToIndices(&indices_);
  if (absl::Status s = mlp::internal::ForwardIndexedGivenGate(
          up_down, indices_, scratch_.buffer(0), intermediate_size_, x, y, options, workspace);
      !s.ok()) {
    return s;
  }
  std::swap(scratch_.selected, scratch_.incoming);
  return absl::OkStatus();
}

absl::Status GateFirst::Forward(const mlp::QuantNeuronRows& up_down, const Selection& selection,
                                const mlp::ConstTokens& x, const mlp::Tokens& y,
                                const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  if (up_down.hidden_size != gate_.hidden_size || up_down.count != intermediate_size_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("up_down rows are %s [%u x %u] but the gate is [%u x %u]",
                        quant::QuantTypeName(up_down.format.type), up_down.count,
                        up_down.hidden_size, intermediate_size_, gate_.hidden_size));
  }
  if (up_down.gate != nullptr) {
    return absl::InvalidArgumentError(
        "up_down must have no gate rows (the gate pass computes their part)");
  }
  // x float32 for the quantized rows (and so for any gate).
  if (absl::Status s = PrepareCall(DType::kFloat32, gate_.hidden_size, x, y, options, workspace);
      !s.ok()) {
    return s;
  }
  if (indices_.capacity() < intermediate_size_) indices_.reserve(intermediate_size_);
  if (absl::Status s = Select(x, selection, options, workspace); !s.ok()) return s;
  scratch_.incoming.ToIndices(&indices_);
  // Validates the rows (format, strides) before anything is written to y.
  if (absl::Status s = mlp::internal::ForwardIndexedQuantGivenGate(
          up_down, indices_, scratch_.buffer(0), intermediate_size_, x, y, options, workspace);
      !s.ok()) {
    return s;
  }
  std::swap(scratch_.selected, scratch_.incoming);
  return absl::OkStatus();
}

// --- LowRankPredictor ------------------------------------------------------

absl::StatusOr<LowRankPredictor> LowRankPredictor::Create(DType dtype, size_t hidden,
                                                          size_t intermediate, size_t rank,
                                                          const void* a, size_t a_stride,
                                                          const void* b, size_t b_stride) {
  if (absl::Status s = CheckShape(dtype, hidden, intermediate); !s.ok()) return s;
  if (rank == 0) return absl::InvalidArgumentError("rank must be positive, got 0");
  if (absl::Status s = CheckRows("A", a, a_stride, hidden); !s.ok()) return s;
  if (absl::Status s = CheckRows("B", b, b_stride, rank); !s.ok()) return s;
  LowRankPredictor p;
  p.dtype_ = dtype;
  p.hidden_size_ = hidden;
  p.intermediate_size_ = intermediate;
  p.rank_ = rank;
  p.a_ = a;
  p.a_stride_ = a_stride;
  p.b_ = b;
  p.b_stride_ = b_stride;
  if (absl::Status s = p.Reserve(1); !s.ok()) return s;
  return p;
}

absl::Status LowRankPredictor::Reserve(size_t tokens) {
  absl::StatusOr<size_t> n = memory::CheckedMul(tokens, intermediate_size_);
  if (!n.ok()) return n.status();
  absl::StatusOr<size_t> z = memory::CheckedMul(std::min(tokens, mlp::kTokenChunk), rank_);
  if (!z.ok()) return z.status();
  return scratch_.Reserve(*n, *z, intermediate_size_);
}

void LowRankPredictor::Compute(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
                               mlp::Workspace* workspace, float* out) {
  mlp::internal::RunLowRank(dtype_, hidden_size_, rank_, intermediate_size_, a_, a_stride_, b_,
                            b_stride_, x, options, workspace, scratch_.buffer(1), out,
                            intermediate_size_);
}

absl::Status LowRankPredictor::Scores(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
                                      mlp::Workspace* workspace, absl::Span<float> out) {
  const mlp::Tokens no_y{out.data(), x.tokens, hidden_size_, DType::kFloat32};
  if (absl::Status s = CheckOut(out, x.tokens, intermediate_size_); !s.ok()) return s;
  if (absl::Status s = PrepareCall(dtype_, hidden_size_, x, no_y, options, workspace);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Reserve(x.tokens); !s.ok()) return s;
  Compute(x, options, workspace, out.data());
  return absl::OkStatus();
}

absl::Status LowRankPredictor::Select(const mlp::ConstTokens& x, const Selection& selection,
                                      const mlp::ForwardOptions& options, mlp::Workspace* workspace,
                                      diff::NeuronMask* mask) {
  if (mask == nullptr) return absl::InvalidArgumentError("mask is null");
  if (mask->size() != intermediate_size_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "mask has %u neurons but the predictor scores %u", mask->size(), intermediate_size_));
  }
  if (absl::Status s = Reserve(x.tokens); !s.ok()) return s;
  float* scores = scratch_.buffer(0);
  if (absl::Status s =
          Scores(x, options, workspace, absl::MakeSpan(scores, x.tokens * intermediate_size_));
      !s.ok()) {
    return s;
  }
  if (absl::Status s = SelectInto(scores, x.tokens, intermediate_size_, selection, &scratch_);
      !s.ok()) {
    return s;
  }
  std::swap(scratch_.selected, scratch_.incoming);
  return mask->AssignWords(scratch_.selected.words());
}

absl::Status LowRankPredictor::Step(cache::WeightCache* cache, const Selection& selection,
                                    const mlp::ConstTokens& x, const mlp::Tokens& y,
                                    const mlp::ForwardOptions& options, mlp::Workspace* workspace) {
  if (absl::Status s = CheckCache(cache, dtype_, hidden_size_, intermediate_size_); !s.ok()) {
    return s;
  }
  if (absl::Status s = PrepareCall(dtype_, hidden_size_, x, y, options, workspace); !s.ok()) {
    return s;
  }
  if (absl::Status s = Reserve(x.tokens); !s.ok()) return s;
  float* scores = scratch_.buffer(0);
  Compute(x, options, workspace, scores);
  if (absl::Status s = SelectInto(scores, x.tokens, intermediate_size_, selection, &scratch_);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = LayerStep(cache, scratch_.incoming, x, y, options, workspace); !s.ok()) {
    return s;
  }
  std::swap(scratch_.selected, scratch_.incoming);
  return absl::OkStatus();
}

}  // namespace sparse_mlp::step
