// Quantized rows through the cache (WeightCacheOptions::quant), the layer
// step and ModelCache: the differential update keeps every slot equal to
// its neuron's quantized rows and scales (Verify, and byte for byte against
// a cache rebuilt from scratch for the same mask), the step's y matches a
// float64 forward on the dequantized weights and CacheForward bit for bit,
// and bad options are refused naming the value. Random masks, fixed seeds.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache/model_cache.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "flash/flash_cache.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "quant/format.h"
#include "quant/quantize.h"
#include "step/flash_step.h"
#include "step/layer_step.h"
#include "step/mask_step.h"
#include "store/bundle_format.h"
#include "store/bundle_writer.h"

namespace sparse_mlp {
namespace {

using quant::QuantType;
using ::testing::HasSubstr;

struct QWeights {
  quant::RowLayout layout;
  std::vector<uint8_t> gate, up, down;  // [I, row_bytes] each
};

QWeights MakeWeights(std::mt19937_64& rng, quant::QuantFormat f, size_t h, size_t i) {
  QWeights w{*quant::RowLayout::Create(f, h), {}, {}, {}};
  std::normal_distribution<float> d(0.0f, 0.3f);
  const size_t rb = w.layout.row_bytes();
  for (std::vector<uint8_t>* rows : {&w.gate, &w.up, &w.down}) {
    rows->assign(i * rb, 0);
    std::vector<float> row(h);
    for (size_t r = 0; r < i; ++r) {
      for (float& v : row) v = d(rng);
      EXPECT_TRUE(quant::QuantizeRow(w.layout, row.data(), rows->data() + r * rb).ok());
    }
  }
  return w;
}

diff::NeuronMask RandomMask(std::mt19937_64& rng, size_t i, double p) {
  std::vector<uint8_t> bytes(i);
  std::bernoulli_distribution on(p);
  for (uint8_t& b : bytes) b = on(rng) ? 1 : 0;
  return *diff::NeuronMask::FromBytes(bytes);
}

cache::WeightCacheOptions Options(quant::QuantFormat f, size_t h, size_t i,
                                  cache::PackedLayout layout, cache::SourceOwnership own,
                                  int threads) {
  cache::WeightCacheOptions o;
  o.hidden_size = h;
  o.intermediate_size = i;
  o.quant = f;
  o.down_layout = cache::DownLayout::kNeuronMajor;
  o.layout = layout;
  o.ownership = own;
  o.num_threads = threads;
  return o;
}

// Each active neuron's rows in `a` equal its rows in `b` (slots may differ).
std::string SameRowsPerNeuron(const cache::WeightCache& a, const cache::WeightCache& b) {
  if (a.num_active() != b.num_active()) return "different active counts";
  const size_t rb = *cache::RowBytesFor([&] {
    cache::WeightCacheOptions o;
    o.hidden_size = a.hidden_size();
    o.quant = a.quant();
    return o;
  }());
  std::vector<uint32_t> slot_in_b(a.intermediate_size(), 0xFFFFFFFFu);
  for (size_t s = 0; s < b.num_active(); ++s) slot_in_b[b.active_indices()[s]] = s;
  const cache::MatrixView va[3] = {a.gate(), a.up(), a.down_rows()};
  const cache::MatrixView vb[3] = {b.gate(), b.up(), b.down_rows()};
  for (size_t s = 0; s < a.num_active(); ++s) {
    const uint32_t n = a.active_indices()[s];
    const size_t t = slot_in_b[n];
    if (t == 0xFFFFFFFFu) return absl::StrFormat("neuron %d missing from the rebuild", n);
    for (int p = 0; p < 3; ++p) {
      const auto* ra = static_cast<const uint8_t*>(va[p].data) + s * va[p].row_stride;
      const auto* rb_ = static_cast<const uint8_t*>(vb[p].data) + t * vb[p].row_stride;
      if (std::memcmp(ra, rb_, rb) != 0) {
        return absl::StrFormat("neuron %d part %d differs from the rebuild", n, p);
      }
    }
  }
  return "";
}

TEST(QuantCache, DifferentialUpdatesEqualARebuild) {
  std::mt19937_64 rng(5);
  for (quant::QuantFormat f :
       {quant::QuantFormat{QuantType::kInt8, 32}, quant::QuantFormat{QuantType::kInt8, 0},
        quant::QuantFormat{QuantType::kQ4, 32}, quant::QuantFormat{QuantType::kQ4, 64}}) {
    const size_t h = 128, i = 120;
    const QWeights w = MakeWeights(rng, f, h, i);
    for (cache::PackedLayout layout :
         {cache::PackedLayout::kSplit, cache::PackedLayout::kInterleavedGateUp,
          cache::PackedLayout::kFusedRows}) {
      for (cache::SourceOwnership own :
           {cache::SourceOwnership::kCopy, cache::SourceOwnership::kBorrow}) {
        for (int threads : {1, 2}) {
          const cache::WeightCacheOptions o = Options(f, h, i, layout, own, threads);
          diff::NeuronMask mask = RandomMask(rng, i, 0.4);
          auto c = cache::WeightCache::Create(o, {w.gate.data(), w.up.data(), w.down.data()}, mask);
          ASSERT_TRUE(c.ok()) << c.status();
          for (int step = 0; step < 25; ++step) {
            mask = RandomMask(rng, i, 0.1 + 0.05 * (step % 10));
            ASSERT_TRUE(c->Update(mask).ok());
            const std::string where = absl::StrFormat(
                "%s group %d layout %s %s threads %d step %d", quant::QuantTypeName(f.type),
                w.layout.group(), cache::PackedLayoutName(layout),
                own == cache::SourceOwnership::kCopy ? "copy" : "borrow", threads, step);
            ASSERT_TRUE(c->Verify().ok()) << where << ": " << c->Verify();
            auto rebuilt =
                cache::WeightCache::Create(o, {w.gate.data(), w.up.data(), w.down.data()}, mask);
            ASSERT_TRUE(rebuilt.ok());
            ASSERT_EQ(SameRowsPerNeuron(*c, *rebuilt), "") << where;
          }
        }
      }
    }
  }
}

// float64 SiLU-gated MLP over `set` on the dequantized rows.
std::vector<double> Reference(const QWeights& w, size_t h, const std::vector<uint32_t>& set,
                              const std::vector<float>& x) {
  const size_t rb = w.layout.row_bytes();
  std::vector<double> y(h, 0.0);
  for (uint32_t j : set) {
    double g = 0, u = 0;
    for (size_t c = 0; c < h; ++c) {
      g += quant::WeightAt(w.layout, w.gate.data() + j * rb, c) * double{x[c]};
      u += quant::WeightAt(w.layout, w.up.data() + j * rb, c) * double{x[c]};
    }
    const double a = g / (1.0 + std::exp(-g)) * u;
    for (size_t c = 0; c < h; ++c) y[c] += a * quant::WeightAt(w.layout, w.down.data() + j * rb, c);
  }
  return y;
}

TEST(QuantCache, LayerStepMatchesFloat64AndCacheForward) {
  std::mt19937_64 rng(9);
  for (quant::QuantFormat f :
       {quant::QuantFormat{QuantType::kInt8, 32}, quant::QuantFormat{QuantType::kQ4, 32}}) {
    const size_t h = 96, i = 80;
    const QWeights w = MakeWeights(rng, f, h, i);
    for (cache::PackedLayout layout :
         {cache::PackedLayout::kSplit, cache::PackedLayout::kFusedRows}) {
      const cache::WeightCacheOptions o =
          Options(f, h, i, layout, cache::SourceOwnership::kCopy, 2);
      auto c = cache::WeightCache::Create(o, {w.gate.data(), w.up.data(), w.down.data()},
                                          RandomMask(rng, i, 0.3));
      ASSERT_TRUE(c.ok());
      mlp::Workspace ws;
      mlp::ForwardOptions fo;
      fo.num_threads = 2;
      std::normal_distribution<float> d(0.0f, 1.0f);
      for (int step = 0; step < 12; ++step) {
        const diff::NeuronMask mask = RandomMask(rng, i, 0.35);
        std::vector<float> x(h), y(h), y2(h);
        for (float& v : x) v = d(rng);
        ASSERT_TRUE(step::LayerStep(&*c, mask, {x.data(), 1, h}, {y.data(), 1, h}, fo, &ws).ok());
        ASSERT_TRUE(c->Verify().ok());
        const std::vector<double> ref = Reference(w, h, mask.ToIndices(), x);
        double scale = 1e-6;
        for (double v : ref) scale = std::max(scale, std::fabs(v));
        for (size_t k = 0; k < h; ++k) {
          ASSERT_LE(std::fabs(y[k] - ref[k]), 1e-5 * scale)
              << quant::QuantTypeName(f.type) << " step " << step << " output " << k;
        }
        ASSERT_TRUE(step::CacheForward(*c, {x.data(), 1, h}, {y2.data(), 1, h}, fo, &ws).ok());
        ASSERT_EQ(std::memcmp(y.data(), y2.data(), h * sizeof(float)), 0) << "step " << step;
      }
    }
  }
}

TEST(QuantCache, ModelCacheUpdateManyKeepsEveryLayerExact) {
  std::mt19937_64 rng(21);
  const quant::QuantFormat f{QuantType::kInt8, 64};
  const size_t h = 128, i = 64, layers = 3;
  std::vector<QWeights> ws;
  std::vector<cache::MlpWeights> mw;
  for (size_t l = 0; l < layers; ++l) ws.push_back(MakeWeights(rng, f, h, i));
  for (const QWeights& w : ws) mw.push_back({w.gate.data(), w.up.data(), w.down.data()});
  cache::ModelCacheOptions mo;
  mo.num_layers = layers;
  mo.layer.hidden_size = h;
  mo.layer.intermediate_size = i;
  mo.layer.quant = f;
  mo.layer.down_layout = cache::DownLayout::kNeuronMajor;
  mo.layer.num_threads = 2;
  auto model = cache::ModelCache::Create(mo, mw);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->footprint().weight_bytes, layers * 3 * i * ws[0].layout.row_bytes());
  for (int step = 0; step < 10; ++step) {
    std::vector<diff::NeuronMask> masks;
    for (size_t l = 0; l < layers; ++l) masks.push_back(RandomMask(rng, i, 0.5));
    std::vector<cache::LayerMask> updates;
    for (size_t l = 0; l < layers; ++l) updates.push_back({l, &masks[l]});
    ASSERT_TRUE((*model)->UpdateMany(updates).ok());
    for (size_t l = 0; l < layers; ++l) {
      ASSERT_TRUE((*(*model)->layer(l))->Verify().ok()) << "layer " << l << " step " << step;
    }
  }
}

TEST(QuantCache, BadOptionsNameTheValue) {
  std::mt19937_64 rng(1);
  const QWeights w = MakeWeights(rng, {QuantType::kInt8, 32}, 64, 8);
  cache::WeightCacheOptions o = Options({QuantType::kInt8, 48}, 64, 8, cache::PackedLayout::kSplit,
                                        cache::SourceOwnership::kCopy, 1);
  const diff::NeuronMask m(8);
  auto c = cache::WeightCache::Create(o, {w.gate.data(), w.up.data(), w.down.data()}, m);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("int8 group 48"));
  o.quant = quant::QuantFormat{QuantType::kInt8, 32};
  o.down_layout = cache::DownLayout::kHiddenMajor;
  c = cache::WeightCache::Create(o, {w.gate.data(), w.up.data(), w.down.data()}, m);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("neuron-major down"));
  // x of another type than float32 is refused by the step, cache unchanged.
  o.down_layout = cache::DownLayout::kNeuronMajor;
  c = cache::WeightCache::Create(o, {w.gate.data(), w.up.data(), w.down.data()}, m);
  ASSERT_TRUE(c.ok());
  std::vector<uint16_t> x(64, 0);
  std::vector<float> y(64, 7.0f);
  mlp::Workspace ws;
  const absl::Status s =
      step::LayerStep(&*c, *diff::NeuronMask::FromIndices(8, {1, 2}),
                      {x.data(), 1, 64, DType::kBFloat16}, {y.data(), 1, 64}, {}, &ws);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c->num_active(), 0u);
  for (float v : y) ASSERT_EQ(v, 7.0f);
}

