// quant/ (formats, reference quantization) and the forward over quantized
// rows (mlp/quant_forward.h): round trips against float64, the q4 scale
// search against plain max-abs rounding, bad input refused with nothing
// written, and every SIMD level, thread count, group size, token count and
// gated / gate-less / indexed form of the forward against a float64 forward
// on the dequantized weights. Random shapes with fixed seeds; a failure
// prints its case.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mlp/kernels.h"
#include "mlp/quant_forward.h"
#include "mlp/quant_kernels.h"
#include "platform/float16.h"
#include "platform/simd_level.h"
#include "quant/format.h"
#include "quant/quantize.h"

namespace sparse_mlp {
namespace {

using quant::QuantFormat;
using quant::QuantType;
using quant::RowLayout;
using ::testing::HasSubstr;

std::vector<float> Gaussian(std::mt19937_64& rng, size_t n, float sigma) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Every group a row of `h` weights admits for `type`.
std::vector<size_t> Groups(QuantType type, size_t h) {
  std::vector<size_t> out;
  if (type == QuantType::kQ4) {
    for (size_t g : {32, 64}) {
      if (h % g == 0) out.push_back(g);
    }
    return out;
  }
  for (size_t g = 32; g < h; g += 32) {
    if (h % g == 0) out.push_back(g);
  }
  out.push_back(0);  // the whole row
  return out;
}

TEST(QuantFormat, Layouts) {
  RowLayout l = *RowLayout::Create({QuantType::kInt8, 32}, 128);
  EXPECT_EQ(l.quant_bytes(), 128u);
  EXPECT_EQ(l.groups(), 4u);
  EXPECT_EQ(l.row_bytes(), 128u + 8u);
  l = *RowLayout::Create({QuantType::kInt8, 0}, 100);
  EXPECT_EQ(l.group(), 100u);
  EXPECT_EQ(l.row_bytes(), 102u);
  l = *RowLayout::Create({QuantType::kQ4, 64}, 3072);
  EXPECT_EQ(l.quant_bytes(), 1536u);
  EXPECT_EQ(l.row_bytes(), 1536u + 96u);
}

TEST(QuantFormat, BadFormatsNameTheValue) {
  auto err = [](QuantFormat f, size_t h) {
    return std::string(RowLayout::Create(f, h).status().message());
  };
  EXPECT_THAT(err({QuantType::kInt8, 48}, 96), HasSubstr("int8 group 48"));
  EXPECT_THAT(err({QuantType::kInt8, 64}, 96), HasSubstr("int8 group 64"));
  EXPECT_THAT(err({QuantType::kQ4, 128}, 256), HasSubstr("q4 group 128"));
  EXPECT_THAT(err({QuantType::kQ4, 32}, 48), HasSubstr("q4 group 32"));
  EXPECT_THAT(err({QuantType::kQ4, 0}, 128), HasSubstr("q4 group 128"));  // the whole row
  EXPECT_THAT(err({QuantType::kInt8, 32}, 0), HasSubstr("hidden_size must be positive"));
  EXPECT_EQ(quant::ParseQuantType("int4").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Quantize, RoundTripAgainstFloat64) {
  std::mt19937_64 rng(7);
  for (QuantType type : {QuantType::kInt8, QuantType::kQ4}) {
    for (size_t h : {32, 64, 96, 128, 192, 256, 100, 13}) {
      for (size_t group : Groups(type, h)) {
        const RowLayout l = *RowLayout::Create({type, group}, h);
        const std::vector<float> w = Gaussian(rng, h, 0.02f);
        std::vector<uint8_t> row(l.row_bytes());
        ASSERT_TRUE(quant::QuantizeRow(l, w.data(), row.data()).ok());
        std::vector<float> back(h);
        quant::DequantizeRow(l, row.data(), back.data());
        const std::string where =
            absl::StrFormat("%s h %d group %d", QuantTypeName(type), h, l.group());
        for (size_t g = 0; g < l.groups(); ++g) {
          uint16_t bits;
          std::memcpy(&bits, row.data() + l.scale_offset() + 2 * g, 2);
          const double scale = Float16ToFloat(bits);
          double amax = 0, sse = 0, sse_absmax = 0;
          for (size_t i = g * l.group(); i < (g + 1) * l.group(); ++i) {
            amax = std::max(amax, std::fabs(double{w[i]}));
            EXPECT_EQ(back[i], quant::WeightAt(l, row.data(), i)) << where;
            const double e = double{w[i]} - double{back[i]};
            sse += e * e;
          }
          if (type == QuantType::kInt8) {
            // Round to nearest against the stored scale: half a step.
            for (size_t i = g * l.group(); i < (g + 1) * l.group(); ++i) {
              EXPECT_LE(std::fabs(double{w[i]} - back[i]), scale * 0.5 + 1e-12)
                  << where << " weight " << i;
            }
          } else {
            // The search beats (or ties) plain rounding against max |w| / 7.
            const double d = amax / 7.0;
            for (size_t i = g * l.group(); i < (g + 1) * l.group(); ++i) {
              const double q = std::clamp(std::nearbyint(w[i] / d), -8.0, 7.0);
              sse_absmax += (w[i] - q * d) * (w[i] - q * d);
            }
            EXPECT_LE(sse, sse_absmax * 1.0001 + 1e-12) << where << " group " << g;
          }
        }
      }
    }
  }
}

TEST(Quantize, Q4SearchLowersTheErrorOverall) {
  std::mt19937_64 rng(11);
  const RowLayout l = *RowLayout::Create({QuantType::kQ4, 32}, 4096);
  const std::vector<float> w = Gaussian(rng, 4096, 1.0f);
  std::vector<uint8_t> row(l.row_bytes());
  ASSERT_TRUE(quant::QuantizeRow(l, w.data(), row.data()).ok());
  double sse = 0, sse_absmax = 0;
  for (size_t g = 0; g < l.groups(); ++g) {
    double amax = 0;
    for (size_t i = g * 32; i < g * 32 + 32; ++i) amax = std::max(amax, std::fabs(double{w[i]}));
    for (size_t i = g * 32; i < g * 32 + 32; ++i) {
      const double e = w[i] - quant::WeightAt(l, row.data(), i);
      sse += e * e;
      const double q = std::clamp(std::nearbyint(w[i] / (amax / 7.0)), -8.0, 7.0);
      sse_absmax += (w[i] - q * amax / 7.0) * (w[i] - q * amax / 7.0);
    }
  }
  EXPECT_LT(sse, 0.9 * sse_absmax);
}

TEST(Quantize, BadWeightsWriteNothing) {
  for (QuantType type : {QuantType::kInt8, QuantType::kQ4}) {
    const RowLayout l = *RowLayout::Create({type, 32}, 64);
    std::vector<uint8_t> row(l.row_bytes(), 0xAB);
    const std::vector<uint8_t> before = row;
    std::vector<float> w(64, 0.5f);
    w[40] = std::numeric_limits<float>::quiet_NaN();
    absl::Status s = quant::QuantizeRow(l, w.data(), row.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("weight 40"));
    EXPECT_EQ(row, before);
    w[40] = std::numeric_limits<float>::infinity();
    EXPECT_THAT(std::string(quant::QuantizeRow(l, w.data(), row.data()).message()),
                HasSubstr("weight 40"));
    EXPECT_EQ(row, before);
    w[40] = 0.5f;
    w[50] = 3e38f;  // the scale overflows float16
    s = quant::QuantizeRow(l, w.data(), row.data());
    EXPECT_THAT(std::string(s.message()), HasSubstr("group 1"));
    EXPECT_THAT(std::string(s.message()), HasSubstr("outside float16's range"));
    EXPECT_EQ(row, before);
    std::fill(w.begin(), w.end(), 1e-12f);  // the scale rounds to 0
    s = quant::QuantizeRow(l, w.data(), row.data());
    EXPECT_THAT(std::string(s.message()), HasSubstr("group 0"));
    EXPECT_EQ(row, before);
    std::fill(w.begin(), w.end(), 0.0f);  // all zero: scale 0, fine
    ASSERT_TRUE(quant::QuantizeRow(l, w.data(), row.data()).ok());
    EXPECT_EQ(quant::WeightAt(l, row.data(), 5), 0.0f);
  }
}

// A quantized layer: rows and their dequantized float64 values.
struct QLayer {
  RowLayout layout;
  size_t h, i;
  bool gated;
  std::vector<uint8_t> gate, up, down;       // [I] rows of layout.row_bytes()
  std::vector<double> gate_w, up_w, down_w;  // [I, H] dequantized
};

QLayer MakeLayer(std::mt19937_64& rng, QuantFormat f, size_t h, size_t i, bool gated) {
  QLayer q{*RowLayout::Create(f, h), h, i, gated, {}, {}, {}, {}, {}, {}};
  const size_t rb = q.layout.row_bytes();
  auto fill = [&](std::vector<uint8_t>* rows, std::vector<double>* deq, float sigma) {
    rows->assign(i * rb, 0);
    deq->assign(i * h, 0.0);
    for (size_t r = 0; r < i; ++r) {
      const std::vector<float> w = Gaussian(rng, h, sigma);
      EXPECT_TRUE(quant::QuantizeRow(q.layout, w.data(), rows->data() + r * rb).ok());
      for (size_t c = 0; c < h; ++c) {
        (*deq)[r * h + c] = quant::WeightAt(q.layout, rows->data() + r * rb, c);
      }
    }
  };
  if (gated) fill(&q.gate, &q.gate_w, 0.5f);
  fill(&q.up, &q.up_w, 0.5f);
  fill(&q.down, &q.down_w, 0.5f);
  return q;
}

// y[t] = sum over set j of silu(g_j . x_t) (u_j . x_t) d_j (float64), and the
// sum of |terms| per output (the scale of float32 rounding).
void Reference(const QLayer& q, const std::vector<uint32_t>& set, const std::vector<float>& x,
               size_t tokens, std::vector<double>* y, std::vector<double>* mag) {
  y->assign(tokens * q.h, 0.0);
  mag->assign(tokens * q.h, 0.0);
  for (size_t t = 0; t < tokens; ++t) {
    for (uint32_t j : set) {
      double g = 0, u = 0, ga = 0, ua = 0;
      for (size_t c = 0; c < q.h; ++c) {
        const double xc = x[t * q.h + c];
        if (q.gated) g += q.gate_w[j * q.h + c] * xc, ga += std::fabs(q.gate_w[j * q.h + c] * xc);
        u += q.up_w[j * q.h + c] * xc;
        ua += std::fabs(q.up_w[j * q.h + c] * xc);
      }
      const double a = q.gated ? g / (1.0 + std::exp(-g)) * u : u / (1.0 + std::exp(-u));
      const double am = q.gated ? (ga + 1.0) * ua + std::fabs(a) : ua + std::fabs(a);
      for (size_t c = 0; c < q.h; ++c) {
        (*y)[t * q.h + c] += a * q.down_w[j * q.h + c];
        (*mag)[t * q.h + c] += am * std::fabs(q.down_w[j * q.h + c]);
      }
    }
  }
}

TEST(QuantForward, EveryLevelThreadsGroupsAndTokensMatchFloat64) {
  std::mt19937_64 rng(2026);
  int cases = 0;
  for (QuantType type : {QuantType::kInt8, QuantType::kQ4}) {
    for (size_t h : {64, 96, 128, 256, 100, 40, 1088}) {  // 1088: > 16 groups of 32 or 64
      for (size_t group : Groups(type, h)) {
        const size_t inter = 48 + rng() % 40;
        const bool gated = (rng() % 4) != 0;
        const QLayer q = MakeLayer(rng, {type, group}, h, inter, gated);
        const size_t rb = q.layout.row_bytes();
        std::vector<uint32_t> set;
        for (uint32_t j = 0; j < inter; ++j) {
          if (rng() % 3 != 0) set.push_back(j);
        }
        for (size_t tokens : {1, 2, 3, 5, 8, 16}) {
          const std::vector<float> x = Gaussian(rng, tokens * h, 1.0f);
          std::vector<double> ref, mag, ref_all, mag_all;
          Reference(q, set, x, tokens, &ref, &mag);
          std::vector<uint32_t> all(inter);
          for (uint32_t j = 0; j < inter; ++j) all[j] = j;
          Reference(q, all, x, tokens, &ref_all, &mag_all);
          for (SimdLevel level : SupportedSimdLevels()) {
            for (int threads : {1, 2}) {
              mlp::QuantNeuronRows rows{
                  {type, group}, h, inter, gated ? q.gate.data() : nullptr, rb, q.up.data(), rb,
                  q.down.data(), rb};
              mlp::ForwardOptions o;
              o.simd = level;
              o.num_threads = threads;
              o.activation = mlp::Activation::kSiLU;
              mlp::Workspace ws;
              for (bool indexed : {true, false}) {
                std::vector<float> y(tokens * h, 7.0f);
                const absl::Status s =
                    indexed ? mlp::ForwardIndexedQuant(rows, set, {x.data(), tokens, h},
                                                       {y.data(), tokens, h}, o, &ws)
                            : mlp::ForwardQuant(rows, {x.data(), tokens, h}, {y.data(), tokens, h},
                                                o, &ws);
                ASSERT_TRUE(s.ok()) << s;
                const std::vector<double>& r = indexed ? ref : ref_all;
                const std::vector<double>& m = indexed ? mag : mag_all;
                for (size_t k = 0; k < tokens * h; ++k) {
                  ASSERT_LE(std::fabs(y[k] - r[k]), 2e-6 * m[k] + 1e-6)
                      << QuantTypeName(type) << " h " << h << " group " << q.layout.group() << " I "
                      << inter << (gated ? " gated" : " gate-less") << " tokens " << tokens << " "
                      << SimdLevelName(level) << " threads " << threads
                      << (indexed ? " indexed" : " dense") << " output " << k << ": " << y[k]
                      << " vs " << r[k];
                }
                ++cases;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 200);
}

// nn.Linear's layout: down is [H, I], each of its H rows quantized along I.
TEST(QuantForward, LinearLayoutMatchesFloat64) {
  std::mt19937_64 rng(77);
  int cases = 0;
  for (QuantType type : {QuantType::kInt8, QuantType::kQ4}) {
    for (size_t group : {size_t{32}, size_t{64}, size_t{0}}) {
      if (type == QuantType::kQ4 && group == 0) continue;
      const size_t h = 128, inter = 192;
      for (bool gated : {true, false}) {
        const QLayer q = MakeLayer(rng, {type, group}, h, inter, gated);
        const RowLayout dl = *RowLayout::Create({type, group}, inter);
        // down as nn.Linear keeps it: [H, I], row c = output c's weights.
        std::vector<uint8_t> down_rows(h * dl.row_bytes());
        std::vector<double> down_w(h * inter);
        for (size_t c = 0; c < h; ++c) {
          const std::vector<float> w = Gaussian(rng, inter, 0.5f);
          uint8_t* row = down_rows.data() + c * dl.row_bytes();
          ASSERT_TRUE(quant::QuantizeRow(dl, w.data(), row).ok());
          for (size_t j = 0; j < inter; ++j) down_w[c * inter + j] = quant::WeightAt(dl, row, j);
        }
        for (size_t tokens : {1, 3, 16}) {
          for (bool rounded : {false, true}) {
            std::vector<float> x = Gaussian(rng, tokens * h, 1.0f);
            std::vector<float> xin = x;  // what the kernels multiply: x, or x rounded
            if (rounded) {
              std::vector<uint8_t> buf(mlp::internal::Int8XBytes(h) + 64);
              void* at = buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
              for (size_t t = 0; t < tokens; ++t) {
                const mlp::internal::Int8X r = mlp::internal::QuantizeX(x.data() + t * h, h, at);
                std::copy(r.dequant, r.dequant + h, xin.begin() + t * h);
              }
            }
            std::vector<double> ref(tokens * h, 0.0), mag(tokens * h, 0.0), hround(tokens * h, 0.0);
            for (size_t t = 0; t < tokens; ++t) {
              std::vector<double> act(inter);
              for (size_t j = 0; j < inter; ++j) {
                double g = 0, u = 0;
                for (size_t c = 0; c < h; ++c) {
                  if (gated) g += q.gate_w[j * h + c] * xin[t * h + c];
                  u += q.up_w[j * h + c] * xin[t * h + c];
                }
                const double a = gated ? g / (1.0 + std::exp(-g)) * u : u / (1.0 + std::exp(-u));
                act[j] = a;
                for (size_t c = 0; c < h; ++c) {
                  ref[t * h + c] += a * down_w[c * inter + j];
                  mag[t * h + c] += std::fabs(a * down_w[c * inter + j]) + std::fabs(a);
                }
              }
              // With x rounded, h is rounded too (per block of 32 neurons):
              // each term may move by up to a step of its block.
              if (rounded) {
                for (size_t b = 0; b < inter / 32; ++b) {
                  double m = 0;
                  for (size_t j = 32 * b; j < 32 * b + 32; ++j) m = std::max(m, std::fabs(act[j]));
                  for (size_t c = 0; c < h; ++c) {
                    for (size_t j = 32 * b; j < 32 * b + 32; ++j) {
                      hround[t * h + c] += std::fabs(down_w[c * inter + j]) * m / 127.0;
                    }
                  }
                }
              }
            }
            for (SimdLevel level : SupportedSimdLevels()) {
              for (int threads : {1, 2}) {
                mlp::ForwardOptions o;
                o.simd = level;
                o.num_threads = threads;
                o.quantize_x = rounded;
                mlp::Workspace ws;
                std::vector<float> y(tokens * h, 7.0f);
                const mlp::QuantLinearWeights w{{type, group}, h,
                                                inter,         gated ? q.gate.data() : nullptr,
                                                q.up.data(),   down_rows.data()};
                const absl::Status s = mlp::ForwardLinearQuant(w, {x.data(), tokens, h},
                                                               {y.data(), tokens, h}, o, &ws);
                ASSERT_TRUE(s.ok()) << s;
                for (size_t k = 0; k < tokens * h; ++k) {
                  ASSERT_LE(std::fabs(y[k] - ref[k]), 2e-6 * mag[k] + hround[k] + 1e-6)
                      << QuantTypeName(type) << " group " << group << (gated ? " gated" : "")
                      << (rounded ? " quantize_x" : "") << " tokens " << tokens << " "
                      << SimdLevelName(level) << " threads " << threads << " output " << k << ": "
                      << y[k] << " vs " << ref[k];
                }
                ++cases;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 30);
  // A group that divides H but not I is refused, naming down's rows.
  std::vector<float> x(64, 1.0f), y(64, 7.0f);
  std::vector<uint8_t> rows(4096);
  mlp::Workspace ws;
  const mlp::QuantLinearWeights bad{
      {QuantType::kInt8, 32}, 64, 48, nullptr, rows.data(), rows.data()};
  const absl::Status s =
      mlp::ForwardLinearQuant(bad, {x.data(), 1, 64}, {y.data(), 1, 64}, {}, &ws);
  EXPECT_THAT(std::string(s.message()), HasSubstr("intermediate_size 48"));
  for (float v : y) ASSERT_EQ(v, 7.0f);
}

// quantize_x: x rounded to int8 per block of 32; every level (the VNNI
// integer dot where the CPU has it, the float kernels on the rounded x
// elsewhere) matches float64 on the dequantized weights and the rounded x.
TEST(QuantForward, RoundedXEveryLevelMatchesFloat64OnTheRoundedX) {
  std::mt19937_64 rng(404);
  int cases = 0, integer_cases = 0;
  for (QuantType type : {QuantType::kInt8, QuantType::kQ4}) {
    for (size_t h : {64, 96, 256, 1088}) {
      for (size_t group : Groups(type, h)) {
        const size_t inter = 40 + rng() % 30;
        const bool gated = (rng() % 4) != 0;
        const QLayer q = MakeLayer(rng, {type, group}, h, inter, gated);
        const size_t rb = q.layout.row_bytes();
        std::vector<uint32_t> set;
        for (uint32_t j = 0; j < inter; ++j) {
          if (rng() % 3 != 0) set.push_back(j);
        }
        for (size_t tokens : {1, 2, 5, 16}) {
          std::vector<float> x = Gaussian(rng, tokens * h, 1.0f);
          if (tokens > 1) std::fill(x.begin() + h, x.begin() + h + 32, 0.0f);  // a zero block
          // The rounded x, as QuantizeX rounds it.
          std::vector<float> xr(tokens * h);
          std::vector<uint8_t> buf(mlp::internal::Int8XBytes(h) + 64);
          void* at = buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
          for (size_t t = 0; t < tokens; ++t) {
            const mlp::internal::Int8X r = mlp::internal::QuantizeX(x.data() + t * h, h, at);
            for (size_t c = 0; c < h; ++c) {
              xr[t * h + c] = static_cast<float>(r.q[c]) * r.scale[c / 32];
              ASSERT_EQ(r.dequant[c], xr[t * h + c]);
              ASSERT_LE(std::fabs(xr[t * h + c] - x[t * h + c]), r.scale[c / 32] * 0.5f + 1e-7f);
            }
          }
          std::vector<double> ref, mag;
          Reference(q, set, xr, tokens, &ref, &mag);
          for (SimdLevel level : SupportedSimdLevels()) {
            const bool integer =
                mlp::internal::SelectQuantKernels(type, level).dot_int8 != nullptr;
            for (int threads : {1, 2}) {
              mlp::QuantNeuronRows rows{
                  {type, group}, h, inter, gated ? q.gate.data() : nullptr, rb, q.up.data(), rb,
                  q.down.data(), rb};
              mlp::ForwardOptions o;
              o.simd = level;
              o.num_threads = threads;
              o.quantize_x = true;
              mlp::Workspace ws;
              std::vector<float> y(tokens * h, 7.0f);
              const absl::Status st = mlp::ForwardIndexedQuant(rows, set, {x.data(), tokens, h},
                                                               {y.data(), tokens, h}, o, &ws);
              ASSERT_TRUE(st.ok()) << st;
              for (size_t k = 0; k < tokens * h; ++k) {
                ASSERT_LE(std::fabs(y[k] - ref[k]), 2e-6 * mag[k] + 1e-6)
                    << QuantTypeName(type) << " h " << h << " group " << q.layout.group()
                    << (gated ? " gated" : " gate-less") << " tokens " << tokens << " "
                    << SimdLevelName(level) << (integer ? " (integer dot)" : "") << " threads "
                    << threads << " output " << k << ": " << y[k] << " vs " << ref[k];
              }
              ++cases;
              integer_cases += integer;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(cases, 100);
  if (HasCpuFeature(CpuFeature::kAvx512Vnni)) {
    EXPECT_GT(integer_cases, 20);
  }
  // H not a multiple of 32 is refused, y untouched.
  std::mt19937_64 r2(5);
  const QLayer q = MakeLayer(r2, {QuantType::kInt8, 0}, 40, 8, true);
  const size_t rb = q.layout.row_bytes();
  mlp::QuantNeuronRows rows{{QuantType::kInt8, 0}, 40, 8, q.gate.data(), rb, q.up.data(), rb,
                            q.down.data(),         rb};
  std::vector<float> x(40, 1.0f), y(40, 7.0f);
  mlp::ForwardOptions o;
  o.quantize_x = true;
  mlp::Workspace ws;
  const absl::Status st = mlp::ForwardQuant(rows, {x.data(), 1, 40}, {y.data(), 1, 40}, o, &ws);
  EXPECT_THAT(std::string(st.message()), HasSubstr("hidden_size 40 is not a multiple of 32"));
  for (float v : y) ASSERT_EQ(v, 7.0f);
}

TEST(QuantForward, LevelsSelectTheirKernels) {
  for (SimdLevel level : SupportedSimdLevels()) {
    for (QuantType type : {QuantType::kInt8, QuantType::kQ4}) {
      const mlp::internal::QuantKernels k = mlp::internal::SelectQuantKernels(type, level);
      EXPECT_EQ(k.level, Resolve(level) == SimdLevel::kAvx2 && !(HasCpuFeature(CpuFeature::kFma) &&
                                                                 HasCpuFeature(CpuFeature::kF16c))
                             ? SimdLevel::kScalar
                             : Resolve(level))
          << SimdLevelName(level);
    }
  }
}

TEST(QuantForward, BadArgumentsLeaveYAlone) {
  std::mt19937_64 rng(3);
  const QLayer q = MakeLayer(rng, {QuantType::kInt8, 32}, 64, 16, true);
  const size_t rb = q.layout.row_bytes();
  std::vector<float> x(64, 1.0f), y(64, 7.0f);
  mlp::Workspace ws;
  mlp::ForwardOptions o;
  mlp::QuantNeuronRows rows{{QuantType::kInt8, 32}, 64, 16, q.gate.data(), rb, q.up.data(), rb,
                            q.down.data(),          rb};
  auto fails = [&](const mlp::QuantNeuronRows& r, std::vector<uint32_t> idx, const char* want) {
    const absl::Status s =
        mlp::ForwardIndexedQuant(r, idx, {x.data(), 1, 64}, {y.data(), 1, 64}, o, &ws);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << want;
    EXPECT_THAT(std::string(s.message()), HasSubstr(want));
    for (float v : y) ASSERT_EQ(v, 7.0f) << want;
  };
  mlp::QuantNeuronRows bad = rows;
  bad.format.group = 48;
  fails(bad, {1}, "int8 group 48");
  bad = rows;
  bad.up_stride = rb - 1;
  fails(bad, {1}, "up row stride");
  bad = rows;
  bad.down = nullptr;
  fails(bad, {1}, "down rows are null");
  fails(rows, {3, 3}, "ascending");
  fails(rows, {16}, "out of range");
  const std::vector<uint16_t> x16(64, 0);
  const absl::Status s = mlp::ForwardIndexedQuant(
      rows, {{1}}, {x16.data(), 1, 64, DType::kBFloat16}, {y.data(), 1, 64}, o, &ws);
  EXPECT_THAT(std::string(s.message()), HasSubstr("x is bfloat16"));
}

}  // namespace
}  // namespace sparse_mlp
