// mlp/: every SIMD level, dtype, activation, source of rows and thread
// count against a float64 reference, within the precision contract of
// mlp/mlp_forward.h; determinism; every error class (nothing written); the
// layer step against Update + forward.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gtest/gtest.h"
#include "mlp/activation.h"
#include "mlp/kernels.h"
#include "mlp/mlp_forward.h"
#include "platform/float16.h"
#include "platform/simd_level.h"
#include "step/layer_step.h"
#include "tests/mlp_reference.h"

namespace sparse_mlp::mlp {
namespace {

using cache::DType;

using namespace test_util;  // NOLINT: the shared reference helpers

constexpr DType kDTypes[] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16};
constexpr Activation kActivations[] = {Activation::kSiLU, Activation::kGeluTanh,
                                       Activation::kReLU};

enum class Source { kRows, kIndexed, kLinear, kCache, kStep };
const char* SourceName(Source s) {
  switch (s) {
    case Source::kRows:
      return "rows";
    case Source::kIndexed:
      return "indexed";
    case Source::kLinear:
      return "linear";
    case Source::kCache:
      return "cache";
    case Source::kStep:
      return "step";
  }
  return "?";
}

// One random case of one source, checked against the reference.
struct Case {
  size_t h, i, tokens;
  DType dtype, x_dtype, y_dtype;
  bool has_gate, accumulate;
  Activation act;
  SimdLevel level;
  int threads;
  double fraction;
  cache::PackedLayout layout = cache::PackedLayout::kSplit;
  std::string Describe() const {
    return absl::StrFormat(
        "H=%u I=%u T=%u dtype=%s x=%s y=%s gate=%d accumulate=%d act=%s level=%s "
        "threads=%d fraction=%.2f layout=%s",
        h, i, tokens, DTypeName(dtype), DTypeName(x_dtype), DTypeName(y_dtype), has_gate,
        accumulate, ActivationName(act), SimdLevelName(level), threads, fraction,
        cache::PackedLayoutName(layout));
  }
};

// Runs `c` through `source` and returns "" or the first difference.
std::string RunCase(const Case& c, Source source, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const Layer l = RandomLayer(rng, c.h, c.i, c.dtype, c.has_gate);
  Array x, y;
  x.Set(c.x_dtype, Uniform(rng, c.tokens * c.h, 1.0f));
  y.Set(c.y_dtype, Uniform(rng, c.tokens * c.h, 0.5f));
  const Array y_before = y;
  ForwardOptions o;
  o.activation = c.act;
  o.accumulate = c.accumulate;
  o.num_threads = c.threads;
  o.simd = c.level;
  Workspace ws;
  std::vector<uint32_t> set = source == Source::kRows || source == Source::kLinear
                                  ? All(c.i)
                                  : RandomSet(rng, c.i, c.fraction);
  absl::Status s;
  switch (source) {
    case Source::kRows:
      s = Forward(RowsOf(l), In(x, c.tokens, c.h), Out(y, c.tokens, c.h), o, &ws);
      break;
    case Source::kIndexed:
      s = ForwardIndexed(RowsOf(l), set, In(x, c.tokens, c.h), Out(y, c.tokens, c.h), o, &ws);
      break;
    case Source::kLinear:
      s = ForwardLinear(LinearOf(l), In(x, c.tokens, c.h), Out(y, c.tokens, c.h), o, &ws);
      break;
    case Source::kCache:
    case Source::kStep: {
      cache::WeightCacheOptions co;
      co.hidden_size = c.h;
      co.intermediate_size = c.i;
      co.dtype = c.dtype;
      co.has_gate = c.has_gate;
      co.layout = c.layout;
      co.simd = c.level;
      co.num_threads = c.threads;
      diff::NeuronMask first(c.i);
      const std::vector<uint32_t> first_set =
          source == Source::kStep ? RandomSet(rng, c.i, c.fraction) : set;
      for (uint32_t j : first_set) first.Set(j, true);
      absl::StatusOr<cache::WeightCache> wc = cache::WeightCache::Create(
          co, {c.has_gate ? l.gate.data() : nullptr, l.up.data(), l.down.data()}, first);
      if (!wc.ok()) return std::string(wc.status().message());
      if (source == Source::kCache) {
        s = step::CacheForward(*wc, In(x, c.tokens, c.h), Out(y, c.tokens, c.h), o, &ws);
        // The cache's slot order is not ascending after updates, but the
        // first packing is; the set is the same either way.
      } else {
        diff::NeuronMask next(c.i);
        for (uint32_t j : set) next.Set(j, true);
        s = step::LayerStep(&*wc, next, In(x, c.tokens, c.h), Out(y, c.tokens, c.h), o, &ws);
        if (s.ok()) {
          if (absl::Status v = wc->Verify(); !v.ok()) return std::string(v.message());
          if (!(wc->applied_mask() == next)) return "the cache does not hold the new mask";
        }
      }
      break;
    }
  }
  if (!s.ok()) return std::string(s.message());
  const Expected e = Reference(l, set, x, c.tokens, c.act, c.accumulate ? &y_before : nullptr,
                               c.y_dtype);
  return Compare(e, y, c.tokens, c.h);
}

Case RandomCase(std::mt19937_64& rng, SimdLevel level, bool large) {
  static const size_t kSmallH[] = {1, 7, 16, 31, 33, 64, 100, 257};
  static const size_t kSmallI[] = {1, 3, 9, 40, 130};
  Case c;
  c.h = large ? 300 + rng() % 40 : kSmallH[rng() % 8];
  c.i = large ? 1100 + rng() % 300 : kSmallI[rng() % 5];
  c.tokens = rng() % 6 == 0 ? 33 + rng() % 9 : 1 + rng() % 17;
  if (large && c.tokens > 17) c.tokens = 1 + rng() % 17;
  c.dtype = kDTypes[rng() % 3];
  c.x_dtype = rng() % 2 ? c.dtype : DType::kFloat32;
  c.y_dtype = rng() % 2 ? c.dtype : DType::kFloat32;
  c.has_gate = rng() % 4 != 0;
  c.accumulate = rng() % 3 == 0;
  c.act = kActivations[rng() % 3];
  c.level = level;
  c.threads = large ? 1 + static_cast<int>(rng() % 3) : 1 + static_cast<int>(rng() % 2);
  static const double kFractions[] = {0.0, 0.1, 0.3, 0.5, 1.0};
  c.fraction = kFractions[rng() % 5];
  static const cache::PackedLayout kLayouts[] = {cache::PackedLayout::kSplit,
                                                 cache::PackedLayout::kInterleavedGateUp,
                                                 cache::PackedLayout::kFusedRows};
  c.layout = kLayouts[rng() % 3];
  if (!c.has_gate && c.layout == cache::PackedLayout::kInterleavedGateUp) {
    c.layout = cache::PackedLayout::kFusedRows;
  }
  return c;
}

void RunRandomCases(bool large, int per_level) {
  for (SimdLevel level : SupportedSimdLevels()) {
    std::mt19937_64 rng(large ? 7100 : 7000 + static_cast<int>(level));
    for (int n = 0; n < per_level; ++n) {
      const Case c = RandomCase(rng, level, large);
      const uint64_t seed = rng();
      for (Source source :
           {Source::kRows, Source::kIndexed, Source::kLinear, Source::kCache, Source::kStep}) {
        const std::string err = RunCase(c, source, seed);
        ASSERT_EQ(err, "") << SourceName(source) << " " << c.Describe() << " seed " << seed;
      }
    }
  }
}

TEST(MlpForwardTest, SmallRandomShapesMatchTheFloat64Reference) {
  RunRandomCases(/*large=*/false, 120);
}

// Above the parallel threshold (1 MiB of weights), 1-3 threads.
TEST(MlpForwardTest, LargeShapesOnSeveralThreadsMatchTheReference) {
  RunRandomCases(/*large=*/true, 6);
}

TEST(MlpForwardTest, EveryDTypeActivationAndGateOnEveryLevel) {
  for (SimdLevel level : SupportedSimdLevels()) {
    for (DType dtype : kDTypes) {
      for (Activation act : kActivations) {
        for (bool gate : {true, false}) {
          Case c{37, 21, 3, dtype, dtype, DType::kFloat32, gate, false, act, level, 1, 0.5};
          for (Source source : {Source::kRows, Source::kIndexed, Source::kLinear}) {
            ASSERT_EQ(RunCase(c, source, 11), "") << SourceName(source) << " " << c.Describe();
          }
        }
      }
    }
  }
}

TEST(MlpForwardTest, EmptySetWritesZerosOrLeavesTheResidual) {
  Layer l;
  std::mt19937_64 rng(3);
  l = RandomLayer(rng, 20, 10, DType::kFloat32, true);
  Array x, y;
  x.Set(DType::kFloat32, Uniform(rng, 2 * 20, 1));
  y.Set(DType::kFloat32, std::vector<float>(40, 5.0f));
  Workspace ws;
  ForwardOptions o;
  ASSERT_TRUE(ForwardIndexed(RowsOf(l), {}, In(x, 2, 20), Out(y, 2, 20), o, &ws).ok());
  for (float v : y.values) ASSERT_EQ(v, 5.0f);  // values: untouched copy
  for (size_t k = 0; k < 40; ++k) ASSERT_EQ(y.Get(k), 0.0f);
  y.Set(DType::kFloat32, std::vector<float>(40, 5.0f));
  o.accumulate = true;
  ASSERT_TRUE(ForwardIndexed(RowsOf(l), {}, In(x, 2, 20), Out(y, 2, 20), o, &ws).ok());
  for (size_t k = 0; k < 40; ++k) ASSERT_EQ(y.Get(k), 5.0f);
}

TEST(MlpForwardTest, InPlaceOutputOverX) {
  std::mt19937_64 rng(5);
  const Layer l = RandomLayer(rng, 400, 900, DType::kFloat32, true);
  Array x;
  x.Set(DType::kFloat32, Uniform(rng, 3 * 400, 1));
  const Expected e = Reference(l, All(900), x, 3, Activation::kSiLU, &x, DType::kFloat32);
  ForwardOptions o;
  o.accumulate = true;  // x += MLP(x)
  o.num_threads = 2;
  Workspace ws;
  Array y = x;
  ASSERT_TRUE(Forward(RowsOf(l), In(y, 3, 400), Out(y, 3, 400), o, &ws).ok());
  EXPECT_EQ(Compare(e, y, 3, 400), "");
}

TEST(MlpForwardTest, SameInputsSameThreadsSameBits) {
  std::mt19937_64 rng(8);
  const Layer l = RandomLayer(rng, 333, 1500, DType::kBFloat16, true);
  Array x;
  x.Set(DType::kFloat32, Uniform(rng, 5 * 333, 1));
  const std::vector<uint32_t> set = RandomSet(rng, 1500, 0.4);
  for (SimdLevel level : SupportedSimdLevels()) {
    for (int threads : {1, 2, 3}) {
      ForwardOptions o;
      o.num_threads = threads;
      o.simd = level;
      Workspace ws;
      Array a, b;
      a.Set(DType::kFloat32, std::vector<float>(5 * 333));
      b = a;
      ASSERT_TRUE(ForwardIndexed(RowsOf(l), set, In(x, 5, 333), Out(a, 5, 333), o, &ws).ok());
      ASSERT_TRUE(ForwardIndexed(RowsOf(l), set, In(x, 5, 333), Out(b, 5, 333), o, &ws).ok());
      EXPECT_EQ(a.bytes, b.bytes) << SimdLevelName(level) << " " << threads;
    }
  }
}

TEST(MlpForwardTest, StridedRowsAndTokens) {
  std::mt19937_64 rng(9);
  const Layer l = RandomLayer(rng, 50, 30, DType::kFloat16, true);
  // Rows 70 elements apart and tokens 64 apart, padding filled with NaN.
  const size_t rs = 70, xs = 64, ys = 60, tokens = 4;
  auto pad = [&](const Array& a, size_t rows, size_t stride) {
    std::vector<float> v(rows * stride, NAN);
    for (size_t r = 0; r < rows; ++r) {
      for (size_t c = 0; c < 50; ++c) v[r * stride + c] = a.values[r * 50 + c];
    }
    Array out;
    out.Set(a.dtype, v);
    return out;
  };
  const Array g = pad(l.gate, 30, rs), u = pad(l.up, 30, rs), d = pad(l.down_rows, 30, rs);
  Array x;
  x.Set(DType::kFloat32, Uniform(rng, tokens * 50, 1));
  const Array xp = pad(x, tokens, xs);
  Array y;
  y.Set(DType::kFloat32, std::vector<float>(tokens * ys, NAN));
  NeuronRows rows{DType::kFloat16, 50, 30, g.data(), rs, u.data(), rs, d.data(), rs};
  Workspace ws;
  ASSERT_TRUE(Forward(rows, {xp.data(), tokens, xs, DType::kFloat32},
                      {y.data(), tokens, ys, DType::kFloat32}, ForwardOptions(), &ws)
                  .ok());
  const Expected e = Reference(l, All(30), x, tokens, Activation::kSiLU, nullptr,
                               DType::kFloat32);
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t c = 0; c < 50; ++c) {
      EXPECT_NEAR(y.Get(t * ys + c), e.y[t * 50 + c], e.tol[t * 50 + c]) << t << " " << c;
    }
    for (size_t c = 50; c < ys; ++c) EXPECT_TRUE(std::isnan(y.Get(t * ys + c)));
  }
}

