// Masks a user can get, computed natively and fed straight into the layer
// step: the training-free gate-first rule and a learned low-rank predictor.
//
// GateFirst (CATS-style, exact in what it keeps): per token, compute
// a_j = act(<gate_j, x>) for every neuron (one dense pass over gate,
// W/3 of the layer), keep the neurons with the largest |a_j| (Selection:
// the top k per token, ties to the lower index, the union over the tokens;
// or those above a threshold), then compute up and down over those neurons
// only, reusing a_j: h_j = a_j x <up_j, x>. So the step reads gate once and
// up and down only for the kept neurons (bytes W/3 + 2aW/3 for a kept
// fraction a), and its cache holds up and down rows only: a gate-less
// WeightCache over the layer's up and down (the gate stays where it is).
// The result equals the forward over the kept neurons (mlp_forward.h's
// precision contract; the gate's dot is the forward's own kernel).
//
// LowRankPredictor (Deja Vu, LLM in a Flash): scores = B (A x) with A
// [r, H] and B [I, r], computed with the forward's kernels (float32,
// bfloat16 or float16 weights; the rank-r intermediate is float32, rounded
// to bfloat16 for bfloat16 weights, as the forward rounds activations),
// selected as above, then the ordinary layer step on a gated cache. Reads
// (H + I) r weights per call: at r = 128 on a 3072 x 8192 layer, 4% of the
// layer's weights.
//
// Selection follows diff/score_select.h exactly (radix top-k, ties to the
// lower index, -0 == +0, NaN refused naming row and neuron).
//
// Ownership: both borrow their weights (gate; A and B), which must outlive
// them unchanged. Scratch ([tokens, I] floats, two such for GateFirst) is
// owned, grown on demand (Reserve sizes it; calls that fit never allocate).
// Thread-compatible: one call at a time per object; the cache and
// workspace passed in follow their own rules (a step is a mutating call on
// the cache).
//
// Errors (InvalidArgument naming the value unless noted): at Create, a
// dtype outside the three, H, I or r zero, a null weight, a stride smaller
// than its row; at a call, those of mlp_forward.h for x, y and the options,
// a selection with k > I or a NaN threshold, a cache of another shape or
// type (or, for GateFirst, one holding gate rows), and the cache's update
// errors; allocation failure is ResourceExhausted. On any error the cache,
// y and mask() are unchanged.
#ifndef SPARSE_MLP_STEP_MASK_STEP_H_
#define SPARSE_MLP_STEP_MASK_STEP_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "diff/score_select.h"
#include "flash/flash_cache.h"
#include "memory/aligned_buffer.h"
#include "mlp/mlp_forward.h"
#include "mlp/quant_forward.h"
#include "quant/format.h"
#include "step/flash_step.h"

namespace sparse_mlp::step {

// Which neurons a step keeps from its scores.
struct Selection {
  enum class Kind { kTopK, kThreshold };
  Kind kind = Kind::kTopK;
  size_t k = 0;           // kTopK: per token, in [0, I]
  float threshold = 0.f;  // kThreshold: scores strictly above it
};

// Per-call scratch of both: [tokens, I] float32 scores (and GateFirst's
// activations), the selector and the masks.
class ScoreScratch {
 public:
  // Buffers of at least floats0 and floats1 floats, masks of I neurons.
  absl::Status Reserve(size_t floats0, size_t floats1, size_t intermediate);
  float* buffer(int i) { return reinterpret_cast<float*>(buffers_[i].data()); }
  size_t bytes() const;

  diff::ScoreSelector selector;
  diff::NeuronMask selected;  // the last successful selection
  diff::NeuronMask incoming;  // the one being made

 private:
  memory::AlignedBuffer buffers_[2];
};

class GateFirst {
 public:
  // gate: [I, H] neuron-major rows, row r at gate + r x gate_stride
  // elements (nn.Linear's gate weight as it is). Borrowed.
  static absl::StatusOr<GateFirst> Create(DType dtype, size_t hidden_size,
                                          size_t intermediate_size, const void* gate,
                                          size_t gate_stride);

