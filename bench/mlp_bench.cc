// The sparse MLP forward against the read floor of its bytes and the
// libraries a user would otherwise call, in one run:
//
//   bazel run //bench:mlp                 # default table and goals, ~60 s
//   bazel run //bench:mlp -- --help       # every option
//
// For each element type and token count T (llama-3.2-3b shape by default):
//   dense     mlp::Forward on all I neurons (down transposed once)
//   linear    mlp::ForwardLinear (nn.Linear layout, down [H, I] as given)
//   openblas  cblas_sgemv (T = 1) / cblas_sgemm, OpenMP build, float32 only
//   onednn    oneDNN matmuls with prepacked weights (gate with swish and
//             the up product fused as post-ops), float32 and bfloat16
//   floor     a vectorized read of the same weight bytes, same threads
// and for each active fraction a < 1, on a WeightCache (--layout, split):
//   packed    step::CacheForward on the A packed neurons
//   direct    mlp::ForwardIndexed on the full arrays (no cache)
//   floor     a read of the packed rows' bytes
//   update+fwd, step  (T = --step_tokens, per churn) WeightCache::Update then
//             CacheForward, and the fused step::LayerStep, on masks that
//             change by that churn every call
// Every call starts from cold caches (a 96 MiB scrub read between calls);
// a case's calls are interleaved, repetition by repetition, so all see the
// same machine; the table shows medians. The goals of the forward's issue
// are judged on this run at the end.
#include <omp.h>
#include <x86_64-linux-gnu/openblas-openmp/cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/masks.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/read_floor.h"
#include "bench/synthetic_weights.h"
#include "bench/timing.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "dnnl.hpp"
#include "gather/transpose.h"
#include "memory/aligned_buffer.h"
#include "mlp/activation.h"
#include "mlp/mlp_forward.h"
#include "mlp/quant_forward.h"
#include "nlohmann/json.hpp"
#include "platform/float16.h"
#include "platform/simd_level.h"
#include "quant/format.h"
#include "quant/quantize.h"
#include "step/layer_step.h"

ABSL_FLAG(std::string, model, "llama-3.2-3b", "shape preset (see //bench:cache --help)");
ABSL_FLAG(std::string, dtypes, "float32,bfloat16", "weight types: float32, bfloat16, float16");
ABSL_FLAG(std::string, tokens, "1,4,16", "token counts T");
ABSL_FLAG(std::string, active, "0.5,0.3,0.1", "active fractions of the sparse cases");
ABSL_FLAG(std::string, churn, "0.02,0.10,0.25",
          "fractions of the active set replaced per call in the update/step cases");
ABSL_FLAG(int, step_tokens, 1, "T of the update+fwd and step cases");
ABSL_FLAG(int, threads, 2, "threads of every call");
ABSL_FLAG(bool, single_thread, true, "also run the dense T = 1 cases on 1 thread");
ABSL_FLAG(int, reps, 11, "timed repetitions of every call (medians are reported)");
ABSL_FLAG(std::string, layout, "split",
          "packed layout of the caches: split (the library default), interleaved, fused");
ABSL_FLAG(std::string, simd, "best", "kernel instruction set: best, avx512, avx2, scalar");
ABSL_FLAG(bool, baselines, true, "run the OpenBLAS and oneDNN baselines");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");
ABSL_FLAG(std::string, quant, "int8,q4",
          "quantized row formats to run (empty: none): int8, q4; each against a read of its "
          "own bytes (scales included) and bfloat16 rows of the same set in the same run");
ABSL_FLAG(int, int8_group, 32, "weights per scale of the int8 rows (0: the whole row)");
ABSL_FLAG(int, q4_group, 32, "weights per scale of the q4 rows (32 or 64)");
ABSL_FLAG(std::string, quant_active, "1.0,0.5,0.3", "active fractions of the quantized cases");

namespace sparse_mlp::bench {
namespace {

using cache::DType;


// A layer's weights: gate, up [I, H]; down [H, I] and its transpose.
struct Layer {
  DType dtype;
  size_t h, i;
  memory::AlignedBuffer gate, up, down, down_rows;
  size_t Bytes() const { return 3 * h * i * cache::DTypeSize(dtype); }
};

Layer MakeLayer(DType dtype, size_t h, size_t i, int threads) {
  Layer l{dtype, h, i, RandomValues(h * i, dtype, 0.03f, 1), RandomValues(h * i, dtype, 0.03f, 2),
          RandomValues(h * i, dtype, 0.03f, 3), Buffer(h * i * cache::DTypeSize(dtype))};
  gather::TransposeOptions o;
  o.num_threads = threads;
  const size_t elem = cache::DTypeSize(dtype);
  (void)gather::Transpose({l.down.data(), h, i * elem}, i, elem, {l.down_rows.data(), i, h * elem},
                          o);
  return l;
}

mlp::NeuronRows FullRows(const Layer& l) {
  return {l.dtype, l.h, l.i, l.gate.data(), l.h, l.up.data(), l.h, l.down_rows.data(), l.h};
}

// ---- baselines ---------------------------------------------------------------

float Silu(float v) { return v / (1.0f + std::exp(-v)); }

// The MLP with OpenBLAS: gate and up GEMV/GEMM, SiLU(gate) * up, down.
class OpenBlasMlp {
 public:
  OpenBlasMlp(const Layer& l, size_t tokens)
      : l_(l), t_(tokens), g_(Buffer(tokens * l.i * 4)), u_(Buffer(tokens * l.i * 4)) {}
  void Run(const float* x, float* y) {
    const float* gate = reinterpret_cast<const float*>(l_.gate.data());
    const float* up = reinterpret_cast<const float*>(l_.up.data());
    const float* down = reinterpret_cast<const float*>(l_.down.data());
    float* g = reinterpret_cast<float*>(g_.data());
    float* u = reinterpret_cast<float*>(u_.data());
    const int h = static_cast<int>(l_.h), i = static_cast<int>(l_.i), t = static_cast<int>(t_);
    if (t_ == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, i, h, 1.0f, gate, h, x, 1, 0.0f, g, 1);
      cblas_sgemv(CblasRowMajor, CblasNoTrans, i, h, 1.0f, up, h, x, 1, 0.0f, u, 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, i, h, 1.0f, x, h, gate, h, 0.0f,
                  g, i);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, i, h, 1.0f, x, h, up, h, 0.0f, u,
                  i);
    }
    for (size_t k = 0; k < t_ * l_.i; ++k) g[k] = Silu(g[k]) * u[k];
    if (t_ == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, h, i, 1.0f, down, i, g, 1, 0.0f, y, 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t, h, i, 1.0f, g, i, down, i, 0.0f,
                  y, h);
    }
  }

 private:
  const Layer& l_;
  size_t t_;
  memory::AlignedBuffer g_, u_;
};

