// The MLP stack of a whole model, per token, dense and sparse:
//
//   bazel run //bench:model                 # llama-3.2-3b, 28 layers, bf16
//   bazel run //bench:model -- --help       # every option
//
// L layers of synthetic weights (gate, up [I, H], down [H, I] for the dense
// forward and its neuron-major copy for the caches and the direct index, as
// a checkpoint converter would store it once), one token (T = 1) through
// every layer's MLP per step. Each layer has its own mask sequence: A = a x
// I active, and per token a fraction of the active set replaced that grows
// from --churn_early (layer 0) to --churn_late (layer L - 1). Per token, the
// whole stack by:
//   dense      mlp::ForwardLinear per layer (the nn.Linear layout)
//   direct     mlp::ForwardIndexed on the layer's mask (no cache)
//   step       step::LayerStep per layer on a ModelCache (fused update +
//              forward)
//   per-layer  ModelCache::Update(l) then step::CacheForward, layer by layer
//   batched    ModelCache::UpdateMany (all layers) then the forwards
//   overlap    layer l's forward on one thread while another updates layer
//              l + 1 (one OpenMP region of two per layer)
//   upd-single, upd-batched   the updates alone: L Update calls back to
//              back, and one UpdateMany
// The sparse variants share one ModelCache and take turns over consecutive
// tokens of the mask sequences (every token churns from the previous one);
// --rounds rounds of --tokens tokens each, medians over all. Resident memory
// of the caches (borrowed sources) is reported against the weights. The
// model issue's goals are judged on this run at the end.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/masks.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/process_stats.h"
#include "bench/synthetic_weights.h"
#include "bench/timing.h"
#include "cache/model_cache.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gather/transpose.h"
#include "memory/aligned_buffer.h"
#include "mlp/mlp_forward.h"
#include "mlp/quant_forward.h"
#include "nlohmann/json.hpp"
#include "platform/float16.h"
#include "platform/simd_level.h"
#include "quant/format.h"
#include "step/layer_step.h"

ABSL_FLAG(std::string, model, "llama-3.2-3b", "shape preset (see //bench:cache --help)");
ABSL_FLAG(int, layers, 28, "number of layers L");
ABSL_FLAG(int, hidden, 0, "H instead of the preset's (0: the preset's)");
ABSL_FLAG(std::string, dtype, "bfloat16",
          "weight type: bfloat16, float32, float16, or quantized rows int8 / q4");
ABSL_FLAG(int, group, 32, "int8 / q4: weights per scale (int8: 0 = the whole row)");
ABSL_FLAG(bool, quantize_x, false,
          "int8 / q4: round x to int8 per block of 32 (integer products with AVX-512 VNNI)");
ABSL_FLAG(std::string, active, "0.5,0.3", "active fractions a");
ABSL_FLAG(double, churn_early, 0.05, "fraction of the active set replaced per token, layer 0");
ABSL_FLAG(double, churn_late, 0.40, "the same for the last layer (linear in between)");
ABSL_FLAG(int, tokens, 4, "consecutive tokens per variant per round");
ABSL_FLAG(int, rounds, 5, "rounds (the variants take turns within each)");
ABSL_FLAG(int, threads, 2, "threads of every call");
ABSL_FLAG(std::string, layout, "split", "packed layout of the caches: split, interleaved, fused");
ABSL_FLAG(std::string, ops, "",
          "variants to run, comma-separated (default all: dense, direct, step, per-layer, "
          "batched, overlap, upd-single, upd-batched)");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");

namespace sparse_mlp::bench {
namespace {

using cache::DType;

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(s.message()).c_str());
    std::exit(1);
  }
}


// One layer's weights: gate, up [I, H]; down [H, I] and neuron-major.
struct Layer {
  memory::AlignedBuffer gate, up, down, down_rows;
};