// Gate-first selection over a quantized gate: the activations match float64
// on the dequantized gate, the selection is each token's top k of them, and
// the cached step (a gate-less cache of quantized up / down rows) and the
// direct-index forward over the same selection match float64.
TEST(QuantGateFirst, SelectsByTheQuantizedGateAndMatchesFloat64) {
  std::mt19937_64 rng(61);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (quant::QuantFormat f :
       {quant::QuantFormat{QuantType::kInt8, 32}, quant::QuantFormat{QuantType::kInt8, 0},
        quant::QuantFormat{QuantType::kQ4, 64}}) {
    const size_t h = 128, i = 96, k = 30;
    const QWeights w = MakeWeights(rng, f, h, i);
    const size_t rb = w.layout.row_bytes();
    auto g = step::GateFirst::CreateQuant(f, h, i, w.gate.data(), rb);
    ASSERT_TRUE(g.ok()) << g.status();
    cache::WeightCacheOptions o =
        Options(f, h, i, cache::PackedLayout::kSplit, cache::SourceOwnership::kBorrow, 2);
    o.has_gate = false;
    auto c =
        cache::WeightCache::Create(o, {nullptr, w.up.data(), w.down.data()}, diff::NeuronMask(i));
    ASSERT_TRUE(c.ok()) << c.status();
    auto direct = step::GateFirst::CreateQuant(f, h, i, w.gate.data(), rb);
    ASSERT_TRUE(direct.ok());
    const mlp::QuantNeuronRows up_down{f, h, i, nullptr, 0, w.up.data(), rb, w.down.data(), rb};
    mlp::Workspace ws;
    mlp::ForwardOptions fo;
    fo.num_threads = 2;
    for (int step = 0; step < 6; ++step) {
      std::vector<float> x(h), act(i), y(h), y2(h);
      for (float& v : x) v = d(rng);
      ASSERT_TRUE(g->Activations({x.data(), 1, h}, fo, &ws, absl::MakeSpan(act)).ok());
      std::vector<std::pair<float, uint32_t>> order;
      for (uint32_t j = 0; j < i; ++j) {
        double gd = 0;
        for (size_t c2 = 0; c2 < h; ++c2) {
          gd += quant::WeightAt(w.layout, w.gate.data() + j * rb, c2) * double{x[c2]};
        }
        const double a = gd / (1.0 + std::exp(-gd));
        ASSERT_NEAR(act[j], a, 1e-5 * (1.0 + std::fabs(a))) << "neuron " << j;
        order.push_back({-std::fabs(act[j]), j});
      }
      std::sort(order.begin(), order.end());
      std::vector<uint32_t> want;
      for (size_t q = 0; q < k; ++q) want.push_back(order[q].second);
      std::sort(want.begin(), want.end());
      const step::Selection sel{step::Selection::Kind::kTopK, k, 0.f};
      ASSERT_TRUE(g->Step(&*c, sel, {x.data(), 1, h}, {y.data(), 1, h}, fo, &ws).ok());
      ASSERT_EQ(g->mask().ToIndices(), want) << QuantTypeName(f.type) << " step " << step;
      ASSERT_TRUE(c->Verify().ok());
      ASSERT_TRUE(direct->Forward(up_down, sel, {x.data(), 1, h}, {y2.data(), 1, h}, fo, &ws).ok());
      ASSERT_EQ(direct->mask().ToIndices(), want);
      const std::vector<double> ref = Reference(w, h, want, x);
      double scale = 1e-6;
      for (double v : ref) scale = std::max(scale, std::fabs(v));
      for (size_t q = 0; q < h; ++q) {
        // The cache sums in slot order, the direct forward in neuron order.
        ASSERT_LE(std::fabs(y[q] - ref[q]), 1e-5 * scale) << "step " << step << " output " << q;
        ASSERT_LE(std::fabs(y2[q] - ref[q]), 1e-5 * scale) << "step " << step << " output " << q;
      }
    }
  }
  // Bad formats and strides name the value; bfloat16 x is refused.
  std::mt19937_64 r2(2);
  const QWeights w = MakeWeights(r2, {QuantType::kInt8, 32}, 64, 8);
  EXPECT_THAT(
      std::string(step::GateFirst::CreateQuant({QuantType::kQ4, 48}, 64, 8, w.gate.data(), 64)
                      .status()
                      .message()),
      HasSubstr("q4 group 48"));
  EXPECT_THAT(
      std::string(step::GateFirst::CreateQuant({QuantType::kInt8, 32}, 64, 8, w.gate.data(), 10)
                      .status()
                      .message()),
      HasSubstr("gate row stride 10 bytes"));
  auto g = step::GateFirst::CreateQuant({QuantType::kInt8, 32}, 64, 8, w.gate.data(),
                                        w.layout.row_bytes());
  ASSERT_TRUE(g.ok());
  std::vector<uint16_t> x16(64, 0);
  std::vector<float> act(8, 7.0f);
  mlp::Workspace ws;
  EXPECT_THAT(std::string(g->Activations({x16.data(), 1, 64, DType::kBFloat16}, {}, &ws,
                                         absl::MakeSpan(act))
                              .message()),
              HasSubstr("x is bfloat16"));
  for (float v : act) ASSERT_EQ(v, 7.0f);
}

