// The README's forward example: a layer's sparse MLP three ways (direct on
// indices, on a WeightCache, and the fused layer step), checked against
// each other. bazel run //examples:mlp_forward (also a test).
#include "mlp/mlp_forward.h"

#include <cmath>
#include <cstdio>
#include <vector>

#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "step/layer_step.h"

int main() {
  namespace cache = sparse_mlp::cache;
  namespace mlp = sparse_mlp::mlp;
  namespace step = sparse_mlp::step;
  const size_t H = 512, I = 2048;
  std::vector<float> gate(I * H), up(I * H), down_rows(I * H), x(H), y(H), y_step(H);
  for (size_t k = 0; k < I * H; ++k) {
    gate[k] = std::sin(0.001f * k) * 0.05f;
    up[k] = std::cos(0.002f * k) * 0.05f;
    down_rows[k] = std::sin(0.003f * k) * 0.05f;
  }
  for (size_t k = 0; k < H; ++k) x[k] = std::cos(0.1f * k);
  const std::vector<uint32_t> active = {3, 42, 256, 1000, 2047};

  // Direct-index: the active rows read in place ([I, H] arrays, down
  // neuron-major), no cache.
  const mlp::NeuronRows rows{mlp::DType::kFloat32, H, I, gate.data(), H, up.data(), H,
                             down_rows.data(),     H};
  mlp::ForwardOptions options;  // SiLU, 1 thread, best SIMD level
  mlp::Workspace workspace;     // scratch; calls that fit it do not allocate
  const mlp::ConstTokens in{x.data(), 1, H, mlp::DType::kFloat32};
  if (absl::Status s = mlp::ForwardIndexed(rows, active, in, {y.data(), 1, H}, options,
                                           &workspace);
      !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  }

  // A cache holding another set, then the layer step to `active`: the
  // update and the forward in one pass.
  cache::WeightCacheOptions co;
  co.hidden_size = H;
  co.intermediate_size = I;
  co.down_layout = cache::DownLayout::kNeuronMajor;
  absl::StatusOr<cache::WeightCache> c = cache::WeightCache::Create(
      co, {gate.data(), up.data(), down_rows.data()},
      *sparse_mlp::diff::NeuronMask::FromIndices(I, {3, 17, 256}));
  if (!c.ok()) return std::fprintf(stderr, "%s\n", c.status().ToString().c_str()), 1;
  const sparse_mlp::diff::NeuronMask next = *sparse_mlp::diff::NeuronMask::FromIndices(I, active);
  if (absl::Status s = step::LayerStep(&*c, next, in, {y_step.data(), 1, H}, options, &workspace);
      !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  }

  double diff = 0;
  for (size_t k = 0; k < H; ++k) diff = std::fmax(diff, std::fabs(y[k] - y_step[k]));
  std::printf("active %zu, rows loaded by the step %zu, max |direct - step| = %.2g\n",
              c->num_active(), c->last_update().rows_loaded, diff);
  return c->Verify().ok() && diff < 1e-5 ? 0 : 1;
}