  // A quantized gate (quant/format.h): I rows of RowLayout(format, H), row
  // r at gate + r x gate_stride bytes. Borrowed. Selection then reads a
  // half (int8) or a quarter (q4) of a bfloat16 gate's bytes; x must be
  // float32. The up and down rows it drives may be of any type, quantized
  // or not (the steps below take them as they are).
  static absl::StatusOr<GateFirst> CreateQuant(quant::QuantFormat format, size_t hidden_size,
                                               size_t intermediate_size, const void* gate,
                                               size_t gate_stride);

  // Sizes the scratch for calls of up to `tokens` tokens.
  absl::Status Reserve(size_t tokens);

  // act(<gate_j, x_t>) into out[t x I + j] (out: x.tokens x I floats).
  absl::Status Activations(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
                           mlp::Workspace* workspace, absl::Span<float> out);

  // The gate-first step on `cache`, a gate-less WeightCache over this
  // layer's up and down: selects by |act(gate x)|, updates the cache to the
  // selection (the union over x's tokens) and writes y, as LayerStep does.
  absl::Status Step(cache::WeightCache* cache, const Selection& selection,
                    const mlp::ConstTokens& x, const mlp::Tokens& y,
                    const mlp::ForwardOptions& options, mlp::Workspace* workspace);

  // The step on neurons chosen elsewhere: `mask` (the union over x's
  // tokens) with the activations `act` a previous Activations(x) call
  // returned (x.tokens x I floats; e.g. a distributed top-k over several
  // ranks' activations). The gate is not read again. Errors as Step's, and
  // InvalidArgument for a mask or act of the wrong size.
  absl::Status StepSelected(cache::WeightCache* cache, const diff::NeuronMask& mask,
                            absl::Span<const float> act, const mlp::ConstTokens& x,
                            const mlp::Tokens& y, const mlp::ForwardOptions& options,
                            mlp::Workspace* workspace);

  // The step over the flash tier: `cache` serves this layer's up and down
  // from a gate-less bundle file (store: written without gate rows) while
  // the gate stays here, in DRAM. Selects as Step, then
  // FlashLayerStepGivenGate over the kept neurons (only their up and down
  // are loaded). The file's H, I (this layer's neurons) and type must be
  // the gate's.
  // `times` (optional) receives the flash step's phases (the gate pass and
  // the selection before it are not in them).
  absl::Status FlashStep(flash::FlashModelCache* cache, size_t layer, const Selection& selection,
                         const mlp::ConstTokens& x, const mlp::Tokens& y,
                         const mlp::ForwardOptions& options, mlp::Workspace* workspace,
                         FlashStepTimes* times = nullptr);

  // Speculative gate-first (one attention block early): selects the top
  // `count` neurons per token by |act(gate x_early)| (x_early: the layer's
  // input before its attention, normalised as the MLP's input will be),
  // the union over tokens clipped to the layer's slots, and starts their
  // reads with cache->PrefetchGuess. Returns at once. The exact step
  // afterwards (FlashStep on the real input) selects by the same rule as
  // ever and reads only the neurons this did not fetch; neurons fetched and
  // not selected stay resident like the latest token's (the guess is not a
  // token of the window, and evicts nothing of the latest token and no more
  // older neurons than the latest token let in: what does not fit is not
  // fetched, the largest |act| first). The exact step plans at once, over
  // the reads in flight. A failed speculative read is not an error here:
  // FlashStep reads the neuron again if it selects it.
  // speculation() holds the set until the next call. Errors as FlashStep's
  // before any read (nothing started).
  absl::Status Speculate(flash::FlashModelCache* cache, size_t layer,
                         const mlp::ConstTokens& x_early, size_t count,
                         const mlp::ForwardOptions& options, mlp::Workspace* workspace);
  // The neurons the last Speculate fetched, ascending.
  absl::Span<const uint32_t> speculation() const { return speculated_; }

  // The same without a cache (direct-index): selects, then reads the kept
  // neurons' rows of `up_down` in place (the layer's up rows and
  // neuron-major down rows, all I of them; gate null). No stores: with
  // every weight in DRAM and a new mask per token, the faster path
  // (docs/performance.md); the cached Step earns its place where a loaded
  // row is expensive (the flash tier).
  absl::Status Forward(const mlp::NeuronRows& up_down, const Selection& selection,
                       const mlp::ConstTokens& x, const mlp::Tokens& y,
                       const mlp::ForwardOptions& options, mlp::Workspace* workspace);
  // The same over quantized up and neuron-major down rows (x float32).
  absl::Status Forward(const mlp::QuantNeuronRows& up_down, const Selection& selection,
                       const mlp::ConstTokens& x, const mlp::Tokens& y,
                       const mlp::ForwardOptions& options, mlp::Workspace* workspace);

