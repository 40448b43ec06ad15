// Shared by the mlp/ tests: weights stored in a dtype, random layers, and
// the float64 reference of the forward with the tolerance of the precision
// contract in mlp/mlp_forward.h.
#ifndef SPARSE_MLP_TESTS_MLP_REFERENCE_H_
#define SPARSE_MLP_TESTS_MLP_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cache/dtype.h"
#include "mlp/activation.h"
#include "mlp/mlp_forward.h"
#include "platform/float16.h"

namespace sparse_mlp::mlp::test_util {

using cache::DType;

// ---- values in a dtype ----------------------------------------------------

uint16_t To16(DType d, float v) {
  return d == DType::kBFloat16 ? FloatToBFloat16(v) : FloatToFloat16(v);
}
float From16(DType d, uint16_t v) {
  return d == DType::kBFloat16 ? BFloat16ToFloat(v) : Float16ToFloat(v);
}
inline float RoundTo(DType d, float v) { return d == DType::kFloat32 ? v : From16(d, To16(d, v)); }

// A matrix of values stored in a dtype; `values` holds them exactly as
// floats (what the reference computes with).
struct Array {
  DType dtype = DType::kFloat32;
  std::vector<float> values;
  std::vector<uint8_t> bytes;
  void Set(DType d, std::vector<float> v) {
    dtype = d;
    values = std::move(v);
    bytes.resize(values.size() * cache::DTypeSize(d));
    for (size_t k = 0; k < values.size(); ++k) {
      values[k] = RoundTo(d, values[k]);
      if (d == DType::kFloat32) {
        std::memcpy(bytes.data() + 4 * k, &values[k], 4);
      } else {
        const uint16_t b = To16(d, values[k]);
        std::memcpy(bytes.data() + 2 * k, &b, 2);
      }
    }
  }
  const void* data() const { return bytes.data(); }
  void* data() { return bytes.data(); }
  float Get(size_t k) const {
    if (dtype == DType::kFloat32) {
      float v;
      std::memcpy(&v, bytes.data() + 4 * k, 4);
      return v;
    }
    uint16_t b;
    std::memcpy(&b, bytes.data() + 2 * k, 2);
    return From16(dtype, b);
  }
};

inline std::vector<float> Uniform(std::mt19937_64& rng, size_t n, float scale) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<float> v(n);
  for (float& e : v) e = u(rng);
  return v;
}

inline double ActivateExact(Activation a, double x) {
  switch (a) {
    case Activation::kSiLU:
      return x / (1.0 + std::exp(-x));
    case Activation::kGeluTanh:
      return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case Activation::kReLU:
      return x > 0 ? x : 0;
  }
  return x;
}

// A layer: gate/up [I, H], down [H, I] and its neuron-major copy [I, H].
struct Layer {
  size_t h = 0, i = 0;
  bool has_gate = true;
  DType dtype = DType::kFloat32;
  Array gate, up, down, down_rows;
};

inline Layer RandomLayer(std::mt19937_64& rng, size_t h, size_t i, DType dtype, bool has_gate) {
  Layer l;
  l.h = h;
  l.i = i;
  l.dtype = dtype;
  l.has_gate = has_gate;
  const float s = 2.0f / std::sqrt(static_cast<float>(h));
  if (has_gate) l.gate.Set(dtype, Uniform(rng, i * h, s));
  l.up.Set(dtype, Uniform(rng, i * h, s));
  std::vector<float> down = Uniform(rng, h * i, 1.0f / std::sqrt(static_cast<float>(i)) + 0.1f);
  l.down.Set(dtype, down);
  std::vector<float> rows(i * h);
  for (size_t r = 0; r < h; ++r) {
    for (size_t c = 0; c < i; ++c) rows[c * h + r] = l.down.values[r * i + c];
  }
  l.down_rows.Set(dtype, rows);
  return l;
}

// The reference output of token t (float64) over `set`, with x as the
// contract says the kernels see it, and the tolerance per output.
struct Expected {
  std::vector<double> y, tol;
};