// The MLP with oneDNN matmuls on weights reordered once into the layout
// the primitives ask for (format_tag::any): up; gate with swish and the
// product with up as post-ops; down. Activations in the weights' type
// (float32 or bfloat16), y in float32.
class OneDnnMlp {
 public:
  using dt = dnnl::memory::data_type;
  using tag = dnnl::memory::format_tag;

  OneDnnMlp(dnnl::engine& engine, const Layer& l, size_t tokens) : engine_(engine), stream_(engine) {
    const dt wt = l.dtype == DType::kBFloat16 ? dt::bf16 : dt::f32;
    const auto T = static_cast<int64_t>(tokens), H = static_cast<int64_t>(l.h),
               I = static_cast<int64_t>(l.i);
    const dnnl::memory::desc x_md({T, H}, wt, tag::ab), u_md({T, I}, dt::f32, tag::ab),
        h_md({T, I}, wt, tag::ab), y_md({T, H}, dt::f32, tag::ab),
        wi_any({H, I}, wt, tag::any), wd_any({I, H}, wt, tag::any);
    up_pd_ = dnnl::matmul::primitive_desc(dnnl::matmul::desc(x_md, wi_any, u_md), engine_);
    dnnl::post_ops ops;
    ops.append_eltwise(1.0f, dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);
    ops.append_binary(dnnl::algorithm::binary_mul, u_md);
    dnnl::primitive_attr attr;
    attr.set_post_ops(ops);
    gate_pd_ =
        dnnl::matmul::primitive_desc(dnnl::matmul::desc(x_md, wi_any, h_md), attr, engine_);
    down_pd_ = dnnl::matmul::primitive_desc(dnnl::matmul::desc(h_md, wd_any, y_md), engine_);
    // User weights: gate/up [I, H] row-major are the [H, I] matrix in "ba";
    // down [H, I] row-major is the [I, H] matrix in "ba".
    gate_w_ = Pack(gate_pd_.weights_desc(), {{H, I}, wt, tag::ba}, l.gate.data());
    up_w_ = Pack(up_pd_.weights_desc(), {{H, I}, wt, tag::ba}, l.up.data());
    down_w_ = Pack(down_pd_.weights_desc(), {{I, H}, wt, tag::ba}, l.down.data());
    x_ = dnnl::memory(x_md, engine_);
    u_ = dnnl::memory(u_md, engine_);
    h_ = dnnl::memory(h_md, engine_);
    y_ = dnnl::memory(y_md, engine_);
    up_ = dnnl::matmul(up_pd_);
    gate_ = dnnl::matmul(gate_pd_);
    down_ = dnnl::matmul(down_pd_);
  }
  void* x() { return x_.get_data_handle(); }
  const float* y() { return static_cast<const float*>(y_.get_data_handle()); }
  void Run() {
    up_.execute(stream_, {{DNNL_ARG_SRC, x_}, {DNNL_ARG_WEIGHTS, up_w_}, {DNNL_ARG_DST, u_}});
    gate_.execute(stream_, {{DNNL_ARG_SRC, x_},
                            {DNNL_ARG_WEIGHTS, gate_w_},
                            {DNNL_ARG_DST, h_},
                            {DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1, u_}});
    down_.execute(stream_, {{DNNL_ARG_SRC, h_}, {DNNL_ARG_WEIGHTS, down_w_}, {DNNL_ARG_DST, y_}});
    stream_.wait();
  }

 private:
  dnnl::memory Pack(const dnnl::memory::desc& want, const dnnl::memory::desc& given,
                    const void* data) {
    dnnl::memory user(given, engine_, const_cast<void*>(data));
    dnnl::memory packed(want, engine_);
    dnnl::reorder(user, packed).execute(stream_, user, packed);
    stream_.wait();
    return packed;
  }

  dnnl::engine& engine_;
  dnnl::stream stream_;
  dnnl::matmul::primitive_desc up_pd_, gate_pd_, down_pd_;
  dnnl::memory gate_w_, up_w_, down_w_, x_, u_, h_, y_;
  dnnl::matmul up_, gate_, down_;
};

// ---- measurement ---------------------------------------------------------------

struct Result {
  std::string dtype;
  size_t tokens;
  int threads;
  double active;
  std::string churn;  // "-" outside the update/step cases
  std::string op;
  double seconds;     // median
  double bytes;       // weight bytes the call must read
  double floor_seconds;  // median of the case's floor
  double x_floor() const { return floor_seconds > 0 ? seconds / floor_seconds : 0; }
  double gbps() const { return bytes / seconds / 1e9; }
};

// Ops of one case, timed interleaved: each repetition runs every op once
// (the order rotating), each from scrubbed caches.
struct Op {
  std::string name;
  std::string churn = "-";
  double bytes = 0;
  std::function<void()> run;
};

class Runner {
 public:
  Runner(int reps, Scrubber* scrubber, int threads)
      : reps_(reps), scrubber_(scrubber), threads_(threads) {}
  // Median seconds per op.
  std::vector<double> Time(const std::vector<Op>& ops) {
    std::vector<std::vector<double>> samples(ops.size());
    for (const Op& op : ops) op.run();  // warm-up: first-touch, OpenMP team
    for (int rep = 0; rep < reps_; ++rep) {
      for (size_t k = 0; k < ops.size(); ++k) {
        const size_t which = (k + static_cast<size_t>(rep)) % ops.size();
        scrubber_->Scrub(threads_);
        samples[which].push_back(SecondsOf(ops[which].run));
      }
    }
    std::vector<double> medians;
    for (auto& s : samples) medians.push_back(Median(s));
    return medians;
  }

 private:
  int reps_;
  Scrubber* scrubber_;
  int threads_;
};

struct Config {
  const ModelPreset* preset = nullptr;
  std::vector<DType> dtypes;
  std::vector<size_t> tokens;
  std::vector<double> active;
  std::vector<std::pair<std::string, double>> churns;
  int step_tokens = 1, threads = 2, reps = 11;
  bool single_thread = true, baselines = true;
  cache::PackedLayout layout = cache::PackedLayout::kSplit;
  SimdLevel simd = SimdLevel::kBest;
  std::vector<quant::QuantFormat> quant;
  std::vector<double> quant_active;
};

