// The README's model example: the MLP caches of a 4-layer model in one pool,
// updated as one batch, then a layer step, each layer's output checked
// against the direct-index forward. bazel run //examples:model_cache (also
// a test).
#include "cache/model_cache.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "diff/neuron_mask.h"
#include "mlp/mlp_forward.h"
#include "step/layer_step.h"

int main() {
  namespace cache = sparse_mlp::cache;
  namespace mlp = sparse_mlp::mlp;
  namespace step = sparse_mlp::step;
  using sparse_mlp::diff::NeuronMask;
  const size_t L = 4, H = 256, I = 1024;
  // Per layer gate, up and down [I, H] (down neuron-major, so that the
  // caches borrow all three in place).
  std::vector<std::vector<float>> weights(L, std::vector<float>(3 * I * H));
  std::vector<cache::MlpWeights> layers;
  for (size_t l = 0; l < L; ++l) {
    for (size_t k = 0; k < weights[l].size(); ++k) {
      weights[l][k] = 0.05f * std::sin(0.001f * static_cast<float>(k) + static_cast<float>(l));
    }
    const float* w = weights[l].data();
    layers.push_back({w, w + I * H, w + 2 * I * H});
  }
  cache::ModelCacheOptions o;
  o.num_layers = L;
  o.layer.hidden_size = H;
  o.layer.intermediate_size = I;
  o.layer.num_threads = 2;
  o.layer.down_layout = cache::DownLayout::kNeuronMajor;
  o.expected_active_fraction = 0.25;
  absl::StatusOr<std::unique_ptr<cache::ModelCache>> model = cache::ModelCache::Create(o, layers);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;

  // Every layer's mask at once: one batch of copies.
  std::vector<NeuronMask> masks;
  for (size_t l = 0; l < L; ++l) {
    NeuronMask m(I);
    for (size_t i = l; i < I; i += 4) m.Set(i, true);  // 25% active
    masks.push_back(m);
  }
  std::vector<cache::LayerMask> batch;
  for (size_t l = 0; l < L; ++l) batch.push_back({l, &masks[l]});
  if (absl::Status s = (*model)->UpdateMany(batch); !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  }

  std::vector<float> x(H), y(H), y_direct(H);
  for (size_t k = 0; k < H; ++k) x[k] = std::cos(0.1f * static_cast<float>(k));
  const mlp::ConstTokens in{x.data(), 1, H, cache::DType::kFloat32};
  mlp::ForwardOptions options;
  mlp::Workspace workspace;
  for (size_t l = 0; l < L; ++l) {
    // Layer l's next token: its fused layer step to a shifted mask.
    NeuronMask next(I);
    for (size_t i = (l + 1) % 4; i < I; i += 4) next.Set(i, i % 3 != 0);
    absl::Status s =
        step::LayerStep(*(*model)->layer(l), next, in, {y.data(), 1, H}, options, &workspace);
    const float* w = weights[l].data();
    const mlp::NeuronRows rows{cache::DType::kFloat32, H, I, w, H, w + I * H, H,
                               w + 2 * I * H, H};
    if (s.ok()) {
      s = mlp::ForwardIndexed(rows, next.ToIndices(), in, {y_direct.data(), 1, H}, options,
                              &workspace);
    }
    if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
    for (size_t k = 0; k < H; ++k) {
      if (std::fabs(y[k] - y_direct[k]) > 1e-4f * (1.0f + std::fabs(y_direct[k]))) {
        return std::fprintf(stderr, "layer %zu: y[%zu] %g != %g\n", l, k, y[k], y_direct[k]), 1;
      }
    }
  }
  const cache::ModelFootprint f = (*model)->footprint();
  std::printf("%zu layers: caches %zu bytes (packed %zu) for %zu bytes of weights, %zu pool "
              "block(s); %llu updates, %llu bytes copied\n",
              L, f.cache_bytes, f.packed_bytes, f.weight_bytes, f.pool_blocks,
              static_cast<unsigned long long>((*model)->totals().updates),
              static_cast<unsigned long long>((*model)->totals().bytes_copied));
  return 0;
}