struct Config {
  const ModelPreset* preset = nullptr;
  size_t hidden = 0, intermediate = 0;
  size_t layers = 0;
  DType dtype = DType::kBFloat16;
  std::optional<quant::QuantFormat> quant;  // quantized rows instead of dtype
  std::vector<double> active;
  double churn_early = 0, churn_late = 0;
  int tokens = 0, rounds = 0, threads = 0;
  cache::PackedLayout layout = cache::PackedLayout::kSplit;
  std::vector<std::string> ops;  // empty: all
};

absl::StatusOr<Config> ConfigFromFlags() {
  Config c;
  c.preset = FindModelPreset(absl::GetFlag(FLAGS_model));
  if (c.preset == nullptr) {
    return absl::InvalidArgumentError("unknown --model=" + absl::GetFlag(FLAGS_model));
  }
  c.hidden = absl::GetFlag(FLAGS_hidden) > 0 ? static_cast<size_t>(absl::GetFlag(FLAGS_hidden))
                                             : c.preset->hidden;
  c.intermediate = c.preset->intermediate;
  const int layers = absl::GetFlag(FLAGS_layers);
  if (layers < 1 || static_cast<size_t>(layers) > cache::WeightCache::kMaxBatchCaches) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--layers=%d is not in [1, %u]", layers, cache::WeightCache::kMaxBatchCaches));
  }
  c.layers = static_cast<size_t>(layers);
  if (absl::StatusOr<quant::QuantType> q = quant::ParseQuantType(absl::GetFlag(FLAGS_dtype));
      q.ok()) {
    c.quant = quant::QuantFormat{*q, static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_group)))};
    c.dtype = DType::kFloat32;  // x and y
    if (absl::Status s = quant::RowLayout::Create(*c.quant, c.hidden).status(); !s.ok()) return s;
  } else {
    absl::StatusOr<DType> dtype = cache::ParseDType(absl::GetFlag(FLAGS_dtype));
    if (!dtype.ok()) return dtype.status();
    c.dtype = *dtype;
  }
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_active), ',')) {
    double v;
    if (!absl::SimpleAtod(part, &v) || !(v > 0 && v <= 1)) {
      return absl::InvalidArgumentError(absl::StrFormat("--active: '%s' is not in (0, 1]", part));
    }
    c.active.push_back(v);
  }
  c.churn_early = absl::GetFlag(FLAGS_churn_early);
  c.churn_late = absl::GetFlag(FLAGS_churn_late);
  for (double v : {c.churn_early, c.churn_late}) {
    if (!(v >= 0 && v <= 1)) {
      return absl::InvalidArgumentError(absl::StrFormat("churn %g is not in [0, 1]", v));
    }
  }
  c.tokens = absl::GetFlag(FLAGS_tokens);
  c.rounds = absl::GetFlag(FLAGS_rounds);
  c.threads = absl::GetFlag(FLAGS_threads);
  if (c.tokens < 1 || c.rounds < 1 || c.threads < 1) {
    return absl::InvalidArgumentError("need --tokens, --rounds, --threads >= 1");
  }
  absl::StatusOr<cache::PackedLayout> layout =
      cache::ParsePackedLayout(absl::GetFlag(FLAGS_layout));
  if (!layout.ok()) return layout.status();
  c.layout = *layout;
  const std::vector<std::string> known = {"dense",    "direct",  "step",       "per-layer",
                                          "batched",  "overlap", "upd-single", "upd-batched"};
  if (!absl::GetFlag(FLAGS_ops).empty()) {
    for (absl::string_view op : absl::StrSplit(absl::GetFlag(FLAGS_ops), ',')) {
      if (std::find(known.begin(), known.end(), op) == known.end()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "--ops: unknown variant '%s' (choices: %s)", op, absl::StrJoin(known, ", ")));
      }
      c.ops.emplace_back(op);
    }
  }
  return c;
}

// One timed variant: per-token seconds of the whole stack, and of its
// update part where it has one.
struct Series {
  std::vector<double> token, update;
};

struct Result {
  double active;
  std::string op;
  double token_s, update_s;
};