template <typename T>
absl::Status ParseList(const std::string& flag, const std::string& text, std::vector<T>* out,
                       double lo, double hi) {
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    double v;
    if (!absl::SimpleAtod(part, &v) || v < lo || v > hi) {
      return absl::InvalidArgumentError(
          absl::StrFormat("--%s: '%s' is not a number in [%g, %g]", flag, part, lo, hi));
    }
    out->push_back(static_cast<T>(v));
  }
  return absl::OkStatus();
}

absl::StatusOr<Config> ConfigFromFlags() {
  Config c;
  c.preset = FindModelPreset(absl::GetFlag(FLAGS_model));
  if (c.preset == nullptr) {
    return absl::InvalidArgumentError("unknown --model=" + absl::GetFlag(FLAGS_model));
  }
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_dtypes), ',')) {
    absl::StatusOr<DType> d = cache::ParseDType(name);
    if (!d.ok()) return d.status();
    c.dtypes.push_back(*d);
  }
  if (absl::Status s = ParseList("tokens", absl::GetFlag(FLAGS_tokens), &c.tokens, 1, 4096);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ParseList("active", absl::GetFlag(FLAGS_active), &c.active, 0.001, 1);
      !s.ok()) {
    return s;
  }
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_churn), ',')) {
    double v;
    if (!absl::SimpleAtod(part, &v) || v < 0 || v > 1) {
      return absl::InvalidArgumentError(absl::StrFormat("--churn: '%s' is not in [0, 1]", part));
    }
    c.churns.push_back({std::string(part), v});
  }
  c.step_tokens = absl::GetFlag(FLAGS_step_tokens);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.reps = absl::GetFlag(FLAGS_reps);
  if (c.step_tokens < 1 || c.threads < 1 || c.reps < 1) {
    return absl::InvalidArgumentError("need --step_tokens, --threads, --reps >= 1");
  }
  c.single_thread = absl::GetFlag(FLAGS_single_thread);
  c.baselines = absl::GetFlag(FLAGS_baselines);
  absl::StatusOr<cache::PackedLayout> layout = cache::ParsePackedLayout(absl::GetFlag(FLAGS_layout));
  if (!layout.ok()) return layout.status();
  c.layout = *layout;
  absl::StatusOr<SimdLevel> simd = ParseSimdLevel(absl::GetFlag(FLAGS_simd));
  if (!simd.ok()) return simd.status();
  if (!IsSupported(*simd)) return absl::InvalidArgumentError("this CPU lacks --simd");
  c.simd = *simd;
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_quant), ',', absl::SkipEmpty())) {
    absl::StatusOr<quant::QuantType> t = quant::ParseQuantType(name);
    if (!t.ok()) return t.status();
    const int group = *t == quant::QuantType::kInt8 ? absl::GetFlag(FLAGS_int8_group)
                                                    : absl::GetFlag(FLAGS_q4_group);
    if (group < 0) return absl::InvalidArgumentError("quantization groups must be >= 0");
    quant::QuantFormat f{*t, static_cast<size_t>(group)};
    if (absl::Status s = quant::RowLayout::Create(f, c.preset->hidden).status(); !s.ok()) return s;
    c.quant.push_back(f);
  }
  if (absl::Status s = ParseList("quant_active", absl::GetFlag(FLAGS_quant_active),
                                 &c.quant_active, 0.001, 1);
      !s.ok()) {
    return s;
  }
  return c;
}

// Token activations: x in float32 and in the weights' type, y in float32.
struct TokenBuffers {
  memory::AlignedBuffer x32, x, y;
  TokenBuffers(const Layer& l, size_t tokens)
      : x32(RandomValues(tokens * l.h, DType::kFloat32, 1.0f, 9)),
        x(RandomValues(tokens * l.h, l.dtype, 1.0f, 9)),
        y(Buffer(tokens * l.h * 4)) {}
  mlp::ConstTokens In(const Layer& l, size_t tokens) const {
    return {x.data(), tokens, l.h, l.dtype};
  }
  mlp::Tokens Out(const Layer& l, size_t tokens) {
    return {y.data(), tokens, l.h, DType::kFloat32};
  }
};

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s failed: %s\n", what, std::string(s.message()).c_str());
    std::exit(1);
  }
}

class Bench {
 public:
  explicit Bench(const Config& c) : c_(c), runner_(c.reps, &scrubber_, c.threads) {}

  // Dense cases of one layer: ours, the floor and the libraries.
  void Dense(const Layer& l, size_t tokens, int threads, dnnl::engine& engine) {
    TokenBuffers tb(l, tokens);
    mlp::ForwardOptions o = Options(threads);
    mlp::Workspace ws;
    Check(ws.Reserve(tokens, l.h, l.i, threads), "Workspace::Reserve");
    const mlp::NeuronRows rows = FullRows(l);
    const mlp::LinearWeights linear{l.dtype, l.h, l.i, l.gate.data(), l.up.data(), l.down.data()};
    const double bytes = static_cast<double>(l.Bytes());
    std::vector<Op> ops;
    ops.push_back({"floor", "-", bytes, [&] {
                     ReadRanges({{l.gate.data(), l.gate.size()},
                                 {l.up.data(), l.up.size()},
                                 {l.down.data(), l.down.size()}},
                                threads);
                   }});
    ops.push_back({"dense", "-", bytes, [&] {
                     (void)mlp::Forward(rows, tb.In(l, tokens), tb.Out(l, tokens), o, &ws);
                   }});
    ops.push_back({"linear", "-", bytes, [&] {
                     (void)mlp::ForwardLinear(linear, tb.In(l, tokens), tb.Out(l, tokens), o,
                                              &ws);
                   }});
    std::unique_ptr<OpenBlasMlp> blas;
    std::unique_ptr<OneDnnMlp> dnn;
    memory::AlignedBuffer blas_y = Buffer(tokens * l.h * 4);
    if (c_.baselines) {
      if (l.dtype == DType::kFloat32) {
        blas = std::make_unique<OpenBlasMlp>(l, tokens);
        ops.push_back({"openblas", "-", bytes, [&] {
                         openblas_set_num_threads(threads);
                         blas->Run(reinterpret_cast<const float*>(tb.x.data()),
                                   reinterpret_cast<float*>(blas_y.data()));
                       }});
      }
      if (l.dtype != DType::kFloat16) {
        dnn = std::make_unique<OneDnnMlp>(engine, l, tokens);
        std::memcpy(dnn->x(), tb.x.data(), tokens * l.h * cache::DTypeSize(l.dtype));
        ops.push_back({"onednn", "-", bytes, [&] {
                         omp_set_num_threads(threads);
                         dnn->Run();
                       }});
      }
    }
    Record(l, tokens, threads, 1.0, ops, runner_.Time(ops));
    // The outputs agree (same x, same weights; oneDNN rounds h to bf16 in
    // the bf16 case, and so on): a sanity check, printed.
    (void)mlp::Forward(rows, tb.In(l, tokens), tb.Out(l, tokens), o, &ws);
    const float* ours = reinterpret_cast<const float*>(tb.y.data());
    if (blas) Agreement("openblas", ours, reinterpret_cast<const float*>(blas_y.data()), tokens * l.h);
    if (dnn) Agreement("onednn", ours, dnn->y(), tokens * l.h);
  }

