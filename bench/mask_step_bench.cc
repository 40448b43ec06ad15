// Masks computed natively into the step (step/mask_step.h) against the dense
// MLP, the step on a given (oracle) mask, direct indexing and the read
// floor of the same bytes, in one run:
//
//   bazel run //bench:mask_step            # llama-3.2-3b, bf16 and f32, ~30 s
//   bazel run //bench:mask_step -- --help
//
// Per dtype, T = --tokens, on a decoding-like input sequence (each x is
// 0.9 x the previous one plus fresh noise, so consecutive masks overlap the
// way a decoder's do; the churn is printed), for each kept fraction a:
//   dense       mlp::Forward over all I neurons (reads W)
//   gate-first  GateFirst::Step: act(gate x) for all, top-k by |act|, then
//               up and down of the kept neurons through a gate-less cache
//               (reads W/3 + 2aW/3, plus the entering rows' stores)
//   gf-direct   GateFirst::Forward: the same selection, then up and down
//               of the kept neurons read in place (no cache, no stores)
//   oracle      step::LayerStep on a gated cache with the masks gate-first
//               chose, given for free (reads 3aW/3 + entering rows)
//   direct      mlp::ForwardIndexed on those neurons (no cache, full gate)
//   floor       a read of gate plus a x I rows of up and down (the bytes
//               gate-first must read)
//   gate pass   GateFirst::Activations alone (act(gate x) for all neurons)
// and the low-rank predictor at --rank: Scores (B (A x)) and Select
// (scores + exact top-k) against the oracle step at a = 0.5.
// Every call starts from cold caches (a 96 MiB scrub read between calls);
// cases are interleaved repetition by repetition; medians are reported.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/process_stats.h"
#include "bench/read_floor.h"
#include "bench/synthetic_weights.h"
#include "bench/timing.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gather/transpose.h"
#include "memory/aligned_buffer.h"
#include "mlp/mlp_forward.h"
#include "platform/simd_level.h"
#include "step/layer_step.h"
#include "step/mask_step.h"

ABSL_FLAG(std::string, model, "llama-3.2-3b", "shape preset (see //bench:cache --help)");
ABSL_FLAG(std::string, dtypes, "bfloat16,float32", "weight types: float32, bfloat16, float16");
ABSL_FLAG(std::string, active, "0.5,0.3", "kept fractions a");
ABSL_FLAG(int, tokens, 1, "tokens per call T");
ABSL_FLAG(int, rank, 128, "rank r of the low-rank predictor");
ABSL_FLAG(int, threads, 2, "threads of every call");
ABSL_FLAG(int, reps, 15, "timed repetitions (medians are reported)");