class StackBench {
 public:
  StackBench(const Config& c, const std::vector<Layer>& layers)
      : c_(c), layers_(layers), h_(c.hidden), i_(c.intermediate) {
    x_.resize(c.layers);
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (auto& x : x_) {
      x.resize(h_);
      for (float& v : x) v = u(rng);
    }
    y_.resize(h_);
    Check(ws_.Reserve(1, h_, i_, c.threads), "Workspace::Reserve");
    Check(ws_single_.Reserve(1, h_, i_, 1), "Workspace::Reserve");
    opts_.num_threads = c.threads;
    opts_.quantize_x = absl::GetFlag(FLAGS_quantize_x);
    single_ = opts_;
    single_.num_threads = 1;
  }

  // Runs every variant at active fraction a; appends to results.
  void Run(double a, std::vector<Result>* results, cache::ModelFootprint* footprint,
           size_t* rss_with_caches) {
    const size_t active = static_cast<size_t>(std::lround(a * static_cast<double>(i_)));
    std::mt19937_64 rng(20261202);
    masks_.clear();
    for (size_t l = 0; l < c_.layers; ++l) masks_.push_back(RandomMask(i_, active, rng));
    cache::ModelCacheOptions o;
    o.num_layers = c_.layers;
    o.layer.hidden_size = h_;
    o.layer.intermediate_size = i_;
    o.layer.dtype = c_.dtype;
    o.layer.quant = c_.quant;
    o.layer.layout = c_.layout;
    o.layer.ownership = cache::SourceOwnership::kBorrow;
    o.layer.down_layout = cache::DownLayout::kNeuronMajor;
    o.layer.num_threads = c_.threads;
    o.expected_active_fraction = a;
    std::vector<cache::MlpWeights> weights;
    for (const Layer& l : layers_) {
      weights.push_back({l.gate.data(), l.up.data(), l.down_rows.data()});
    }
    absl::StatusOr<std::unique_ptr<cache::ModelCache>> model =
        cache::ModelCache::Create(o, weights, masks_);
    Check(model.status(), "ModelCache::Create");
    model_ = model->get();
    *footprint = model_->footprint();
    *rss_with_caches = ResidentBytes();

    using Variant = void (StackBench::*)(Series*);
    const std::vector<std::pair<std::string, Variant>> all_variants = {
        {"dense", &StackBench::Dense},         {"direct", &StackBench::Direct},
        {"step", &StackBench::Step},           {"per-layer", &StackBench::PerLayer},
        {"batched", &StackBench::Batched},     {"overlap", &StackBench::Overlap},
        {"upd-single", &StackBench::UpdatesSingle}, {"upd-batched", &StackBench::UpdatesBatched}};
    std::vector<std::pair<std::string, Variant>> variants;
    for (const auto& v : all_variants) {
      if (c_.ops.empty() || std::find(c_.ops.begin(), c_.ops.end(), v.first) != c_.ops.end()) {
        variants.push_back(v);
      }
    }
    std::map<std::string, Series> series;
    for (int round = 0; round < c_.rounds + 1; ++round) {  // round 0: warm-up
      for (const auto& [name, fn] : variants) {
        Series s;
        for (int t = 0; t < c_.tokens; ++t) {
          NextToken(rng);
          (this->*fn)(&s);
        }
        if (round == 0) continue;
        Series& all = series[name];
        all.token.insert(all.token.end(), s.token.begin(), s.token.end());
        all.update.insert(all.update.end(), s.update.begin(), s.update.end());
      }
    }
    for (const auto& [name, fn] : variants) {
      const Series& s = series[name];
      results->push_back({a, name, Median(s.token), Median(s.update)});
    }
    churn_.clear();
    for (size_t l = 0; l < c_.layers; ++l) churn_.push_back(model_->layer_stats(l)->churn);
    model->reset();
    model_ = nullptr;
  }

  // Measured churn per layer, of the last Run.
  const std::vector<double>& churn() const { return churn_; }

