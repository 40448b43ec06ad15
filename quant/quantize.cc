#include "quant/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "platform/float16.h"

namespace sparse_mlp::quant {
namespace {

constexpr int kInt8Max = 127;
constexpr int kQ4Min = -8, kQ4Max = 7;

uint16_t ScaleBits(const uint8_t* row, const RowLayout& l, size_t g) {
  uint16_t bits;
  std::memcpy(&bits, row + l.scale_offset() + 2 * g, 2);
  return bits;
}

int QuantAt(const RowLayout& l, const uint8_t* row, size_t i) {
  if (l.type() == QuantType::kInt8) return static_cast<int8_t>(row[i]);
  const size_t block = i / 32, k = i % 32;
  const uint8_t byte = row[block * 16 + k % 16];
  return (k < 16 ? (byte & 0xF) : (byte >> 4)) - 8;
}

int RoundClamp(float v, int lo, int hi) {
  return std::clamp(static_cast<int>(std::nearbyint(v)), lo, hi);
}

// The float16 scale of one group and its quants (q[0, G)), or an error.
absl::Status QuantizeGroup(const RowLayout& l, const float* w, size_t g, uint16_t* scale, int* q) {
  const size_t n = l.group();
  float amax = 0.0f, signed_max = 0.0f;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(w[i])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "weight %u is %f: only finite weights can be quantized", g * n + i, w[i]));
    }
    if (std::fabs(w[i]) > amax) {
      amax = std::fabs(w[i]);
      signed_max = w[i];
    }
  }
  if (amax == 0.0f) {
    *scale = 0;
    std::fill(q, q + n, 0);
    return absl::OkStatus();
  }
  float d;
  if (l.type() == QuantType::kInt8) {
    d = amax / kInt8Max;
  } else {
    // Candidates: the largest weight mapped to -8 (one more level than +7
    // offers), nudged in steps of 0.1 level; for each, the least-squares
    // scale of its rounding.
    float best_err = INFINITY;
    d = signed_max / kQ4Min;
    for (int step = -9; step <= 9; ++step) {
      const float iscale = (kQ4Min + 0.1f * step) / signed_max;
      double sum_wq = 0, sum_qq = 0;
      for (size_t i = 0; i < n; ++i) {
        const int qi = RoundClamp(iscale * w[i], kQ4Min, kQ4Max);
        sum_wq += double{w[i]} * qi;
        sum_qq += static_cast<double>(qi) * qi;
      }
      if (sum_qq == 0) continue;
      const float cand = static_cast<float>(sum_wq / sum_qq);
      double err = 0;
      for (size_t i = 0; i < n; ++i) {
        const int qi = RoundClamp(w[i] / cand, kQ4Min, kQ4Max);
        const double e = double{w[i]} - double{cand} * qi;
        err += e * e;
      }
      if (err < best_err) {
        best_err = static_cast<float>(err);
        d = cand;
      }
    }
  }
  const uint16_t bits = FloatToFloat16(d);
  const float d16 = Float16ToFloat(bits);
  if (!std::isfinite(d16) || d16 == 0.0f) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "group %u (weights %u..%u, max |w| %g) needs a scale of %g, outside float16's range", g,
        g * n, (g + 1) * n - 1, amax, d));
  }
  const int lo = l.type() == QuantType::kInt8 ? -kInt8Max : kQ4Min;
  const int hi = l.type() == QuantType::kInt8 ? kInt8Max : kQ4Max;
  for (size_t i = 0; i < n; ++i) q[i] = RoundClamp(w[i] / d16, lo, hi);
  *scale = bits;
  return absl::OkStatus();
}

}  // namespace

absl::Status QuantizeRow(const RowLayout& l, const float* w, uint8_t* out) {
  // Every group's scale and quants first, so that an error writes nothing.
  const size_t groups = l.groups(), n = l.group();
  std::vector<uint16_t> scales(groups);
  std::vector<int> q(l.hidden());
  for (size_t g = 0; g < groups; ++g) {
    if (absl::Status s = QuantizeGroup(l, w + g * n, g, &scales[g], q.data() + g * n); !s.ok()) {
      return s;
    }
  }
  if (l.type() == QuantType::kInt8) {
    for (size_t i = 0; i < l.hidden(); ++i) {
      out[i] = static_cast<uint8_t>(static_cast<int8_t>(q[i]));
    }
  } else {
    for (size_t block = 0; block < l.hidden() / 32; ++block) {
      for (size_t k = 0; k < 16; ++k) {
        out[block * 16 + k] =
            static_cast<uint8_t>((q[block * 32 + k] + 8) | ((q[block * 32 + k + 16] + 8) << 4));
      }
    }
  }
  std::memcpy(out + l.scale_offset(), scales.data(), 2 * groups);
  return absl::OkStatus();
}

void DequantizeRow(const RowLayout& l, const uint8_t* row, float* out) {
  for (size_t i = 0; i < l.hidden(); ++i) out[i] = WeightAt(l, row, i);
}

float WeightAt(const RowLayout& l, const uint8_t* row, size_t i) {
  return static_cast<float>(QuantAt(l, row, i)) * Float16ToFloat(ScaleBits(row, l, i / l.group()));
}

}  // namespace sparse_mlp::quant