namespace sparse_mlp::bench {
namespace {

using cache::DType;

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

struct Case {
  Case(std::string n, std::function<void(int)> r) : name(std::move(n)), run(std::move(r)) {}
  std::string name;
  std::function<void(int rep)> run;
  std::vector<double> seconds;
};

struct Results {
  double dense = 0, gate_first = 0, gf_direct = 0, oracle = 0, scores = 0, select = 0;
};

// Decoding-like inputs: x_t = 0.9 x_{t-1} + noise (unit scale), float32.
std::vector<std::vector<float>> InputSequence(size_t count, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 1.0f);
  std::vector<std::vector<float>> xs(count, std::vector<float>(n));
  for (size_t k = 0; k < n; ++k) xs[0][k] = noise(rng);
  for (size_t t = 1; t < count; ++t) {
    for (size_t k = 0; k < n; ++k) xs[t][k] = 0.9f * xs[t - 1][k] + 0.44f * noise(rng);
  }
  return xs;
}

Results RunDType(DType dtype, size_t h, size_t i, const std::vector<double>& actives,
                 size_t tokens, size_t rank, int threads, int reps, Scrubber* scrubber) {
  const size_t elem = cache::DTypeSize(dtype);
  memory::AlignedBuffer gate = RandomValues(h * i, dtype, 0.03f, 1, threads);
  memory::AlignedBuffer up = RandomValues(h * i, dtype, 0.03f, 2, threads);
  memory::AlignedBuffer down = RandomValues(h * i, dtype, 0.03f, 3, threads);
  memory::AlignedBuffer down_rows = Buffer(h * i * elem);
  gather::TransposeOptions to;
  to.num_threads = threads;
  Check(gather::Transpose({down.data(), h, i * elem}, i, elem, {down_rows.data(), i, h * elem},
                          to),
        "transpose");
  memory::AlignedBuffer a = RandomValues(rank * h, dtype, 0.05f, 4, threads);
  memory::AlignedBuffer b = RandomValues(i * rank, dtype, 0.05f, 5, threads);

  const int warm = 4;
  const size_t steps = static_cast<size_t>(warm + reps);
  const std::vector<std::vector<float>> xs = InputSequence(steps * tokens, h, 7);
  std::vector<float> y(tokens * h);
  auto x_of = [&](int step) {
    return mlp::ConstTokens{xs[static_cast<size_t>(step) * tokens].data(), tokens, h,
                            DType::kFloat32};
  };
  const mlp::Tokens out{y.data(), tokens, h, DType::kFloat32};
  mlp::ForwardOptions o;
  o.num_threads = threads;
  mlp::Workspace ws;
  Check(ws.Reserve(tokens, h, 0, threads), "workspace");
  const mlp::NeuronRows full{dtype, h, i, gate.data(), h, up.data(), h, down_rows.data(), h};

  step::GateFirst gf = *step::GateFirst::Create(dtype, h, i, gate.data(), h);
  Check(gf.Reserve(tokens), "reserve");
  step::LowRankPredictor predictor =
      *step::LowRankPredictor::Create(dtype, h, i, rank, a.data(), h, b.data(), rank);
  Check(predictor.Reserve(tokens), "reserve");
  std::vector<float> scores(tokens * i);

  Results r;
  std::printf("\n%s, %zu x %zu, T = %zu, %d threads, cold caches, %d reps\n",
              cache::DTypeName(dtype), h, i, tokens, threads, reps);
  std::printf("%-6s %-12s %10s %9s %9s\n", "a", "case", "ms", "x dense", "x floor");
  for (double active : actives) {
    const size_t k = static_cast<size_t>(std::lround(active * static_cast<double>(i)));
    step::Selection sel;
    sel.k = k;
    // The masks gate-first picks along the sequence (recorded once), for
    // the oracle and direct cases.
    std::vector<diff::NeuronMask> masks;
    std::vector<std::vector<uint32_t>> sets;
    cache::WeightCacheOptions co;
    co.hidden_size = h;
    co.intermediate_size = i;
    co.dtype = dtype;
    co.ownership = cache::SourceOwnership::kBorrow;
    co.down_layout = cache::DownLayout::kNeuronMajor;
    co.num_threads = threads;
    co.has_gate = false;
    cache::WeightCache updown =
        *cache::WeightCache::Create(co, {nullptr, up.data(), down_rows.data()},
                                    diff::NeuronMask(i));
    double churn = 0;
    for (size_t s = 0; s < steps; ++s) {
      Check(gf.Step(&updown, sel, x_of(static_cast<int>(s)), out, o, &ws), "gate-first");
      masks.push_back(gf.mask());
      sets.emplace_back();
      gf.mask().ToIndices(&sets.back());
      if (s > 0) {
        const diff::NeuronMask& prev = masks[s - 1];
        size_t changed = 0;
        for (size_t j = 0; j < i; ++j) changed += prev.Test(j) != gf.mask().Test(j);
        churn += static_cast<double>(changed) / 2.0 / static_cast<double>(sets.back().size());
      }
    }
    co.has_gate = true;
    cache::WeightCache gated = *cache::WeightCache::Create(
        co, {gate.data(), up.data(), down_rows.data()}, masks[warm - 1]);
    Check(updown.Update(masks[warm - 1]), "reset");
    const size_t row = h * elem;
    const size_t kept_rows = sets[warm].size();
    std::vector<ByteRange> floor_ranges = {
        {gate.data(), i * row}, {up.data(), kept_rows * row}, {down_rows.data(), kept_rows * row}};
    std::vector<Case> cases;
    cases.emplace_back("dense", [&](int) { Check(mlp::Forward(full, x_of(0), out, o, &ws), "d"); });
    cases.emplace_back("gate-first", [&](int s) {
                       Check(gf.Step(&updown, sel, x_of(s), out, o, &ws), "gf");
                     });
    step::GateFirst gf_direct = *step::GateFirst::Create(dtype, h, i, gate.data(), h);
    const mlp::NeuronRows up_down{dtype, h, i, nullptr, 0, up.data(), h, down_rows.data(), h};
    cases.emplace_back("gf-direct", [&](int s) {
      Check(gf_direct.Forward(up_down, sel, x_of(s), out, o, &ws), "gfd");
    });
    cases.emplace_back("oracle", [&](int s) {
      Check(step::LayerStep(&gated, masks[s], x_of(s), out, o, &ws), "o");
    });
    cases.emplace_back("direct", [&](int s) {
                       Check(mlp::ForwardIndexed(full, sets[s], x_of(s), out, o, &ws), "di");
                     });
    cases.emplace_back("floor", [&](int) { ReadRanges(floor_ranges, threads); });
    std::vector<float> activations(tokens * i);
    cases.emplace_back("gate pass", [&](int s) {
      Check(gf_direct.Activations(x_of(s), o, &ws, absl::MakeSpan(activations)), "ga");
    });
    if (active == actives.front()) {
      cases.emplace_back("scores", [&](int s) {
                         Check(predictor.Scores(x_of(s), o, &ws, absl::MakeSpan(scores)), "p");
                       });
      cases.emplace_back("select", [&](int s) {
                         diff::NeuronMask m = masks[s];
                         Check(predictor.Select(x_of(s), sel, o, &ws, &m), "ps");
                       });
    }
    for (int rep = 0; rep < reps; ++rep) {
      for (Case& c : cases) {
        scrubber->Scrub(threads);
        c.seconds.push_back(SecondsOf([&] { c.run(warm + rep); }));
      }
      // Each repetition replays the same token for every case: the step
      // cases' caches move on by one token per repetition together.
    }
    const double dense = Median(cases[0].seconds), floor = Median(cases[5].seconds);
    for (Case& c : cases) {
      const double m = Median(c.seconds);
      std::printf("%-6.2f %-12s %10.3f %9.3f %9.3f\n", active, c.name.c_str(), m * 1e3,
                  m / dense, m / floor);
    }
    std::printf("       mask churn per token %.3f, kept %zu neurons\n", churn / (steps - 1),
                kept_rows);
    if (active == actives.front()) {
      r.dense = dense;
      r.gate_first = Median(cases[1].seconds);
      r.gf_direct = Median(cases[2].seconds);
      r.oracle = Median(cases[3].seconds);
      r.scores = Median(cases[7].seconds);
      r.select = Median(cases[8].seconds);
    }
  }
  return r;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Gate-first and low-rank predictor steps (see the header).");
  absl::ParseCommandLine(argc, argv);
  RequireOptimizedBuild();
  const ModelPreset* preset = FindModelPreset(absl::GetFlag(FLAGS_model));
  if (preset == nullptr) {
    std::fprintf(stderr, "unknown --model %s\n", absl::GetFlag(FLAGS_model).c_str());
    return 1;
  }
  std::vector<double> actives;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_active), ',')) {
    double v;
    if (!absl::SimpleAtod(s, &v) || !(v > 0 && v <= 1)) {
      std::fprintf(stderr, "bad --active entry '%s': fractions in (0, 1]\n",
                   std::string(s).c_str());
      return 1;
    }
    actives.push_back(v);
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  Scrubber scrubber;
  std::printf("CPU: %s; SIMD %s\n", CpuName().c_str(),
              SimdLevelName(Resolve(SimdLevel::kBest)));
  std::vector<std::pair<std::string, Results>> all;
  for (absl::string_view d : absl::StrSplit(absl::GetFlag(FLAGS_dtypes), ',')) {
    absl::StatusOr<DType> dtype = cache::ParseDType(std::string(d));
    if (!dtype.ok()) {
      std::fprintf(stderr, "bad --dtypes entry: %s\n", dtype.status().ToString().c_str());
      return 1;
    }
    all.emplace_back(std::string(d),
                     RunDType(*dtype, preset->hidden, preset->intermediate, actives,
                              static_cast<size_t>(absl::GetFlag(FLAGS_tokens)),
                              static_cast<size_t>(absl::GetFlag(FLAGS_rank)), threads,
                              absl::GetFlag(FLAGS_reps), &scrubber));
  }
  std::printf("\nGoals (a = %.2f, %s shape):\n", actives.front(), preset->name);
  for (const auto& [name, r] : all) {
    const double bound = (1.0 + 2.0 * actives.front()) / 3.0;
    std::printf("  %-9s gate-first / dense = %.3f (goal <= 0.75; bytes bound %.3f): %s\n",
                name.c_str(), r.gate_first / r.dense, bound,
                r.gate_first / r.dense <= 0.75 ? "met" : "MISSED");
    std::printf("  %-9s gate-first direct (no cache) / dense = %.3f: %s\n", name.c_str(),
                r.gf_direct / r.dense, r.gf_direct / r.dense <= 0.75 ? "met" : "MISSED");
    std::printf("  %-9s predictor forward (scores) / oracle step = %.1f%% (goal <= 5%%, r = %d):"
                " %s; with the exact top-k %.1f%%\n",
                name.c_str(), 100 * r.scores / r.oracle, absl::GetFlag(FLAGS_rank),
                r.scores / r.oracle <= 0.05 ? "met" : "MISSED", 100 * r.select / r.oracle);
  }
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) { return sparse_mlp::bench::Main(argc, argv); }