inline Expected Reference(const Layer& l, const std::vector<uint32_t>& set, const Array& x,
                   size_t tokens, Activation act, const Array* y_before, DType y_dtype) {
  Expected e;
  e.y.assign(tokens * l.h, 0);
  e.tol.assign(tokens * l.h, 0);
  const double eps = std::ldexp(1.0, -24);
  const double n_terms = static_cast<double>(l.h + set.size() + 64);
  // bfloat16 weights: each h_j is rounded to bfloat16 before the down
  // projection (the contract), up to 2^-9 of |h_j d_j| per term; 2^-8 covers
  // float32 errors in h moving it across a rounding boundary.
  std::vector<double> rounding(l.h, 0);
  for (size_t t = 0; t < tokens; ++t) {
    std::fill(rounding.begin(), rounding.end(), 0.0);
    std::vector<double> xv(l.h);
    for (size_t c = 0; c < l.h; ++c) {
      float v = x.Get(t * l.h + c);
      if (l.dtype == DType::kBFloat16) v = RoundTo(DType::kBFloat16, v);
      xv[c] = v;
    }
    for (uint32_t j : set) {
      double g = 0, u = 0, ag = 0, au = 0;
      for (size_t c = 0; c < l.h; ++c) {
        if (l.has_gate) {
          g += l.gate.values[j * l.h + c] * xv[c];
          ag += std::fabs(l.gate.values[j * l.h + c] * xv[c]);
        }
        u += l.up.values[j * l.h + c] * xv[c];
        au += std::fabs(l.up.values[j * l.h + c] * xv[c]);
      }
      const double hv = l.has_gate ? ActivateExact(act, g) * u : ActivateExact(act, u);
      // |d h| for float32 errors in g and u (|act'| <= 1.13, |act(g)| <= |g| + 0.3).
      const double hmag = l.has_gate ? (1.13 * ag * std::fabs(u) + (ag + 0.3) * au) + std::fabs(hv)
                                     : 1.13 * au + std::fabs(hv);
      for (size_t c = 0; c < l.h; ++c) {
        const double d = l.down_rows.values[j * l.h + c];
        e.y[t * l.h + c] += hv * d;
        e.tol[t * l.h + c] += std::fabs(d) * hmag;
        rounding[c] += std::fabs(d * hv);
      }
    }
    for (size_t c = 0; c < l.h; ++c) {
      double& tol = e.tol[t * l.h + c];
      if (y_before != nullptr) {
        const double before = y_before->Get(t * l.h + c);
        e.y[t * l.h + c] += before;
        tol += std::fabs(before);
      }
      tol = 4 * eps * n_terms * tol + 1e-30;
      if (l.dtype == DType::kBFloat16) tol += std::ldexp(rounding[c], -8);
      if (y_dtype != DType::kFloat32) {
        const double ulp = y_dtype == DType::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
        tol += std::fabs(e.y[t * l.h + c]) * ulp + (y_dtype == DType::kFloat16 ? 6e-8 : 1e-38);
      }
    }
  }
  return e;
}

inline std::string Compare(const Expected& e, const Array& y, size_t tokens, size_t h) {
  for (size_t k = 0; k < tokens * h; ++k) {
    const double got = y.Get(k);
    if (!(std::fabs(got - e.y[k]) <= e.tol[k])) {
      return absl::StrFormat("token %u output %u: got %.9g, expected %.9g (tolerance %.3g)",
                             k / h, k % h, got, e.y[k], e.tol[k]);
    }
  }
  return "";
}

inline NeuronRows RowsOf(const Layer& l) {
  NeuronRows r;
  r.dtype = l.dtype;
  r.hidden_size = l.h;
  r.count = l.i;
  r.gate = l.has_gate ? l.gate.data() : nullptr;
  r.gate_stride = l.h;
  r.up = l.up.data();
  r.up_stride = l.h;
  r.down = l.down_rows.data();
  r.down_stride = l.h;
  return r;
}

inline LinearWeights LinearOf(const Layer& l) {
  LinearWeights w;
  w.dtype = l.dtype;
  w.hidden_size = l.h;
  w.intermediate_size = l.i;
  w.gate = l.has_gate ? l.gate.data() : nullptr;
  w.up = l.up.data();
  w.down = l.down.data();
  return w;
}

inline ConstTokens In(const Array& x, size_t tokens, size_t h) {
  return {x.data(), tokens, h, x.dtype};
}
inline Tokens Out(Array& y, size_t tokens, size_t h) { return {y.data(), tokens, h, y.dtype}; }

inline std::vector<uint32_t> RandomSet(std::mt19937_64& rng, size_t i, double fraction) {
  std::vector<uint32_t> set;
  for (uint32_t j = 0; j < i; ++j) {
    if (std::uniform_real_distribution<double>(0, 1)(rng) < fraction) set.push_back(j);
  }
  return set;
}

inline std::vector<uint32_t> All(size_t i) {
  std::vector<uint32_t> set(i);
  for (uint32_t j = 0; j < i; ++j) set[j] = j;
  return set;
}

}  // namespace sparse_mlp::mlp::test_util

#endif  // SPARSE_MLP_TESTS_MLP_REFERENCE_H_
