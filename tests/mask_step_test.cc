// step/mask_step.h: the gate-first step keeps exactly the top-k (or
// above-threshold) neurons by |act(gate x)| (ties to the lower index, the
// union over tokens) and computes the gated MLP over them; the low-rank
// predictor's scores against float64, its selection and its step. Every
// dtype, token counts across the 32-token chunk, 1 and 2 threads, scalar
// and the best SIMD level; errors leave cache, y and mask unchanged.
#include "step/mask_step.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gtest/gtest.h"
#include "platform/simd_level.h"
#include "step/layer_step.h"
#include "tests/mlp_reference.h"

namespace sparse_mlp::mlp {
namespace {

using namespace test_util;  // NOLINT: the shared reference helpers
using step::GateFirst;
using step::LowRankPredictor;
using step::Selection;

constexpr DType kDTypes[] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};

// The rule, on given scores: per token the k largest (ties to the lower
// index), or those above the threshold; the union over tokens.
std::vector<uint32_t> RuleSet(const std::vector<float>& scores, size_t tokens, size_t n,
                              const step::Selection& sel) {
  std::vector<uint8_t> keep(n, 0);
  for (size_t t = 0; t < tokens; ++t) {
    const float* row = scores.data() + t * n;
    if (sel.kind == step::Selection::Kind::kThreshold) {
      for (size_t j = 0; j < n; ++j) keep[j] |= row[j] > sel.threshold ? 1 : 0;
      continue;
    }
    std::vector<uint32_t> order(n);
    for (uint32_t j = 0; j < n; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return row[a] > row[b]; });
    for (size_t r = 0; r < sel.k; ++r) keep[order[r]] = 1;
  }
  std::vector<uint32_t> set;
  for (uint32_t j = 0; j < n; ++j) {
    if (keep[j]) set.push_back(j);
  }
  return set;
}

std::vector<uint32_t> Indices(const diff::NeuronMask& m) {
  std::vector<uint32_t> v;
  m.ToIndices(&v);
  return v;
}

std::string Describe(const std::vector<uint32_t>& got, const std::vector<uint32_t>& want) {
  for (size_t k = 0; k < std::max(got.size(), want.size()); ++k) {
    const long g = k < got.size() ? static_cast<long>(got[k]) : -1;
    const long w = k < want.size() ? static_cast<long>(want[k]) : -1;
    if (g != w) {
      return absl::StrFormat("%u kept vs %u expected; first difference at position %u: %d vs %d",
                             got.size(), want.size(), k, g, w);
    }
  }
  return "";
}

// A gate-less cache over the layer's up and down (what gate-first steps).
cache::WeightCache UpDownCache(const Layer& l, int threads) {
  cache::WeightCacheOptions co;
  co.hidden_size = l.h;
  co.intermediate_size = l.i;
  co.dtype = l.dtype;
  co.has_gate = false;
  co.num_threads = threads;
  return *cache::WeightCache::Create(co, {nullptr, l.up.data(), l.down.data()},
                                     diff::NeuronMask(l.i));
}

cache::WeightCache GatedCache(const Layer& l, int threads) {
  cache::WeightCacheOptions co;
  co.hidden_size = l.h;
  co.intermediate_size = l.i;
  co.dtype = l.dtype;
  co.num_threads = threads;
  return *cache::WeightCache::Create(co, {l.gate.data(), l.up.data(), l.down.data()},
                                     diff::NeuronMask(l.i));
}

// |act(gate x) - exact| within float32 summation (and bfloat16 x).
std::string CheckActivations(const Layer& l, const Array& x, size_t tokens,
                             const std::vector<float>& act) {
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t j = 0; j < l.i; ++j) {
      double g = 0, mag = 0;
      for (size_t c = 0; c < l.h; ++c) {
        float v = x.Get(t * l.h + c);
        if (l.dtype == DType::kBFloat16) v = RoundTo(DType::kBFloat16, v);
        g += l.gate.values[j * l.h + c] * double{v};
        mag += std::fabs(l.gate.values[j * l.h + c] * double{v});
      }
      const double want = ActivateExact(Activation::kSiLU, g);
      const double tol = 1.2 * std::ldexp(1.0, -24) * (l.h + 16) * mag + 1e-6 * std::fabs(want);
      if (!(std::fabs(act[t * l.i + j] - want) <= tol + 1e-30)) {
        return absl::StrFormat("token %u neuron %u: act %.9g, exact %.9g", t, j,
                               act[t * l.i + j], want);
      }
    }
  }
  return "";
}