// ---- the layer step --------------------------------------------------------

TEST(LayerStepTest, SequencesMatchUpdateThenForwardOnEveryLayout) {
  std::mt19937_64 rng(21);
  for (cache::PackedLayout layout :
       {cache::PackedLayout::kSplit, cache::PackedLayout::kInterleavedGateUp,
        cache::PackedLayout::kFusedRows}) {
    for (cache::SourceOwnership own :
         {cache::SourceOwnership::kCopy, cache::SourceOwnership::kBorrow}) {
      for (int threads : {1, 2}) {
        const size_t h = 260, i = 1200;
        const Layer l = RandomLayer(rng, h, i, DType::kBFloat16, true);
        cache::WeightCacheOptions co;
        co.hidden_size = h;
        co.intermediate_size = i;
        co.dtype = DType::kBFloat16;
        co.layout = layout;
        co.ownership = own;
        co.num_threads = threads;
        co.concat_gate_up = layout == cache::PackedLayout::kSplit;  // kept by the step too
        diff::NeuronMask mask(i);
        for (uint32_t j : RandomSet(rng, i, 0.3)) mask.Set(j, true);
        cache::WeightCache stepped =
            *cache::WeightCache::Create(co, {l.gate.data(), l.up.data(), l.down.data()}, mask);
        cache::WeightCache updated =
            *cache::WeightCache::Create(co, {l.gate.data(), l.up.data(), l.down.data()}, mask);
        ForwardOptions o;
        o.num_threads = threads;
        Workspace ws;
        for (int step = 0; step < 25; ++step) {
          // Churn from none to all, shrinking and growing sets.
          const double density = step % 7 == 6 ? 0.0 : (step % 5) * 0.2 + 0.05;
          const double churn = step % 4 == 0 ? 0.0 : 0.1 * (step % 4);
          diff::NeuronMask next = mask;
          for (uint32_t j = 0; j < i; ++j) {
            if (std::uniform_real_distribution<double>(0, 1)(rng) < churn) {
              next.Set(j, std::uniform_real_distribution<double>(0, 1)(rng) < density);
            }
          }
          if (step % 7 == 6) next = diff::NeuronMask(i);
          const size_t tokens = 1 + step % 5;
          Array x, y_step, y_ref;
          x.Set(DType::kBFloat16, Uniform(rng, tokens * h, 1));
          y_step.Set(DType::kFloat32, std::vector<float>(tokens * h));
          y_ref = y_step;
          SCOPED_TRACE(absl::StrFormat("layout %s own %d threads %d step %d",
                                       cache::PackedLayoutName(layout), static_cast<int>(own),
                                       threads, step));
          ASSERT_TRUE(
              step::LayerStep(&stepped, next, In(x, tokens, h), Out(y_step, tokens, h), o, &ws)
                  .ok());
          ASSERT_TRUE(updated.Update(next).ok());
          ASSERT_TRUE(
              step::CacheForward(updated, In(x, tokens, h), Out(y_ref, tokens, h), o, &ws).ok());
          ASSERT_TRUE(stepped.Verify().ok()) << stepped.Verify().message();
          ASSERT_TRUE(stepped.applied_mask() == next);
          ASSERT_EQ(std::vector<uint32_t>(stepped.active_indices().begin(),
                                          stepped.active_indices().end()),
                    std::vector<uint32_t>(updated.active_indices().begin(),
                                          updated.active_indices().end()));
          EXPECT_EQ(stepped.last_update().rows_loaded, updated.last_update().rows_loaded);
          EXPECT_EQ(stepped.version(), updated.version());
          // Same slots, same kernels, same partition: the same bits.
          ASSERT_EQ(y_step.bytes, y_ref.bytes);
          std::vector<uint32_t> set;
          next.ToIndices(&set);
          const Expected e = Reference(l, set, x, tokens, Activation::kSiLU, nullptr,
                                       DType::kFloat32);
          ASSERT_EQ(Compare(e, y_step, tokens, h), "");
          mask = next;
        }
      }
    }
  }
}