 private:
  double ChurnOf(size_t l) const {
    const double f = c_.layers == 1 ? 0.0 : static_cast<double>(l) / (c_.layers - 1);
    return c_.churn_early + (c_.churn_late - c_.churn_early) * f;
  }
  void NextToken(std::mt19937_64& rng) {
    for (size_t l = 0; l < c_.layers; ++l) masks_[l] = Churn(masks_[l], ChurnOf(l), rng);
  }
  mlp::ConstTokens X(size_t l) const { return {x_[l].data(), 1, h_, DType::kFloat32}; }
  mlp::Tokens Y() { return {y_.data(), 1, h_, DType::kFloat32}; }
  cache::WeightCache* Cache(size_t l) { return *model_->layer(l); }
  mlp::NeuronRows Rows(size_t l) const {
    const Layer& w = layers_[l];
    return {c_.dtype, h_, i_, w.gate.data(), h_, w.up.data(), h_, w.down_rows.data(), h_};
  }
  mlp::QuantNeuronRows QuantRows(size_t l) const {
    const Layer& w = layers_[l];
    const size_t rb = quant::RowLayout::Create(*c_.quant, h_)->row_bytes();
    return {*c_.quant, h_, i_, w.gate.data(), rb, w.up.data(), rb, w.down_rows.data(), rb};
  }

  void Dense(Series* s) {
    s->token.push_back(SecondsOf([&] {
      for (size_t l = 0; l < c_.layers; ++l) {
        const Layer& w = layers_[l];
        if (c_.quant.has_value()) {  // quantized: neuron-major rows, all of them
          Check(mlp::ForwardQuant(QuantRows(l), X(l), Y(), opts_, &ws_), "ForwardQuant");
          continue;
        }
        const mlp::LinearWeights lw{c_.dtype, h_, i_, w.gate.data(), w.up.data(), w.down.data()};
        Check(mlp::ForwardLinear(lw, X(l), Y(), opts_, &ws_), "ForwardLinear");
      }
    }));
  }
  void Direct(Series* s) {
    s->token.push_back(SecondsOf([&] {
      for (size_t l = 0; l < c_.layers; ++l) {
        masks_[l].ToIndices(&indices_);
        if (c_.quant.has_value()) {
          Check(mlp::ForwardIndexedQuant(QuantRows(l), indices_, X(l), Y(), opts_, &ws_),
                "ForwardIndexedQuant");
          continue;
        }
        Check(mlp::ForwardIndexed(Rows(l), indices_, X(l), Y(), opts_, &ws_), "ForwardIndexed");
      }
    }));
  }
  void Step(Series* s) {
    s->token.push_back(SecondsOf([&] {
      for (size_t l = 0; l < c_.layers; ++l) {
        Check(step::LayerStep(Cache(l), masks_[l], X(l), Y(), opts_, &ws_), "LayerStep");
      }
    }));
  }
  void PerLayer(Series* s) {
    double update = 0;
    s->token.push_back(SecondsOf([&] {
      for (size_t l = 0; l < c_.layers; ++l) {
        update += SecondsOf([&] { Check(model_->Update(l, masks_[l]), "Update"); });
        Check(step::CacheForward(*Cache(l), X(l), Y(), opts_, &ws_), "CacheForward");
      }
    }));
    s->update.push_back(update);
  }
  void Batched(Series* s) {
    double update = 0;
    std::vector<cache::LayerMask> batch;
    for (size_t l = 0; l < c_.layers; ++l) batch.push_back({l, &masks_[l]});
    s->token.push_back(SecondsOf([&] {
      update = SecondsOf([&] { Check(model_->UpdateMany(batch), "UpdateMany"); });
      for (size_t l = 0; l < c_.layers; ++l) {
        Check(step::CacheForward(*Cache(l), X(l), Y(), opts_, &ws_), "CacheForward");
      }
    }));
    s->update.push_back(update);
  }
  // The updates alone (no forwards): L single updates back to back, or one
  // UpdateMany.
  void UpdatesSingle(Series* s) {
    s->update.push_back(SecondsOf([&] {
      for (size_t l = 0; l < c_.layers; ++l) Check(model_->Update(l, masks_[l]), "Update");
    }));
    s->token.push_back(s->update.back());
  }
  void UpdatesBatched(Series* s) {
    std::vector<cache::LayerMask> batch;
    for (size_t l = 0; l < c_.layers; ++l) batch.push_back({l, &masks_[l]});
    s->update.push_back(SecondsOf([&] { Check(model_->UpdateMany(batch), "UpdateMany"); }));
    s->token.push_back(s->update.back());
  }
  // Layer l's forward (thread 0) and layer l + 1's update (thread 1) at
  // once, each on one thread; layer 0's update first, alone.
  void Overlap(Series* s) {
    s->token.push_back(SecondsOf([&] {
      Check(model_->Update(0, masks_[0]), "Update");
      for (size_t l = 0; l < c_.layers; ++l) {
        absl::Status fwd, upd;
#pragma omp parallel num_threads(2)
        {
          if (omp_get_thread_num() == 0) {
            fwd = step::CacheForward(*Cache(l), X(l), Y(), single_, &ws_single_);
          } else if (l + 1 < c_.layers) {
            const cache::CacheUpdate u{Cache(l + 1), &masks_[l + 1]};
            upd = cache::WeightCache::UpdateMany({&u, 1}, 1);
          }
        }
        Check(fwd, "CacheForward");
        Check(upd, "UpdateMany");
      }
    }));
  }