  // Sparse cases of one layer and active fraction.
  void Sparse(const Layer& l, double active, const std::vector<size_t>& token_counts) {
    std::mt19937_64 rng(static_cast<uint64_t>(active * 1000) + l.h);
    const size_t count = static_cast<size_t>(active * l.i + 0.5);
    diff::NeuronMask first = RandomMask(l.i, count, rng);
    // One cache per churn (the first also serves the packed forward), fed
    // masks that change by that churn at every call.
    struct Stream {
      std::string label;
      double churn;
      cache::WeightCache cache;
      diff::NeuronMask mask;
    };
    std::vector<Stream> streams;
    for (const auto& [label, churn] : c_.churns) {
      cache::WeightCacheOptions co;
      co.hidden_size = l.h;
      co.intermediate_size = l.i;
      co.dtype = l.dtype;
      co.layout = c_.layout;
      co.num_threads = c_.threads;
      co.simd = c_.simd;
      co.ownership = cache::SourceOwnership::kCopy;
      cache::WeightCache wc =
          *cache::WeightCache::Create(co, {l.gate.data(), l.up.data(), l.down.data()}, first);
      Check(wc.Reserve(std::min(l.i, count + count / 4)), "Reserve");
      streams.push_back({label, churn, std::move(wc), first});
    }
    if (streams.empty()) return;
    const std::vector<uint32_t> indices = first.ToIndices();
    const double sparse_bytes = static_cast<double>(count) * 3 * l.h * cache::DTypeSize(l.dtype);
    for (size_t tokens : token_counts) {
      TokenBuffers tb(l, tokens);
      mlp::ForwardOptions o = Options(c_.threads);
      mlp::Workspace ws;
      Check(ws.Reserve(tokens, l.h, 0, c_.threads), "Workspace::Reserve");
      cache::WeightCache& packed = streams[0].cache;
      std::vector<Op> ops;
      ops.push_back({"floor", "-", sparse_bytes, [&] {
                       ReadRanges(PackedRanges(packed), c_.threads);
                     }});
      ops.push_back(
          {"packed", "-", sparse_bytes,
           [&] { (void)step::CacheForward(packed, tb.In(l, tokens), tb.Out(l, tokens), o, &ws); }});
      ops.push_back({"direct", "-", sparse_bytes, [&] {
                       (void)mlp::ForwardIndexed(FullRows(l), indices, tb.In(l, tokens),
                                                 tb.Out(l, tokens), o, &ws);
                     }});
      const bool steps = tokens == static_cast<size_t>(c_.step_tokens);
      for (size_t k = 1; steps && k < streams.size() + 1; ++k) {
        Stream* s = &streams[k - 1];
        // Each call moves its stream on by one churn step.
        ops.push_back({"update+fwd", s->label, sparse_bytes, [&, s] {
                         s->mask = Churn(s->mask, s->churn, step_rng_);
                         (void)s->cache.Update(s->mask);
                         (void)step::CacheForward(s->cache, tb.In(l, tokens), tb.Out(l, tokens), o,
                                                  &ws);
                       }});
        ops.push_back({"step", s->label, sparse_bytes, [&, s] {
                         s->mask = Churn(s->mask, s->churn, step_rng_);
                         (void)step::LayerStep(&s->cache, s->mask, tb.In(l, tokens),
                                               tb.Out(l, tokens), o, &ws);
                       }});
      }
      // The churn ops draw their next mask inside the timed call; drawing
      // one (an O(I) shuffle) costs ~0.1 ms, so it is measured apart and
      // subtracted below.
      Record(l, tokens, c_.threads, active, ops, Subtract(runner_.Time(ops), ops, l));
    }
  }

