// The README's C++ example: a cache over one layer, an update, the views.
//   bazel run //examples:cache_quickstart   (also a test of bazel test //...)
#include <cstdio>
#include <vector>

#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"

int main() {
  namespace cache = sparse_mlp::cache;
  const size_t H = 512, I = 2048;
  std::vector<float> gate(I * H, 1.0f), up(I * H, 2.0f), down(H * I, 3.0f);

  cache::WeightCacheOptions options;
  options.hidden_size = H;
  options.intermediate_size = I;
  options.num_threads = 2;
  std::vector<uint32_t> first = {3, 17, 256, 1000};
  absl::StatusOr<cache::WeightCache> c = cache::WeightCache::Create(
      options, {gate.data(), up.data(), down.data()},
      *sparse_mlp::diff::NeuronMask::FromIndices(I, first));
  if (!c.ok()) return std::fprintf(stderr, "%s\n", c.status().ToString().c_str()), 1;

  std::vector<uint32_t> next = {3, 42, 256, 1000, 2047};  // 17 leaves, 42 and 2047 enter
  if (absl::Status s = c->Update(cache::MaskInput::Indices(next)); !s.ok()) {
    return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
  }
  const cache::MatrixView g = c->gate(), d = c->down_hidden_major();  // [A, H], [H, A]
  std::printf("active %zu, gate [%zu, %zu], down [%zu, %zu], rows loaded %zu\n",
              c->num_active(), g.rows, g.cols, d.rows, d.cols, c->last_update().rows_loaded);
  return c->Verify().ok() ? 0 : 1;
}