TEST(GateFirstTest, KeepsTheTopNeuronsByGateActivationAndComputesTheirMlp) {
  std::mt19937_64 rng(251);
  for (DType dtype : kDTypes) {
    for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kBest}) {
      for (int threads : {1, 2}) {
        const size_t h = 72, i = 300;
        Layer l = RandomLayer(rng, h, i, dtype, true);
        if (threads == 2) {
          // Ties: neurons 100.. repeat gate rows of 0..: equal activations,
          // broken by the lower index.
          std::vector<float> g = l.gate.values;
          for (size_t j = 100; j < i; ++j) {
            std::copy_n(g.begin() + (j % 37) * h, h, g.begin() + j * h);
          }
          l.gate.Set(dtype, g);
        }
        absl::StatusOr<GateFirst> gf = step::GateFirst::Create(dtype, h, i, l.gate.data(), h);
        ASSERT_TRUE(gf.ok()) << gf.status();
        cache::WeightCache cache = UpDownCache(l, threads);
        step::GateFirst direct = *step::GateFirst::Create(dtype, h, i, l.gate.data(), h);
        NeuronRows up_down = RowsOf(l);
        up_down.gate = nullptr;
        ForwardOptions o;
        o.num_threads = threads;
        o.simd = level;
        Workspace ws;
        for (int step = 0; step < 8; ++step) {
          const size_t tokens = step == 5 ? 35 : 1 + step % 3;  // 35: two token chunks
          step::Selection sel;
          if (step % 4 == 3) {
            sel.kind = step::Selection::Kind::kThreshold;
            sel.threshold = 0.05f * static_cast<float>(step % 3);
          } else {
            sel.k = step == 0 ? 0 : (step * 37) % i;
          }
          Array x, y;
          x.Set(step % 2 ? dtype : DType::kFloat32, Uniform(rng, tokens * h, 1));
          y.Set(DType::kFloat32, std::vector<float>(tokens * h));
          SCOPED_TRACE(absl::StrFormat("%s level %s threads %d step %d tokens %u k %u",
                                       cache::DTypeName(dtype), SimdLevelName(level), threads,
                                       step, tokens, sel.k));
          ASSERT_TRUE(gf->Step(&cache, sel, In(x, tokens, h), Out(y, tokens, h), o, &ws).ok());
          std::vector<float> act(tokens * i);
          ASSERT_TRUE(gf->Activations(In(x, tokens, h), o, &ws, absl::MakeSpan(act)).ok());
          ASSERT_EQ(CheckActivations(l, x, tokens, act), "");
          std::vector<float> magnitude(act.size());
          for (size_t k = 0; k < act.size(); ++k) magnitude[k] = std::fabs(act[k]);
          const std::vector<uint32_t> want = RuleSet(magnitude, tokens, i, sel);
          ASSERT_EQ(Describe(Indices(gf->mask()), want), "");
          ASSERT_EQ(Describe(Indices(cache.applied_mask()), want), "");
          ASSERT_TRUE(cache.Verify().ok()) << cache.Verify();
          // y: the gated MLP over exactly those neurons.
          const Expected e =
              Reference(l, want, x, tokens, Activation::kSiLU, nullptr, DType::kFloat32);
          ASSERT_EQ(Compare(e, y, tokens, h), "");
          // The direct-index forward keeps the same neurons, reads them in place.
          Array y_direct = y;
          ASSERT_TRUE(
              direct.Forward(up_down, sel, In(x, tokens, h), Out(y_direct, tokens, h), o, &ws)
                  .ok());
          ASSERT_EQ(Describe(Indices(direct.mask()), want), "");
          ASSERT_EQ(Compare(e, y_direct, tokens, h), "");
        }
      }
    }
  }
}