TEST(LayerStepTest, ToleranceSkipsTheUpdateAndComputesOnTheAppliedSet) {
  std::mt19937_64 rng(22);
  const size_t h = 40, i = 64;
  const Layer l = RandomLayer(rng, h, i, DType::kFloat32, true);
  cache::WeightCacheOptions co;
  co.hidden_size = h;
  co.intermediate_size = i;
  co.tolerance = 5;
  diff::NeuronMask mask(i);
  for (uint32_t j = 0; j < 20; ++j) mask.Set(j, true);
  cache::WeightCache wc =
      *cache::WeightCache::Create(co, {l.gate.data(), l.up.data(), l.down.data()}, mask);
  diff::NeuronMask next = mask;
  next.Set(30, true);  // one change: below the tolerance
  Array x, y;
  x.Set(DType::kFloat32, Uniform(rng, h, 1));
  y.Set(DType::kFloat32, std::vector<float>(h));
  Workspace ws;
  ASSERT_TRUE(step::LayerStep(&wc, next, In(x, 1, h), Out(y, 1, h), ForwardOptions(), &ws).ok());
  EXPECT_TRUE(wc.last_update().skipped);
  EXPECT_EQ(wc.lag(), 1u);
  std::vector<uint32_t> set;
  mask.ToIndices(&set);
  EXPECT_EQ(Compare(Reference(l, set, x, 1, Activation::kSiLU, nullptr, DType::kFloat32), y, 1, h),
            "");
}

