// The sparse forward alone: a project that depends on //mlp:mlp_forward
// (and nothing of cache/, store/, flash/ or step/) computes a gated MLP over
// a set of active neurons, read in place from its [I, H] weights, and checks
// it against a plain double-precision loop. bazel run
// //examples:forward_only (also a test; docs/usage.md builds the same file
// from a scratch workspace).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "mlp/mlp_forward.h"

int main() {
  namespace mlp = sparse_mlp::mlp;
  const size_t H = 256, I = 1024;
  // gate and up [I, H]; down stored neuron-major ([I, H]: down's column j
  // as row j), the layout the forward reads rows of.
  std::vector<float> gate(I * H), up(I * H), down(I * H), x(H), y(H);
  for (size_t k = 0; k < I * H; ++k) {
    gate[k] = std::sin(0.001f * k) * 0.05f;
    up[k] = std::cos(0.002f * k) * 0.05f;
    down[k] = std::sin(0.003f * k) * 0.05f;
  }
  for (size_t k = 0; k < H; ++k) x[k] = std::cos(0.1f * k);
  const std::vector<uint32_t> active = {3, 42, 256, 700, 1023};  // ascending

  const mlp::NeuronRows rows{mlp::DType::kFloat32, H, I, gate.data(), H,
                             up.data(),            H, down.data(), H};
  mlp::ForwardOptions options;  // SiLU, 1 thread, the best SIMD level here
  mlp::Workspace workspace;
  if (absl::Status s = mlp::ForwardIndexed(rows, active, {x.data(), 1, H, mlp::DType::kFloat32},
                                           {y.data(), 1, H, mlp::DType::kFloat32}, options,
                                           &workspace);
      !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }

  // y = sum over active j of silu(gate_j . x) (up_j . x) down_j.
  double worst = 0;
  std::vector<double> ref(H, 0.0);
  for (uint32_t j : active) {
    double g = 0, u = 0;
    for (size_t k = 0; k < H; ++k) {
      g += double{gate[j * H + k]} * x[k];
      u += double{up[j * H + k]} * x[k];
    }
    const double a = g / (1.0 + std::exp(-g)) * u;
    for (size_t k = 0; k < H; ++k) ref[k] += a * down[j * H + k];
  }
  for (size_t k = 0; k < H; ++k) worst = std::fmax(worst, std::fabs(y[k] - ref[k]));
  std::printf("%zu of %zu neurons, max |forward - float64| = %.2g\n", active.size(), I, worst);
  return worst < 1e-5 ? 0 : 1;
}