  // Quantized rows of `f`, dense and at each active fraction (each also
  // with x rounded to int8, the -x8 rows), beside
  // bfloat16 rows of the same neurons (the ratio the goals judge), each
  // against a read of its own bytes. The cache holds no quantized rows yet,
  // so "packed" computes on the active rows copied contiguous (what a
  // cache's packed rows are) and "direct" on the full arrays by index.
  void Quant(quant::QuantFormat f) {
    const size_t h = c_.preset->hidden, inter = c_.preset->intermediate;
    const quant::RowLayout layout = *quant::RowLayout::Create(f, h);
    const size_t rb = layout.row_bytes();
    const std::string label = quant::QuantTypeName(f.type);
    // Rows: gate, up and down neuron-major, quantized from float32.
    memory::AlignedBuffer q[3];
    for (int part = 0; part < 3; ++part) {
      const memory::AlignedBuffer w =
          RandomValues(inter * h, DType::kFloat32, 0.03f, static_cast<uint64_t>(11 + part));
      q[part] = Buffer(inter * rb);
      const float* src = reinterpret_cast<const float*>(w.data());
      uint8_t* dst = q[part].data();
#pragma omp parallel for num_threads(c_.threads) schedule(static)
      for (long r = 0; r < static_cast<long>(inter); ++r) {
        Check(quant::QuantizeRow(layout, src + r * h, dst + r * rb), "QuantizeRow");
      }
    }
    // nn.Linear's layout for the dense rows: down [H, I] quantized along I
    // (the same float weights as q[2], transposed), if the format fits I.
    const absl::StatusOr<quant::RowLayout> down_layout = quant::RowLayout::Create(f, inter);
    memory::AlignedBuffer linear_down;
    if (down_layout.ok()) {
      const memory::AlignedBuffer w = RandomValues(inter * h, DType::kFloat32, 0.03f, 13);
      const float* src = reinterpret_cast<const float*>(w.data());
      const size_t db = down_layout->row_bytes();
      linear_down = Buffer(h * db);
#pragma omp parallel num_threads(c_.threads)
      {
        std::vector<float> column(inter);
#pragma omp for schedule(static)
        for (long c = 0; c < static_cast<long>(h); ++c) {
          for (size_t j = 0; j < inter; ++j) column[j] = src[j * h + static_cast<size_t>(c)];
          Check(quant::QuantizeRow(*down_layout, column.data(), linear_down.data() + c * db),
                "QuantizeRow");
        }
      }
    }
    const Layer bf = MakeLayer(DType::kBFloat16, h, inter, c_.threads);
    const size_t bf_row = h * 2;
    for (double active : c_.quant_active) {
      std::mt19937_64 rng(static_cast<uint64_t>(active * 1000) + h);
      const size_t count = static_cast<size_t>(active * inter + 0.5);
      const std::vector<uint32_t> set = RandomMask(inter, count, rng).ToIndices();
      // The set's rows contiguous, quantized and bfloat16.
      memory::AlignedBuffer pq[3], pb[3];
      const uint8_t* bf_src[3] = {bf.gate.data(), bf.up.data(), bf.down_rows.data()};
      for (int part = 0; part < 3; ++part) {
        pq[part] = Buffer(count * rb);
        pb[part] = Buffer(count * bf_row);
        for (size_t k = 0; k < count; ++k) {
          std::memcpy(pq[part].data() + k * rb, q[part].data() + size_t{set[k]} * rb, rb);
          std::memcpy(pb[part].data() + k * bf_row, bf_src[part] + size_t{set[k]} * bf_row,
                      bf_row);
        }
      }
      const mlp::QuantNeuronRows packed{f, h, count, pq[0].data(), rb, pq[1].data(), rb,
                                        pq[2].data(), rb};
      const mlp::QuantNeuronRows full{f, h, inter, q[0].data(), rb, q[1].data(), rb,
                                      q[2].data(), rb};
      const mlp::NeuronRows bf_packed{DType::kBFloat16, h, count, pb[0].data(), h,
                                      pb[1].data(), h, pb[2].data(), h};
      const double bytes = static_cast<double>(count) * 3 * rb;
      const double bf_bytes = static_cast<double>(count) * 3 * bf_row;
      for (size_t tokens : c_.tokens) {
        const memory::AlignedBuffer x = RandomValues(tokens * h, DType::kFloat32, 1.0f, 9);
        const memory::AlignedBuffer xb = RandomValues(tokens * h, DType::kBFloat16, 1.0f, 9);
        memory::AlignedBuffer y = Buffer(tokens * h * 4);
        const mlp::ConstTokens in{x.data(), tokens, h, DType::kFloat32};
        const mlp::ConstTokens in_bf{xb.data(), tokens, h, DType::kBFloat16};
        const mlp::Tokens out{y.data(), tokens, h, DType::kFloat32};
        const mlp::ForwardOptions o = Options(c_.threads);
        mlp::ForwardOptions ox = o;  // x rounded to int8 per block (-x8 rows)
        ox.quantize_x = true;
        mlp::Workspace ws;
        Check(ws.Reserve(tokens, h, inter, c_.threads), "Workspace::Reserve");
        std::vector<Op> ops;
        ops.push_back({"floor", "-", bytes, [&] {
                         ReadRanges({{pq[0].data(), count * rb},
                                     {pq[1].data(), count * rb},
                                     {pq[2].data(), count * rb}},
                                    c_.threads);
                       }});
        const std::string form = active < 1.0 ? "packed" : "dense";
        ops.push_back({form, "-", bytes,
                       [&] { Check(mlp::ForwardQuant(packed, in, out, o, &ws), "ForwardQuant"); }});
        ops.push_back({form + "-x8", "-", bytes, [&] {
                         Check(mlp::ForwardQuant(packed, in, out, ox, &ws), "ForwardQuant");
                       }});
        const mlp::QuantLinearWeights linear{f,           h,           inter,
                                             q[0].data(), q[1].data(), linear_down.data()};
        if (active == 1.0 && down_layout.ok()) {
          const double linear_bytes =
              2.0 * inter * rb + static_cast<double>(h) * down_layout->row_bytes();
          ops.push_back({"linear", "-", linear_bytes, [&] {
                           Check(mlp::ForwardLinearQuant(linear, in, out, o, &ws),
                                 "ForwardLinearQuant");
                         }});
          ops.push_back({"linear-x8", "-", linear_bytes, [&] {
                           Check(mlp::ForwardLinearQuant(linear, in, out, ox, &ws),
                                 "ForwardLinearQuant");
                         }});
        }
        if (active < 1.0) {
          ops.push_back({"direct", "-", bytes, [&] {
                           Check(mlp::ForwardIndexedQuant(full, set, in, out, o, &ws),
                                 "ForwardIndexedQuant");
                         }});
          ops.push_back({"direct-x8", "-", bytes, [&] {
                           Check(mlp::ForwardIndexedQuant(full, set, in, out, ox, &ws),
                                 "ForwardIndexedQuant");
                         }});
        }
        ops.push_back({"bf16", "-", bf_bytes, [&] {
                         Check(mlp::Forward(bf_packed, in_bf, out, o, &ws), "Forward");
                       }});
        const std::vector<double> medians = runner_.Time(ops);
        double floor = 0;
        for (size_t k = 0; k < ops.size(); ++k) {
          if (ops[k].name == "floor") floor = medians[k];
        }
        for (size_t k = 0; k < ops.size(); ++k) {
          results_.push_back({label, tokens, c_.threads, active, ops[k].churn, ops[k].name,
                              medians[k], ops[k].bytes, floor});
        }
      }
    }
  }

  const std::vector<Result>& results() const { return results_; }
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  mlp::ForwardOptions Options(int threads) const {
    mlp::ForwardOptions o;
    o.num_threads = threads;
    o.simd = c_.simd;
    return o;
  }