  // The gate's quantized format, if it is quantized.
  const std::optional<quant::QuantFormat>& gate_quant() const { return gate_quant_; }

  // The neurons the last successful Step or Forward kept (empty mask
  // before one).
  const diff::NeuronMask& mask() const { return scratch_.selected; }
  size_t scratch_bytes() const { return scratch_.bytes(); }

 private:
  GateFirst() = default;
  // Gate pass and selection into scratch_.incoming (after validation).
  absl::Status Select(const mlp::ConstTokens& x, const Selection& selection,
                      const mlp::ForwardOptions& options, mlp::Workspace* workspace);
  // The type x must have for the gate pass (the gate's; float32 for a
  // quantized gate). Rows of `dtype` (or quantized ones) may be driven by
  // this gate when either side is quantized (x is float32 then) or the
  // types agree.
  bool Drives(DType dtype, bool quantized) const {
    return gate_quant_.has_value() || quantized || dtype == gate_.dtype;
  }
  // act(gate x) (and |act| into magnitude, if not null) for every neuron.
  void RunGate(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
               mlp::Workspace* workspace, float* act, float* magnitude) const;
  mlp::NeuronRows gate_;  // a quantized gate: rows in gate_.up, float32 x
  std::optional<quant::QuantFormat> gate_quant_;
  size_t gate_quant_stride_ = 0;  // bytes
  size_t intermediate_size_ = 0;
  ScoreScratch scratch_;
  std::vector<uint32_t> indices_;  // Forward's kept neurons (capacity I)
  std::vector<uint32_t> speculated_;  // Speculate's set (capacity I)
  std::vector<uint32_t> speculated_rank_;  // the same, most likely first
  // Checks the flash cache and layer against this gate (FlashStep's and
  // Speculate's preconditions).
  absl::Status CheckFlash(const flash::FlashModelCache* cache, size_t layer) const;
};

class LowRankPredictor {
 public:
  // a: [r, H] rows (stride a_stride elements), b: [I, r] rows (stride
  // b_stride), both of `dtype`. Borrowed.
  static absl::StatusOr<LowRankPredictor> Create(DType dtype, size_t hidden_size,
                                                 size_t intermediate_size, size_t rank,
                                                 const void* a, size_t a_stride, const void* b,
                                                 size_t b_stride);

  absl::Status Reserve(size_t tokens);

  // B (A x_t) into out[t x I + i] (out: x.tokens x I floats).
  absl::Status Scores(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
                      mlp::Workspace* workspace, absl::Span<float> out);

  // Selects from the scores into *mask (the union over x's tokens).
  absl::Status Select(const mlp::ConstTokens& x, const Selection& selection,
                      const mlp::ForwardOptions& options, mlp::Workspace* workspace,
                      diff::NeuronMask* mask);

  // Selects, then LayerStep on `cache` (this layer's gated cache).
  absl::Status Step(cache::WeightCache* cache, const Selection& selection,
                    const mlp::ConstTokens& x, const mlp::Tokens& y,
                    const mlp::ForwardOptions& options, mlp::Workspace* workspace);

  const diff::NeuronMask& mask() const { return scratch_.selected; }
  size_t rank() const { return rank_; }
  size_t scratch_bytes() const { return scratch_.bytes(); }

 private:
  LowRankPredictor() = default;
  // B (A x) into out (after validation and Reserve).
  void Compute(const mlp::ConstTokens& x, const mlp::ForwardOptions& options,
               mlp::Workspace* workspace, float* out);
  DType dtype_ = DType::kFloat32;
  size_t hidden_size_ = 0, intermediate_size_ = 0, rank_ = 0;
  const void* a_ = nullptr;
  const void* b_ = nullptr;
  size_t a_stride_ = 0, b_stride_ = 0;
  ScoreScratch scratch_;
};

}  // namespace sparse_mlp::step

#endif  // SPARSE_MLP_STEP_MASK_STEP_H_