TEST(GateFirstTest, EqualsTheLayerStepOnTheSameNeurons) {
  // Same slots, same kernels: the gate-first step's y equals the gated
  // cache's step on the neurons it kept, bit for bit (the gate dot is the
  // forward's own).
  std::mt19937_64 rng(252);
  const size_t h = 96, i = 500;
  const Layer l = RandomLayer(rng, h, i, DType::kFloat32, true);
  step::GateFirst gf = *step::GateFirst::Create(DType::kFloat32, h, i, l.gate.data(), h);
  cache::WeightCache updown = UpDownCache(l, 1);
  cache::WeightCache gated = GatedCache(l, 1);
  ForwardOptions o;
  Workspace ws;
  for (int step = 0; step < 6; ++step) {
    Array x, y_first, y_step;
    x.Set(DType::kFloat32, Uniform(rng, h, 1));
    y_first.Set(DType::kFloat32, std::vector<float>(h));
    y_step = y_first;
    step::Selection sel;
    sel.k = 100 + 40 * step;
    ASSERT_TRUE(gf.Step(&updown, sel, In(x, 1, h), Out(y_first, 1, h), o, &ws).ok());
    ASSERT_TRUE(step::LayerStep(&gated, gf.mask(), In(x, 1, h), Out(y_step, 1, h), o, &ws).ok());
    ASSERT_EQ(std::vector<uint32_t>(updown.active_indices().begin(),
                                    updown.active_indices().end()),
              std::vector<uint32_t>(gated.active_indices().begin(),
                                    gated.active_indices().end()));
    EXPECT_EQ(y_first.bytes, y_step.bytes) << "step " << step;
  }
}