  static std::vector<ByteRange> PackedRanges(const cache::WeightCache& wc) {
    const mlp::NeuronRows r = step::CacheRows(wc);
    const size_t elem = cache::DTypeSize(r.dtype), row = r.hidden_size * elem;
    if (wc.layout() == cache::PackedLayout::kFusedRows) {
      return {{r.gate != nullptr ? r.gate : r.up, r.count * r.up_stride * elem}};
    }
    std::vector<ByteRange> out;
    for (const void* p : {r.gate, r.up, r.down}) {
      if (p != nullptr) out.push_back({p, r.count * row});
    }
    if (wc.layout() == cache::PackedLayout::kInterleavedGateUp) {
      out = {{r.gate, r.count * 2 * row}, {r.down, r.count * row}};
    }
    return out;
  }

  // Removes the mask drawing from the churn ops' medians.
  std::vector<double> Subtract(std::vector<double> medians, const std::vector<Op>& ops,
                               const Layer& l) {
    std::vector<double> draw;
    diff::NeuronMask m = RandomMask(l.i, l.i / 2, step_rng_);
    for (int k = 0; k < 9; ++k) draw.push_back(SecondsOf([&] { m = Churn(m, 0.1, step_rng_); }));
    const double d = Median(draw);
    for (size_t k = 0; k < ops.size(); ++k) {
      if (ops[k].churn != "-") medians[k] = std::max(medians[k] - d, 1e-9);
    }
    return medians;
  }

  void Record(const Layer& l, size_t tokens, int threads, double active,
              const std::vector<Op>& ops, const std::vector<double>& medians) {
    double floor = 0;
    for (size_t k = 0; k < ops.size(); ++k) {
      if (ops[k].name == "floor") floor = medians[k];
    }
    for (size_t k = 0; k < ops.size(); ++k) {
      results_.push_back({cache::DTypeName(l.dtype), tokens, threads, active, ops[k].churn,
                          ops[k].name, medians[k], ops[k].bytes, floor});
    }
  }

  void Agreement(const char* name, const float* a, const float* b, size_t n) {
    double diff = 0, scale = 0;
    for (size_t k = 0; k < n; ++k) {
      diff = std::max(diff, static_cast<double>(std::fabs(a[k] - b[k])));
      scale = std::max(scale, static_cast<double>(std::fabs(b[k])));
    }
    notes_.push_back(absl::StrFormat("check: max |dense - %s| / max |%s| = %.2g", name, name,
                                     scale > 0 ? diff / scale : diff));
  }

  const Config& c_;
  Scrubber scrubber_;
  Runner runner_;
  std::mt19937_64 step_rng_{77};
  std::vector<Result> results_;
  std::vector<std::string> notes_;
};

// ---- report ----------------------------------------------------------------------

// The case's result for `op`, or for "a|b" the faster of the two.
const Result* Find(const std::vector<Result>& rs, const std::string& dtype, size_t tokens,
                   int threads, double active, const std::string& op,
                   const std::string& churn = "-") {
  const Result* best = nullptr;
  for (absl::string_view name : absl::StrSplit(op, '|')) {
    for (const Result& r : rs) {
      if (r.dtype == dtype && r.tokens == tokens && r.threads == threads &&
          std::abs(r.active - active) < 1e-9 && r.op == name && r.churn == churn &&
          (best == nullptr || r.seconds < best->seconds)) {
        best = &r;
      }
    }
  }
  return best;
}

void PrintTable(const std::vector<Result>& rs) {
  std::printf("%-9s %3s %3s %6s %-6s %-10s %10s %8s %8s\n", "dtype", "T", "thr", "active",
              "churn", "op", "time_us", "GB/s", "x_floor");
  for (const Result& r : rs) {
    std::printf("%-9s %3zu %3d %6.2f %-6s %-10s %10.1f %8.2f %8.2f\n", r.dtype.c_str(), r.tokens,
                r.threads, r.active, r.churn.c_str(), r.op.c_str(), r.seconds * 1e6, r.gbps(),
                r.x_floor());
  }
}

// The goals of the forward's issue, each on the worst case this run has.
class Goals {
 public:
  explicit Goals(const std::vector<Result>& rs, int threads) : rs_(rs), thr_(threads) {}

  // value <= limit over the listed cases (each a ratio); "not run" if none.
  void AtMost(const std::string& what, double limit,
              const std::vector<std::pair<std::string, double>>& cases) {
    double worst = -1;
    std::string where;
    for (const auto& [label, v] : cases) {
      if (v > worst) {
        worst = v;
        where = label;
      }
    }
    if (cases.empty()) {
      std::printf("  %s: not run\n", what.c_str());
      return;
    }
    std::printf("  %s: worst %.3f (%s) %s\n", what.c_str(), worst, where.c_str(),
                worst <= limit ? "met" : "MISSED");
  }

  // Like AtMost, for a goal that the bytes may put out of reach: `bounds`
  // holds, per case, the lowest value the read floor allows. A miss within
  // 2% of that bound is reported as bounded (with the bound), not missed.
  void AtMostOrBound(const std::string& what, double limit,
                     const std::vector<std::pair<std::string, double>>& cases,
                     const std::vector<double>& bounds) {
    if (cases.empty() || bounds.size() != cases.size()) {
      AtMost(what, limit, cases);
      return;
    }
    size_t worst = 0;
    for (size_t k = 1; k < cases.size(); ++k) {
      if (cases[k].second > cases[worst].second) worst = k;
    }
    const double value = cases[worst].second, bound = bounds[worst];
    if (value <= limit || bound <= limit || value < 0.98 * bound) {
      AtMost(what, limit, cases);
      return;
    }
    std::printf("  %s: worst %.3f (%s); bounded: the read floor alone is %.3f of it, so the "
                "target %.2f is out of reach on this machine\n",
                what.c_str(), value, cases[worst].first.c_str(), bound, limit);
  }

  // Per dtype (in Ratio's order), the read floor over `op`'s time: the
  // lowest ratio any forward reading the same bytes can reach against it.
  std::vector<double> FloorOver(const std::string& op, const std::vector<std::string>& dtypes,
                                size_t tokens) const {
    std::vector<double> out;
    for (const std::string& d : dtypes) {
      const Result* r = Find(rs_, d, tokens, thr_, 1.0, op);
      if (r != nullptr && Find(rs_, d, tokens, thr_, 1.0, "dense|linear") != nullptr) {
        out.push_back(r->floor_seconds / r->seconds);
      }
    }
    return out;
  }