TEST(QuantStore, HeaderRoundTripAndFlashStepMatchesFloat64) {
  std::mt19937_64 rng(33);
  const char* tmp = std::getenv("TEST_TMPDIR");
  const std::string dir = tmp != nullptr ? tmp : "/tmp";
  for (quant::QuantFormat f :
       {quant::QuantFormat{QuantType::kInt8, 32}, quant::QuantFormat{QuantType::kQ4, 64}}) {
    const size_t h = 128, i = 96, layers = 2;
    std::vector<QWeights> ws;
    for (size_t l = 0; l < layers; ++l) ws.push_back(MakeWeights(rng, f, h, i));
    store::BundleShape shape{DType::kFloat32, h, i, layers, true, 0, 0, f};
    const std::string path = absl::StrFormat("%s/quant_%s.spmlb", dir, QuantTypeName(f.type));
    {
      store::WriterOptions wo;
      wo.alignment = 512;
      auto w = store::BundleWriter::Create(path, shape, wo);
      ASSERT_TRUE(w.ok()) << w.status();
      EXPECT_EQ((*w)->layout().row_bytes(), ws[0].layout.row_bytes());
      // Rows given hidden-major are refused: a quantized down is per neuron.
      EXPECT_THAT(std::string((*w)->AppendLayer({ws[0].gate.data(), ws[0].up.data(),
                                                 ws[0].down.data(), false})
                                  .message()),
                  HasSubstr("neuron-major"));
      for (const QWeights& q : ws) {
        ASSERT_TRUE((*w)->AppendLayer({q.gate.data(), q.up.data(), q.down.data(), true}).ok());
      }
      ASSERT_TRUE((*w)->Finish().ok());
    }
    flash::FlashCacheOptions fo;
    fo.budget_bytes = size_t{24} << 20;  // the reader's staging, and every slot
    fo.window = 2;
    auto opened = flash::FlashModelCache::Open(path, fo);
    ASSERT_TRUE(opened.ok()) << opened.status();
    flash::FlashModelCache& fc = **opened;
    ASSERT_TRUE(fc.layout().shape().quant.has_value());
    EXPECT_EQ(fc.layout().shape().quant->type, f.type);
    EXPECT_EQ(fc.layout().shape().quant->group, f.group);
    // The header encodes and decodes to the same layout.
    std::vector<uint8_t> header(fc.layout().header_bytes());
    ASSERT_TRUE(fc.layout().EncodeHeader(absl::MakeSpan(header)).ok());
    auto decoded = store::BundleLayout::DecodeHeader(header, fc.layout().file_bytes(), path);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->bundle_bytes(), 3 * ws[0].layout.row_bytes());
    EXPECT_EQ(decoded->bundle_stride() % 512, 0u);
    mlp::Workspace mws;
    mlp::ForwardOptions o;
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (int step = 0; step < 8; ++step) {
      const size_t l = step % layers;
      const std::vector<uint32_t> mask = RandomMask(rng, i, 0.3).ToIndices();
      std::vector<float> x(h), y(h, 0.0f);
      for (float& v : x) v = d(rng);
      ASSERT_TRUE(
          step::FlashLayerStep(&fc, l, mask, {x.data(), 1, h}, {y.data(), 1, h}, o, &mws).ok());
      ASSERT_TRUE(fc.Verify(l).ok());
      const std::vector<double> ref = Reference(ws[l], h, mask, x);
      double scale = 1e-6;
      for (double v : ref) scale = std::max(scale, std::fabs(v));
      for (size_t k = 0; k < h; ++k) {
        ASSERT_LE(std::fabs(y[k] - ref[k]), 1e-5 * scale)
            << QuantTypeName(f.type) << " step " << step << " output " << k;
      }
    }
    // x of another type than float32 is refused before any read.
    std::vector<uint16_t> x16(h, 0);
    std::vector<float> y(h);
    EXPECT_THAT(
        std::string(step::FlashLayerStep(&fc, 0, {1, 2}, {x16.data(), 1, h, DType::kBFloat16},
                                         {y.data(), 1, h}, o, &mws)
                        .message()),
        HasSubstr("float32 with quantized rows"));
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace sparse_mlp