TEST(GateFirstTest, StepSelectedEqualsStepOnTheSameNeurons) {
  // Neurons chosen elsewhere (here: the rule itself) and the activations of
  // Activations(): the same y, bit for bit, as the step that selected them.
  std::mt19937_64 rng(255);
  const size_t h = 64, i = 200;
  const Layer l = RandomLayer(rng, h, i, DType::kBFloat16, true);
  step::GateFirst a = *step::GateFirst::Create(DType::kBFloat16, h, i, l.gate.data(), h);
  step::GateFirst b = *step::GateFirst::Create(DType::kBFloat16, h, i, l.gate.data(), h);
  cache::WeightCache ca = UpDownCache(l, 1), cb = UpDownCache(l, 1);
  ForwardOptions o;
  Workspace ws;
  for (int step = 0; step < 5; ++step) {
    const size_t tokens = 1 + step % 3;
    Array x, ya, yb;
    x.Set(DType::kFloat32, Uniform(rng, tokens * h, 1));
    ya.Set(DType::kFloat32, std::vector<float>(tokens * h));
    yb = ya;
    step::Selection sel;
    sel.k = 30 + 20 * step;
    ASSERT_TRUE(a.Step(&ca, sel, In(x, tokens, h), Out(ya, tokens, h), o, &ws).ok());
    std::vector<float> act(tokens * i);
    ASSERT_TRUE(b.Activations(In(x, tokens, h), o, &ws, absl::MakeSpan(act)).ok());
    ASSERT_TRUE(b.StepSelected(&cb, a.mask(), act, In(x, tokens, h), Out(yb, tokens, h), o, &ws)
                    .ok());
    EXPECT_EQ(ya.bytes, yb.bytes) << "step " << step;
    EXPECT_TRUE(b.mask() == a.mask());
  }
  std::vector<float> short_act(i - 1);
  Array x, y;
  x.Set(DType::kFloat32, Uniform(rng, h, 1));
  y.Set(DType::kFloat32, std::vector<float>(h));
  EXPECT_EQ(b.StepSelected(&cb, a.mask(), short_act, In(x, 1, h), Out(y, 1, h), o, &ws).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b.StepSelected(&cb, diff::NeuronMask(i + 1), std::vector<float>(i), In(x, 1, h),
                           Out(y, 1, h), o, &ws)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(GateFirstTest, ErrorsLeaveCacheOutputAndMaskUnchanged) {
  std::mt19937_64 rng(253);
  const size_t h = 40, i = 64;
  const Layer l = RandomLayer(rng, h, i, DType::kFloat32, true);
  EXPECT_EQ(step::GateFirst::Create(DType::kFloat32, h, i, nullptr, h).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(step::GateFirst::Create(DType::kFloat32, h, i, l.gate.data(), h - 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(step::GateFirst::Create(DType::kFloat32, 0, i, l.gate.data(), h).status().code(),
            absl::StatusCode::kInvalidArgument);
  step::GateFirst gf = *step::GateFirst::Create(DType::kFloat32, h, i, l.gate.data(), h);
  cache::WeightCache cache = UpDownCache(l, 1);
  ForwardOptions o;
  Workspace ws;
  Array x, y;
  x.Set(DType::kFloat32, Uniform(rng, h, 1));
  y.Set(DType::kFloat32, std::vector<float>(h, 7.0f));
  step::Selection sel;
  sel.k = 10;
  ASSERT_TRUE(gf.Step(&cache, sel, In(x, 1, h), Out(y, 1, h), o, &ws).ok());
  const std::vector<uint32_t> before = Indices(gf.mask());
  const std::vector<uint8_t> y_before = y.bytes;
  const uint64_t version = cache.version();
  auto expect_unchanged = [&](absl::Status s, const std::string& needle) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s;
    EXPECT_EQ(Indices(gf.mask()), before);
    EXPECT_EQ(y.bytes, y_before);
    EXPECT_EQ(cache.version(), version);
    EXPECT_TRUE(cache.Verify().ok());
  };
  step::Selection too_many;
  too_many.k = i + 1;
  expect_unchanged(gf.Step(&cache, too_many, In(x, 1, h), Out(y, 1, h), o, &ws), "65");
  step::Selection nan;
  nan.kind = step::Selection::Kind::kThreshold;
  nan.threshold = std::nanf("");
  expect_unchanged(gf.Step(&cache, nan, In(x, 1, h), Out(y, 1, h), o, &ws), "NaN");
  cache::WeightCache gated = GatedCache(l, 1);
  expect_unchanged(gf.Step(&gated, sel, In(x, 1, h), Out(y, 1, h), o, &ws), "gate-less");
  const Layer other = RandomLayer(rng, h, i + 1, DType::kFloat32, true);
  cache::WeightCache wrong = UpDownCache(other, 1);
  expect_unchanged(gf.Step(&wrong, sel, In(x, 1, h), Out(y, 1, h), o, &ws), "65");
  expect_unchanged(gf.Step(nullptr, sel, In(x, 1, h), Out(y, 1, h), o, &ws), "null");
  NeuronRows with_gate = RowsOf(l);
  EXPECT_EQ(gf.Forward(with_gate, sel, In(x, 1, h), Out(y, 1, h), o, &ws).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Indices(gf.mask()), before);
  std::vector<float> small(i - 1);
  EXPECT_EQ(gf.Activations(In(x, 1, h), o, &ws, absl::MakeSpan(small)).code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- the low-rank predictor ------------------------------------------------

TEST(LowRankPredictorTest, ScoresSelectionAndStepAgainstTheReference) {
  std::mt19937_64 rng(254);
  for (DType dtype : kDTypes) {
    for (SimdLevel level : {SimdLevel::kScalar, SimdLevel::kBest}) {
      for (size_t rank : {1, 16, 37}) {
        const int threads = rank == 16 ? 2 : 1;
        const size_t h = 80, i = 260;
        const Layer l = RandomLayer(rng, h, i, dtype, true);
        Array a, b;
        a.Set(dtype, Uniform(rng, rank * h, 0.3f));
        b.Set(dtype, Uniform(rng, i * rank, 0.3f));
        absl::StatusOr<LowRankPredictor> p =
            step::LowRankPredictor::Create(dtype, h, i, rank, a.data(), h, b.data(), rank);
        ASSERT_TRUE(p.ok()) << p.status();
        cache::WeightCache stepped = GatedCache(l, threads);
        cache::WeightCache plain = GatedCache(l, threads);
        ForwardOptions o;
        o.num_threads = threads;
        o.simd = level;
        Workspace ws;
        for (size_t tokens : {size_t{1}, size_t{4}, size_t{33}}) {
          SCOPED_TRACE(absl::StrFormat("%s level %s rank %u tokens %u", cache::DTypeName(dtype),
                                       SimdLevelName(level), rank, tokens));
          Array x, y1, y2;
          x.Set(DType::kFloat32, Uniform(rng, tokens * h, 1));
          y1.Set(DType::kFloat32, std::vector<float>(tokens * h));
          y2 = y1;
          std::vector<float> scores(tokens * i);
          ASSERT_TRUE(p->Scores(In(x, tokens, h), o, &ws, absl::MakeSpan(scores)).ok());
          for (size_t t = 0; t < tokens; ++t) {
            std::vector<double> z(rank), zmag(rank);
            std::vector<float> zk(rank);  // z as the kernels see it
            for (size_t r = 0; r < rank; ++r) {
              for (size_t c = 0; c < h; ++c) {
                float v = x.Get(t * h + c);
                if (dtype == DType::kBFloat16) v = RoundTo(dtype, v);
                z[r] += a.values[r * h + c] * double{v};
                zmag[r] += std::fabs(a.values[r * h + c] * double{v});
              }
            }
            for (size_t j = 0; j < i; ++j) {
              double s = 0, tol = 0;
              for (size_t r = 0; r < rank; ++r) {
                const double w = b.values[j * rank + r];
                s += w * z[r];
                // float32 sums in z and in the score, and z's bfloat16 rounding.
                tol += std::fabs(w) * (std::ldexp(zmag[r], -22) * (h + 16) +
                                       (dtype == DType::kBFloat16 ? std::ldexp(zmag[r], -8) : 0));
                tol += std::ldexp(std::fabs(w * z[r]), -22) * (rank + 16);
              }
              ASSERT_LE(std::fabs(scores[t * i + j] - s), tol + 1e-30)
                  << "token " << t << " neuron " << j;
            }
          }
          step::Selection sel;
          sel.k = tokens == 4 ? 0 : 50;
          diff::NeuronMask selected(i);
          ASSERT_TRUE(p->Select(In(x, tokens, h), sel, o, &ws, &selected).ok());
          const std::vector<uint32_t> want = RuleSet(scores, tokens, i, sel);
          ASSERT_EQ(Describe(Indices(selected), want), "");
          ASSERT_TRUE(p->Step(&stepped, sel, In(x, tokens, h), Out(y1, tokens, h), o, &ws).ok());
          ASSERT_EQ(Describe(Indices(p->mask()), want), "");
          ASSERT_TRUE(
              step::LayerStep(&plain, selected, In(x, tokens, h), Out(y2, tokens, h), o, &ws).ok());
          EXPECT_EQ(y1.bytes, y2.bytes);
          ASSERT_TRUE(stepped.Verify().ok());
        }
      }
    }
  }
}

TEST(LowRankPredictorTest, BadArgumentsAreRefused) {
  std::vector<float> a(8 * 4), b(16 * 4);
  auto code = [](const absl::StatusOr<LowRankPredictor>& p) { return p.status().code(); };
  const auto kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(
      code(step::LowRankPredictor::Create(DType::kFloat32, 8, 16, 0, a.data(), 8, b.data(), 4)),
      kBad);
  EXPECT_EQ(
      code(step::LowRankPredictor::Create(DType::kFloat32, 8, 16, 4, nullptr, 8, b.data(), 4)),
      kBad);
  EXPECT_EQ(
      code(step::LowRankPredictor::Create(DType::kFloat32, 8, 16, 4, a.data(), 8, b.data(), 3)),
      kBad);
  EXPECT_EQ(
      code(step::LowRankPredictor::Create(DType::kFloat32, 8, 0, 4, a.data(), 8, b.data(), 4)),
      kBad);
  step::LowRankPredictor p =
      *step::LowRankPredictor::Create(DType::kFloat32, 8, 16, 4, a.data(), 8, b.data(), 4);
  std::vector<float> x(8, 1.0f);
  diff::NeuronMask wrong(15);
  step::Selection sel;
  sel.k = 3;
  Workspace ws;
  const absl::Status s = p.Select({x.data(), 1, 8, DType::kFloat32}, sel, {}, &ws, &wrong);
  EXPECT_EQ(s.code(), kBad);
  EXPECT_NE(std::string(s.message()).find("15"), std::string::npos) << s;
}

}  // namespace
}  // namespace sparse_mlp::mlp