  // The churn at which the layer step's time meets the direct index's, by
  // linear interpolation over this run's churn sweep at active fraction a.
  void StepCrossover(const std::string& dtype, double a) const {
    const Result* direct = Find(rs_, dtype, 1, thr_, a, "direct");
    if (direct == nullptr) return;
    std::vector<std::pair<double, double>> pts;  // churn, step / direct
    for (const Result& r : rs_) {
      double churn;
      if (r.dtype == dtype && r.tokens == 1 && r.threads == thr_ && std::abs(r.active - a) < 1e-9 &&
          r.op == "step" && absl::SimpleAtod(r.churn, &churn)) {
        pts.push_back({churn, r.seconds / direct->seconds});
      }
    }
    if (pts.empty()) return;
    std::sort(pts.begin(), pts.end());
    std::string where;
    if (pts.front().second > 1) {
      where = absl::StrFormat("slower at every churn run (%.3f at churn %.2f)", pts.front().second,
                              pts.front().first);
    } else if (pts.back().second <= 1) {
      where = absl::StrFormat("faster at every churn run (%.3f at churn %.2f)", pts.back().second,
                              pts.back().first);
    } else {
      for (size_t k = 1; k < pts.size(); ++k) {
        const auto [c0, r0] = pts[k - 1];
        const auto [c1, r1] = pts[k];
        if (r0 <= 1 && r1 > 1) {
          where = absl::StrFormat("they cross at churn ~%.3f", c0 + (1 - r0) * (c1 - c0) / (r1 - r0));
          break;
        }
      }
    }
    std::printf("  [bound] %s a=%.1f layer step / direct-index: %s (the step reads the same rows "
                "and also stores the entering ones)\n",
                dtype.c_str(), a, where.c_str());
  }

  // Ratio of two ops' times for matching cases.
  std::vector<std::pair<std::string, double>> Ratio(const std::string& a, const std::string& b,
                                                    const std::vector<std::string>& dtypes,
                                                    size_t tokens,
                                                    const std::vector<double>& actives,
                                                    const std::string& churn_a = "-") const {
    std::vector<std::pair<std::string, double>> out;
    for (const std::string& d : dtypes) {
      for (double act : actives) {
        const Result* x = Find(rs_, d, tokens, thr_, act, a, churn_a);
        const Result* y = Find(rs_, d, tokens, thr_, act, b);
        if (x != nullptr && y != nullptr) {
          out.push_back({absl::StrFormat("%s T=%u a=%.1f %s", d, tokens, act, x->op),
                         x->seconds / y->seconds});
        }
      }
    }
    return out;
  }

  std::vector<std::pair<std::string, double>> XFloor(const std::string& op,
                                                     const std::vector<std::string>& dtypes,
                                                     size_t tokens,
                                                     const std::vector<double>& actives) const {
    std::vector<std::pair<std::string, double>> out;
    for (const std::string& d : dtypes) {
      for (double act : actives) {
        const Result* r = Find(rs_, d, tokens, thr_, act, op);
        if (r != nullptr) {
          out.push_back({absl::StrFormat("%s T=%u a=%.1f %s", d, tokens, act, r->op), r->x_floor()});
        }
      }
    }
    return out;
  }

  // float32 time over bfloat16 time for the same case (>= limit).
  void Bf16Speedup(double limit, const std::vector<std::pair<std::string, double>>& cases_op) {
    double worst = 1e30;
    std::string where;
    bool any = false;
    for (const auto& [op, act] : cases_op) {
      const Result* f = Find(rs_, "float32", 1, thr_, act, op);
      const Result* b = Find(rs_, "bfloat16", 1, thr_, act, op);
      if (f == nullptr || b == nullptr) continue;
      any = true;
      if (f->seconds / b->seconds < worst) {
        worst = f->seconds / b->seconds;
        where = absl::StrFormat("%s a=%.1f", b->op, act);
      }
    }
    if (!any) {
      std::printf("  bfloat16 >= %.1fx faster than float32: not run\n", limit);
      return;
    }
    std::printf("  bfloat16 >= %.1fx faster than float32: worst %.2fx (%s) %s\n", limit, worst,
                where.c_str(), worst >= limit ? "met" : "MISSED");
  }

 private:
  const std::vector<Result>& rs_;
  int thr_;
};