// ---- errors ------------------------------------------------------------------

struct ErrorFixture {
  std::mt19937_64 rng{31};
  Layer l = RandomLayer(rng, 24, 16, DType::kBFloat16, true);
  Array x, y;
  Workspace ws;
  ErrorFixture() {
    x.Set(DType::kBFloat16, Uniform(rng, 2 * 24, 1));
    y.Set(DType::kFloat32, std::vector<float>(2 * 24, 7.0f));
  }
  ConstTokens X() const { return In(x, 2, 24); }
  Tokens Y() { return Out(y, 2, 24); }
  bool YUnchanged() const {
    for (size_t k = 0; k < 48; ++k) {
      if (y.Get(k) != 7.0f) return false;
    }
    return true;
  }
};

void ExpectError(absl::Status s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(std::string(s.message()).find(needle), std::string::npos) << s.message();
}

TEST(MlpForwardErrorTest, BadTokens) {
  ErrorFixture f;
  ConstTokens x = f.X();
  x.data = nullptr;
  ExpectError(Forward(RowsOf(f.l), x, f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "x is null");
  x = f.X();
  x.tokens = 0;
  ExpectError(Forward(RowsOf(f.l), x, f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "x has 0 tokens");
  x = f.X();
  x.stride = 23;
  ExpectError(Forward(RowsOf(f.l), x, f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "x row stride 23 is smaller than hidden_size 24");
  Tokens y = f.Y();
  y.tokens = 3;
  ExpectError(Forward(RowsOf(f.l), f.X(), y, {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "y has 3 tokens but x has 2");
  EXPECT_TRUE(f.YUnchanged());
}

TEST(MlpForwardErrorTest, DTypeMismatch) {
  ErrorFixture f;
  ConstTokens x = f.X();
  x.dtype = DType::kFloat16;  // bf16 weights: x must be float32 or bfloat16
  ExpectError(Forward(RowsOf(f.l), x, f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "x is float16; with bfloat16 weights it must be float32 or bfloat16");
  Tokens y = f.Y();
  y.dtype = static_cast<DType>(9);
  ExpectError(Forward(RowsOf(f.l), f.X(), y, {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "y is of an unknown type");
  NeuronRows rows = RowsOf(f.l);
  rows.dtype = static_cast<DType>(7);
  ExpectError(Forward(rows, f.X(), f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "unsupported weight type 7");
  EXPECT_TRUE(f.YUnchanged());
}

TEST(MlpForwardErrorTest, BadRows) {
  ErrorFixture f;
  NeuronRows rows = RowsOf(f.l);
  rows.up = nullptr;
  ExpectError(Forward(rows, f.X(), f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "up rows are null");
  rows = RowsOf(f.l);
  rows.down_stride = 10;
  ExpectError(Forward(rows, f.X(), f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "down row stride 10 is smaller than hidden_size 24");
  rows = RowsOf(f.l);
  rows.hidden_size = 0;
  ExpectError(Forward(rows, f.X(), f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "hidden_size must be positive, got 0");
  LinearWeights w = LinearOf(f.l);
  w.intermediate_size = 0;
  ExpectError(ForwardLinear(w, f.X(), f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "intermediate_size must be positive, got 0");
  w = LinearOf(f.l);
  w.down = nullptr;
  ExpectError(ForwardLinear(w, f.X(), f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "down weight is null");
  EXPECT_TRUE(f.YUnchanged());
}

TEST(MlpForwardErrorTest, SizesThatOverflow) {
  ErrorFixture f;
  NeuronRows rows = RowsOf(f.l);
  rows.count = size_t{1} << 62;
  ExpectError(Forward(rows, f.X(), f.Y(), {}, &f.ws), absl::StatusCode::kOutOfRange, "");
  ConstTokens x = f.X();
  x.stride = size_t{1} << 63;
  ExpectError(Forward(RowsOf(f.l), x, f.Y(), {}, &f.ws), absl::StatusCode::kOutOfRange, "");
  EXPECT_TRUE(f.YUnchanged());
}

TEST(MlpForwardErrorTest, BadIndices) {
  ErrorFixture f;
  const std::vector<uint32_t> out_of_range = {1, 5, 16};
  ExpectError(ForwardIndexed(RowsOf(f.l), out_of_range, f.X(), f.Y(), {}, &f.ws),
              absl::StatusCode::kInvalidArgument, "indices[2] = 16 is out of range for 16");
  const std::vector<uint32_t> unsorted = {3, 2};
  ExpectError(ForwardIndexed(RowsOf(f.l), unsorted, f.X(), f.Y(), {}, &f.ws),
              absl::StatusCode::kInvalidArgument,
              "indices[1] = 2 follows indices[0] = 3: indices must be ascending and distinct");
  const std::vector<uint32_t> repeated = {4, 4};
  ExpectError(ForwardIndexed(RowsOf(f.l), repeated, f.X(), f.Y(), {}, &f.ws),
              absl::StatusCode::kInvalidArgument, "indices[1] = 4 follows indices[0] = 4");
  EXPECT_TRUE(f.YUnchanged());
}

TEST(MlpForwardErrorTest, BadOptions) {
  ErrorFixture f;
  ForwardOptions o;
  o.activation = static_cast<Activation>(12);
  ExpectError(Forward(RowsOf(f.l), f.X(), f.Y(), o, &f.ws), absl::StatusCode::kInvalidArgument,
              "unknown activation 12");
  o = ForwardOptions();
  o.num_threads = 0;
  ExpectError(Forward(RowsOf(f.l), f.X(), f.Y(), o, &f.ws), absl::StatusCode::kInvalidArgument,
              "num_threads must be in [1, 1024], got 0");
  ExpectError(Forward(RowsOf(f.l), f.X(), f.Y(), {}, nullptr), absl::StatusCode::kInvalidArgument,
              "workspace is null");
  EXPECT_EQ(ParseActivation("swish").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseActivation("gelu_tanh"), Activation::kGeluTanh);
  EXPECT_TRUE(f.YUnchanged());
}

TEST(LayerStepErrorTest, BadMaskLeavesCacheAndOutputUnchanged) {
  ErrorFixture f;
  cache::WeightCacheOptions co;
  co.hidden_size = 24;
  co.intermediate_size = 16;
  co.dtype = DType::kBFloat16;
  diff::NeuronMask mask(16);
  mask.Set(3, true);
  cache::WeightCache wc =
      *cache::WeightCache::Create(co, {f.l.gate.data(), f.l.up.data(), f.l.down.data()}, mask);
  const uint64_t version = wc.version();
  ExpectError(step::LayerStep(&wc, diff::NeuronMask(17), f.X(), f.Y(), {}, &f.ws),
              absl::StatusCode::kInvalidArgument, "mask has 17 neurons");
  const std::vector<uint8_t> bytes(15, 1);
  EXPECT_FALSE(step::LayerStepFromByteRows(&wc, bytes, 1, f.X(), f.Y(), {}, &f.ws).ok());
  ConstTokens x = f.X();
  x.tokens = 0;
  diff::NeuronMask all(16);
  for (uint32_t j = 0; j < 16; ++j) all.Set(j, true);
  ExpectError(step::LayerStep(&wc, all, x, f.Y(), {}, &f.ws), absl::StatusCode::kInvalidArgument,
              "x has 0 tokens");
  ExpectError(step::LayerStep(nullptr, all, f.X(), f.Y(), {}, &f.ws),
              absl::StatusCode::kInvalidArgument, "cache is null");
  EXPECT_EQ(wc.version(), version);
  EXPECT_TRUE(wc.applied_mask() == mask);
  EXPECT_TRUE(f.YUnchanged());
}

// ---- kernels ---------------------------------------------------------------

TEST(MlpKernelTest, SelectionFollowsTheCpu) {
  for (SimdLevel level : SupportedSimdLevels()) {
    for (DType dtype : kDTypes) {
      const internal::Kernels k = internal::SelectKernels(dtype, level);
      EXPECT_LE(static_cast<int>(k.level), static_cast<int>(level));
      EXPECT_EQ(k.bf16_dot, dtype == DType::kBFloat16 && k.level == SimdLevel::kAvx512 &&
                                HasCpuFeature(CpuFeature::kAvx512Bf16));
    }
  }
  EXPECT_EQ(internal::SelectKernels(DType::kFloat32, SimdLevel::kScalar).level,
            SimdLevel::kScalar);
}

TEST(Float16Test, ConversionsRoundToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(BitsFloat(0x3f808000u)), 0x3f80);  // tie to even
  EXPECT_EQ(FloatToBFloat16(BitsFloat(0x3f818000u)), 0x3f82);
  EXPECT_EQ(FloatToFloat16(1.0f), 0x3c00);
  EXPECT_EQ(FloatToFloat16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToFloat16(65520.0f), 0x7c00);  // rounds to infinity
  EXPECT_EQ(FloatToFloat16(5.9604645e-8f), 0x0001);  // smallest subnormal
  EXPECT_TRUE(std::isnan(Float16ToFloat(FloatToFloat16(NAN))));
  // Every float16 survives the round trip.
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if ((b & 0x7c00) == 0x7c00 && (b & 0x3ff) != 0) continue;  // NaN payloads
    ASSERT_EQ(FloatToFloat16(Float16ToFloat(static_cast<uint16_t>(b))), b) << b;
  }
}

}  // namespace
}  // namespace sparse_mlp::mlp