  const Config& c_;
  const std::vector<Layer>& layers_;
  const size_t h_, i_;
  std::vector<std::vector<float>> x_;
  std::vector<float> y_;
  mlp::Workspace ws_, ws_single_;
  mlp::ForwardOptions opts_, single_;
  std::vector<diff::NeuronMask> masks_;
  std::vector<uint32_t> indices_;
  cache::ModelCache* model_ = nullptr;
  std::vector<double> churn_;
};

const Result* Find(const std::vector<Result>& rs, double a, const std::string& op) {
  for (const Result& r : rs) {
    if (r.active == a && r.op == op) return &r;
  }
  return nullptr;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The MLP stack of a whole model per token, dense and sparse");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<Config> config = ConfigFromFlags();
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  const Config& c = *config;
  const size_t h = c.hidden, i = c.intermediate;
  const size_t elem = cache::DTypeSize(c.dtype);
  const size_t row_bytes =
      c.quant.has_value() ? quant::RowLayout::Create(*c.quant, h)->row_bytes() : h * elem;
  const size_t weight_bytes = c.layers * 3 * i * row_bytes;
  const std::string type_name =
      c.quant.has_value()
          ? absl::StrFormat("%s (group %d)", quant::QuantTypeName(c.quant->type),
                            quant::RowLayout::Create(*c.quant, h)->group())
          : std::string(cache::DTypeName(c.dtype));
  std::printf("%s MLP stack: %zu layers, H=%zu I=%zu, %s (%.2f GB of MLP weights), %d threads, "
              "simd %s, cache layout %s, churn %.2f (layer 0) to %.2f (layer %zu), T = 1, "
              "%d rounds x %d tokens per variant (medians)\n",
              c.preset->name, c.layers, h, i, type_name.c_str(), weight_bytes / 1e9,
              c.threads, SimdLevelName(Resolve(SimdLevel::kBest)),
              cache::PackedLayoutName(c.layout), c.churn_early, c.churn_late, c.layers - 1,
              c.rounds, c.tokens);
  const size_t rss_before = ResidentBytes();
  std::vector<Layer> layers;
  for (size_t l = 0; l < c.layers; ++l) {
    if (c.quant.has_value()) {  // neuron-major quantized rows; no [H, I] down
      const quant::RowLayout ql = *quant::RowLayout::Create(*c.quant, h);
      layers.push_back({RandomQuantRows(i, ql, 3 * l + 1, c.threads),
                        RandomQuantRows(i, ql, 3 * l + 2, c.threads), Buffer(64),
                        RandomQuantRows(i, ql, 3 * l + 3, c.threads)});
      continue;
    }
    Layer w{RandomValues(h * i, c.dtype, 0.03f, 3 * l + 1, c.threads),
            RandomValues(h * i, c.dtype, 0.03f, 3 * l + 2, c.threads),
            RandomValues(h * i, c.dtype, 0.03f, 3 * l + 3, c.threads), Buffer(h * i * elem)};
    gather::TransposeOptions o;
    o.num_threads = c.threads;
    Check(gather::Transpose({w.down.data(), h, i * elem}, i, elem, {w.down_rows.data(), i, h * elem},
                            o),
          "Transpose");
    layers.push_back(std::move(w));
  }
  const size_t rss_weights = ResidentBytes() - rss_before;
  std::printf("weights resident: %.2f GB (%.2f GB of MLP weights + the neuron-major down copy)\n\n",
              rss_weights / 1e9, weight_bytes / 1e9);

  StackBench bench(c, layers);
  std::vector<Result> results;
  std::map<double, cache::ModelFootprint> footprints;
  std::map<double, size_t> rss_caches;
  std::map<double, double> mean_churn;
  for (double a : c.active) {
    const size_t rss = ResidentBytes();
    size_t rss_after = 0;
    bench.Run(a, &results, &footprints[a], &rss_after);
    rss_caches[a] = rss_after - rss;
    std::printf("a=%.2f measured churn per layer:", a);
    double churn_sum = 0;
    for (double v : bench.churn()) {
      std::printf(" %.2f", v);
      churn_sum += v;
    }
    mean_churn[a] = bench.churn().empty() ? 0 : churn_sum / bench.churn().size();
    std::printf("\n");
  }

  std::printf("\n%-6s %-11s %12s %9s %12s\n", "active", "op", "token_ms", "x_dense", "update_ms");
  for (const Result& r : results) {
    const Result* dense = Find(results, r.active, "dense");
    std::printf("%-6.2f %-11s %12.2f", r.active, r.op.c_str(), r.token_s * 1e3);
    if (dense != nullptr) {
      std::printf(" %9.3f", r.token_s / dense->token_s);
    } else {
      std::printf(" %9s", "-");
    }
    if (r.update_s > 0) {
      std::printf(" %12.3f\n", r.update_s * 1e3);
    } else {
      std::printf(" %12s\n", "-");
    }
  }
  std::printf("\n%-6s %14s %14s %14s %12s %8s\n", "active", "caches_GB", "packed_GB", "pool_GB",
              "resident_GB", "x_weights");
  for (double a : c.active) {
    const cache::ModelFootprint& f = footprints[a];
    std::printf("%-6.2f %14.3f %14.3f %14.3f %12.3f %8.3f\n", a, f.cache_bytes / 1e9,
                f.packed_bytes / 1e9, f.pool_capacity / 1e9, rss_caches[a] / 1e9,
                static_cast<double>(f.cache_bytes) / f.weight_bytes);
  }

  std::printf("\ngoals (set for llama-3.2-3b, 28 layers), judged on this run:\n");
  int failed = 0;
  // The ratio of two variants' times (token or update part) against a
  // limit; "not run" when either variant was left out (--ops).
  auto goal = [&](const std::string& what, double value, double limit) {
    const bool ok = value <= limit;
    failed += ok ? 0 : 1;
    std::printf("  [%s] %s: %.3f (limit %.3f)\n", ok ? "met" : "MISSED", what.c_str(), value,
                limit);
  };
  auto ratio_goal = [&](const std::string& what, double a, const std::string& op,
                        const std::string& base, bool update_part, double limit) {
    const Result* x = Find(results, a, op);
    const Result* y = Find(results, a, base);
    if (x == nullptr || y == nullptr) {
      std::printf("  [not run] %s\n", what.c_str());
      return;
    }
    goal(what, update_part ? x->update_s / y->update_s : x->token_s / y->token_s, limit);
  };
  // The layer step reads the active rows (a of the dense stack's bytes) and
  // stores the entering ones (churn x a): a step/dense target below
  // a (1 + mean churn) is out of reach at this churn, whatever the code.
  auto step_goal = [&](double a, double limit) {
    const Result* x = Find(results, a, "step");
    const Result* y = Find(results, a, "dense");
    if (x == nullptr || y == nullptr) {
      std::printf("  [not run] sparse stack (step) a=%.1f / dense\n", a);
      return;
    }
    const double value = x->token_s / y->token_s, bound = a * (1 + mean_churn[a]);
    if (value > limit && bound > limit && value <= 1.05 * bound) {
      std::printf("  [bounded] sparse stack (step) a=%.1f / dense: %.3f (target %.3f; the bytes "
                  "bound it at a(1 + churn) = %.3f for this run's mean churn %.2f)\n",
                  a, value, limit, bound, mean_churn[a]);
      return;
    }
    goal(absl::StrFormat("sparse stack (step) a=%.1f / dense (bytes bound a(1 + churn) = %.3f)",
                         a, bound),
         value, limit);
  };
  for (double a : c.active) {
    if (a == 0.5) step_goal(a, 0.6);
    if (a == 0.3) step_goal(a, 0.42);
    const cache::ModelFootprint& f = footprints[a];
    goal(absl::StrFormat("a=%.2f caches' footprint / MLP weights (borrowed)", a),
         static_cast<double>(f.cache_bytes) / f.weight_bytes, a + 0.1);
    ratio_goal(absl::StrFormat("a=%.2f UpdateMany over %zu layers / %zu single updates", a,
                               c.layers, c.layers),
               a, "upd-batched", "upd-single", true, 0.999);
  }
  for (double a : c.active) {
    const Result* overlap = Find(results, a, "overlap");
    const Result* per_layer = Find(results, a, "per-layer");
    if (overlap == nullptr || per_layer == nullptr) continue;
    std::printf("  [info] a=%.2f overlap (forward l with update l + 1) / per-layer update + "
                "forward: %.3f (kept out of the library unless < 1)\n",
                a, overlap->token_s / per_layer->token_s);
  }
  std::printf("\n%d goal(s) missed\n", failed);
  std::printf("\nwhat to pick (this run, one token, every weight in DRAM):\n");
  for (double a : c.active) {
    const Result* dense = Find(results, a, "dense");
    const Result* direct = Find(results, a, "direct");
    const Result* step = Find(results, a, "step");
    if (dense == nullptr || direct == nullptr || step == nullptr) continue;
    std::printf("  a=%.2f: direct index %.1f ms, layer step %.1f ms, dense %.1f ms per token "
                "-> %s\n",
                a, direct->token_s * 1e3, step->token_s * 1e3, dense->token_s * 1e3,
                direct->token_s <= step->token_s
                    ? "compute on the indices; a ModelCache pays when rows are costly to load"
                    : "the layer step over a ModelCache");
  }

  if (!absl::GetFlag(FLAGS_json).empty()) {
    nlohmann::json j;
    j["model"] = c.preset->name;
    j["layers"] = c.layers;
    j["dtype"] = type_name;
    j["threads"] = c.threads;
    for (const Result& r : results) {
      j["results"].push_back({{"active", r.active},
                              {"op", r.op},
                              {"token_ms", r.token_s * 1e3},
                              {"update_ms", r.update_s * 1e3}});
    }
    for (double a : c.active) {
      const cache::ModelFootprint& f = footprints[a];
      j["footprint"].push_back({{"active", a},
                                {"cache_bytes", f.cache_bytes},
                                {"packed_bytes", f.packed_bytes},
                                {"weight_bytes", f.weight_bytes}});
    }
    std::ofstream(absl::GetFlag(FLAGS_json)) << j.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) {
  sparse_mlp::bench::RequireOptimizedBuild();
  return sparse_mlp::bench::Main(argc, argv);
}