// "Dense" is the faster of the library's two dense entry points in each
// case (Forward on neuron-major rows, "dense"; ForwardLinear on the
// nn.Linear layout, "linear", what sparse_mlp.mlp_forward calls by
// default); the line names the one it took.
void PrintGoals(const std::vector<Result>& rs, int threads) {
  std::printf("\ngoals (set for llama-3.2-3b, %d threads), judged on this run; dense = the "
              "faster of dense / linear:\n",
              threads);
  Goals g(rs, threads);
  const std::vector<std::string> both = {"float32", "bfloat16"};
  const std::vector<double> dense = {1.0}, sparse = {0.5, 0.3, 0.1};
  const std::string kDense = "dense|linear";
  g.AtMost("dense forward <= 1.10x read floor (T=1)", 1.10, g.XFloor(kDense, both, 1, dense));
  g.AtMost("packed forward <= 1.15x read floor (T=1)", 1.15, g.XFloor("packed", both, 1, sparse));
  g.AtMost("direct-index <= 1.30x read floor (T=1)", 1.30, g.XFloor("direct", both, 1, sparse));
  g.AtMost("dense float32 <= 1.0x OpenBLAS sgemv (T=1)", 1.0,
           g.Ratio(kDense, "openblas", {"float32"}, 1, dense));
  g.AtMostOrBound("dense <= 0.85x oneDNN prepacked (T=1)", 0.85,
                  g.Ratio(kDense, "onednn", both, 1, dense), g.FloorOver("onednn", both, 1));
  g.AtMost("T=4 <= 1.3x read floor (dense and packed)", 1.3, [&] {
    auto v = g.XFloor(kDense, both, 4, dense);
    for (auto& p : g.XFloor("packed", both, 4, sparse)) v.push_back(p);
    return v;
  }());
  g.AtMost("T=16 bfloat16 <= 1.3x oneDNN prepacked", 1.3,
           g.Ratio(kDense, "onednn", {"bfloat16"}, 16, dense));
  g.AtMost("layer step churn 0.10 a=0.5 <= 1.15x packed forward", 1.15,
           g.Ratio("step", "packed", both, 1, {0.5}, "0.10"));
  g.Bf16Speedup(1.8, {{kDense, 1.0}, {"packed", 0.5}, {"packed", 0.3}, {"packed", 0.1}});
  // Quantized rows (bf16 in their rows: bfloat16 rows of the same set, same
  // run; its x_floor is against the quantized bytes and is not a goal).
  g.AtMost("int8 <= 1.25x its read floor (T=1, dense and packed a=0.5)", 1.25, [&] {
    auto v = g.XFloor("dense", {"int8"}, 1, dense);
    for (auto& p : g.XFloor("packed", {"int8"}, 1, {0.5})) v.push_back(p);
    return v;
  }());
  g.AtMost("q4 <= 1.5x its read floor (T=1, dense and packed a=0.5)", 1.5, [&] {
    auto v = g.XFloor("dense", {"q4"}, 1, dense);
    for (auto& p : g.XFloor("packed", {"q4"}, 1, {0.5})) v.push_back(p);
    return v;
  }());
  g.AtMost("int8 packed a=0.5 <= 0.6x bfloat16 (T=1)", 0.6,
           g.Ratio("packed", "bf16", {"int8"}, 1, {0.5}));
  g.AtMost("q4 packed a=0.5 <= 0.4x bfloat16 (T=1)", 0.4,
           g.Ratio("packed", "bf16", {"q4"}, 1, {0.5}));
  // The same with x rounded to int8 per block (ForwardOptions::quantize_x);
  // dense = the faster of the neuron-major and nn.Linear layouts.
  g.AtMost("int8 x8 <= 1.25x its read floor (T=1, dense and packed a=0.5)", 1.25, [&] {
    auto v = g.XFloor("dense-x8|linear-x8", {"int8"}, 1, dense);
    for (auto& p : g.XFloor("packed-x8", {"int8"}, 1, {0.5})) v.push_back(p);
    return v;
  }());
  g.AtMost("int8 x8 packed a=0.5 <= 0.6x bfloat16 (T=1)", 0.6,
           g.Ratio("packed-x8", "bf16", {"int8"}, 1, {0.5}));
  g.AtMost("q4 x8 <= 1.5x its read floor (T=1, dense and packed a=0.5)", 1.5, [&] {
    auto v = g.XFloor("dense-x8|linear-x8", {"q4"}, 1, dense);
    for (auto& p : g.XFloor("packed-x8", {"q4"}, 1, {0.5})) v.push_back(p);
    return v;
  }());
  g.AtMost("q4 x8 packed a=0.5 <= 0.4x bfloat16 (T=1)", 0.4,
           g.Ratio("packed-x8", "bf16", {"q4"}, 1, {0.5}));
  // Not a target: at one token in DRAM the layer step reads the rows the
  // direct index reads and also stores the entering ones, so it can only win
  // below some churn. The run's own sweep says which.
  for (const std::string& d : both) g.StepCrossover(d, 0.5);
}

// What a user should pick, from this run's figures (T = 1).
void PrintGuide(const std::vector<Result>& rs, int threads) {
  std::printf("\nwhat to pick (this run, T=1, %d threads):\n", threads);
  for (const std::string d : {"float32", "bfloat16"}) {
    const Result* dense = Find(rs, d, 1, threads, 1.0, "dense|linear");
    const Result* direct = Find(rs, d, 1, threads, 0.5, "direct");
    const Result* packed = Find(rs, d, 1, threads, 0.5, "packed");
    const Result* step = Find(rs, d, 1, threads, 0.5, "step", "0.10");
    if (dense == nullptr || direct == nullptr || packed == nullptr) continue;
    std::printf("  %-8s a=0.5: direct index (mlp_forward(indices=...)) %.2f ms, dense %.2f ms; "
                "on a cache: forward %.2f ms%s\n",
                d.c_str(), direct->seconds * 1e3, dense->seconds * 1e3, packed->seconds * 1e3,
                step == nullptr
                    ? ""
                    : absl::StrFormat(", layer step at churn 0.10 %.2f ms", step->seconds * 1e3)
                          .c_str());
  }
  std::printf("  weights in DRAM, one token: compute on the indices; keep a cache when the "
              "packed rows serve several tokens or calls, a consumer needs contiguous "
              "matrices, or a row is expensive to load (//bench:store, the SSD tier)\n");
}

void WriteJson(const std::string& path, const Config& c, const std::vector<Result>& rs) {
  nlohmann::json j;
  j["model"] = c.preset->name;
  j["threads"] = c.threads;
  for (const Result& r : rs) {
    j["results"].push_back({{"dtype", r.dtype},
                            {"tokens", r.tokens},
                            {"threads", r.threads},
                            {"active", r.active},
                            {"churn", r.churn},
                            {"op", r.op},
                            {"median_us", r.seconds * 1e6},
                            {"gbps", r.gbps()},
                            {"x_floor", r.x_floor()}});
  }
  std::ofstream(path) << j.dump(2) << "\n";
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The sparse MLP forward against its read floor and libraries");
  absl::ParseCommandLine(argc, argv);
  absl::StatusOr<Config> config = ConfigFromFlags();
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  const Config& c = *config;
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  const char* spin = std::getenv("GOMP_SPINCOUNT");
  std::printf("%s: H=%zu I=%zu, %d threads, simd %s, cache layout %s, OMP_WAIT_POLICY=%s "
              "GOMP_SPINCOUNT=%s, %d reps (medians), cold caches\n\n",
              c.preset->name, c.preset->hidden, c.preset->intermediate, c.threads,
              SimdLevelName(Resolve(c.simd)), cache::PackedLayoutName(c.layout),
              wait ? wait : "(default)", spin ? spin : "(default)", c.reps);
  dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  Bench bench(c);
  for (DType dtype : c.dtypes) {
    const Layer l = MakeLayer(dtype, c.preset->hidden, c.preset->intermediate, c.threads);
    for (size_t tokens : c.tokens) bench.Dense(l, tokens, c.threads, engine);
    if (c.single_thread && c.threads != 1) bench.Dense(l, 1, 1, engine);
    for (double active : c.active) {
      if (active < 1.0) bench.Sparse(l, active, c.tokens);
    }
  }
  for (const quant::QuantFormat& f : c.quant) bench.Quant(f);
  PrintTable(bench.results());
  std::printf("\n");
  for (const std::string& n : bench.notes()) std::printf("%s\n", n.c_str());
  PrintGoals(bench.results(), c.threads);
  PrintGuide(bench.results(), c.threads);
  if (!absl::GetFlag(FLAGS_json).empty()) WriteJson(absl::GetFlag(FLAGS_json), c, bench.results());
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) {
  sparse_mlp::bench::RequireOptimizedBuild();
  return sparse_mlp::bench::Main(argc, argv);
}
