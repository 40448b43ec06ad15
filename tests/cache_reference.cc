#include "tests/cache_reference.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace sparse_mlp::cache::testing {

MlpWeights ReferenceWeights::View(bool has_gate, DownLayout down_layout) const {
  return {has_gate ? gate.data() : nullptr, up.data(),
          down_layout == DownLayout::kHiddenMajor ? down.data() : down_neuron_major.data()};
}

ReferenceWeights RandomReferenceWeights(std::mt19937_64& rng, size_t h, size_t i,
                                        size_t elem) {
  ReferenceWeights w;
  w.h = h;
  w.i = i;
  w.elem = elem;
  auto fill = [&](std::vector<uint8_t>& v) {
    v.resize(h * i * elem);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
  };
  fill(w.gate);
  fill(w.up);
  fill(w.down);
  w.down_neuron_major.resize(w.down.size());
  for (size_t r = 0; r < h; ++r) {
    for (size_t c = 0; c < i; ++c) {
      std::memcpy(&w.down_neuron_major[(c * h + r) * elem], &w.down[(r * i + c) * elem],
                  elem);
    }
  }
  return w;
}

std::string CompareWithReference(const WeightCache& cache, const ReferenceWeights& w,
                                 const diff::NeuronMask& mask) {
  const size_t e = w.elem, h = w.h, rb = h * e;
  if (cache.applied_mask() != mask) return "applied_mask() is not the expected mask";
  const absl::Span<const uint32_t> slots = cache.active_indices();
  if (slots.size() != cache.num_active() || slots.size() != mask.CountActive()) {
    return absl::StrFormat("%d slots, %d active neurons expected", slots.size(),
                           mask.CountActive());
  }
  // Every slot holds a distinct neuron of the mask (with the count above:
  // exactly the mask's neurons).
  std::vector<bool> seen(mask.size(), false);
  for (size_t s = 0; s < slots.size(); ++s) {
    const uint32_t n = slots[s];
    if (n >= mask.size() || !mask.Test(n) || seen[n]) {
      return absl::StrFormat("slot %d holds neuron %d: not in the mask, or twice", s, n);
    }
    seen[n] = true;
  }
  const MatrixView gate = cache.gate(), up = cache.up(), down = cache.down_rows();
  const MatrixView down_t = cache.down_hidden_major();
  // down_hidden_major() describes down_rows()'s memory transposed.
  if (down_t.data != down.data || down_t.rows != h || down_t.cols != slots.size() ||
      down_t.row_stride != down.col_stride || down_t.col_stride != down.row_stride) {
    return "down_hidden_major() is not the transpose of down_rows()";
  }
  for (size_t s = 0; s < slots.size(); ++s) {
    const size_t n = slots[s];
    auto row = [&](const MatrixView& v) {
      return static_cast<const uint8_t*>(v.data) + s * v.row_stride * e;
    };
    if (cache.has_gate() && std::memcmp(row(gate), &w.gate[n * rb], rb) != 0) {
      return absl::StrFormat("gate row of slot %d (neuron %d) differs", s, n);
    }
    if (std::memcmp(row(up), &w.up[n * rb], rb) != 0) {
      return absl::StrFormat("up row of slot %d (neuron %d) differs", s, n);
    }
    // Column n of the caller's [H, I] down (down_neuron_major was built
    // from it element by element).
    if (std::memcmp(row(down), &w.down_neuron_major[n * rb], rb) != 0) {
      return absl::StrFormat("down row of slot %d (neuron %d) differs", s, n);
    }
  }
  // The seed API's [2A, H] concatenation, when the cache keeps it.
  if (const absl::StatusOr<MatrixView> concat = cache.concatenated_gate_up(); concat.ok()) {
    const size_t a = slots.size();
    if (concat->rows != 2 * a || concat->cols != h || concat->row_stride != h) {
      return absl::StrFormat("concatenated_gate_up() is [%d, %d] stride %d, expected [%d, %d]",
                             concat->rows, concat->cols, concat->row_stride, 2 * a, h);
    }
    const auto* base = static_cast<const uint8_t*>(concat->data);
    for (size_t s = 0; s < a; ++s) {
      const size_t n = slots[s];
      if (std::memcmp(base + s * rb, &w.gate[n * rb], rb) != 0) {
        return absl::StrFormat("concatenated gate row %d (neuron %d) differs", s, n);
      }
      if (std::memcmp(base + (a + s) * rb, &w.up[n * rb], rb) != 0) {
        return absl::StrFormat("concatenated up row %d (neuron %d) differs", a + s, n);
      }
    }
  }
  if (const absl::Status verified = cache.Verify(); !verified.ok()) {
    return "Verify() disagrees: " + std::string(verified.message());
  }
  return "";
}

std::string CacheConfig::Describe() const {
  return absl::StrFormat(
      "%s %s gate=%d layout=%s own=%s down=%s threads=%d tolerance=%d concat=%d",
      SimdLevelName(simd), DTypeName(dtype), has_gate, PackedLayoutName(layout),
      ownership == SourceOwnership::kCopy ? "copy" : "borrow",
      down_layout == DownLayout::kHiddenMajor ? "[H,I]" : "[I,H]", threads, tolerance, concat);
}

WeightCacheOptions CacheConfig::Options(size_t h, size_t i) const {
  WeightCacheOptions options;
  options.hidden_size = h;
  options.intermediate_size = i;
  options.dtype = dtype;
  options.has_gate = has_gate;
  options.layout = layout;
  options.ownership = ownership;
  options.down_layout = down_layout;
  options.num_threads = threads;
  options.tolerance = tolerance;
  options.simd = simd;
  options.concat_gate_up = concat;
  return options;
}

std::string CacheOp::Describe() const {
  switch (kind) {
    case kUpdate:
      return absl::StrFormat("Update(%d active)", mask.CountActive());
    case kUpdateFromBytes:
      return absl::StrFormat("UpdateFromBytes(%d bytes)", bytes.size());
    case kUpdateFromIndices:
      return absl::StrFormat("UpdateFromIndices(%d indices)", indices.size());
    case kUpdateFromByteRows:
      return absl::StrFormat("UpdateFromByteRows(%d bytes, %d rows)", bytes.size(), rows);
    case kCatchUp:
      return "CatchUp()";
    case kReserve:
      return absl::StrFormat("Reserve(%d)", value);
    case kSetTolerance:
      return absl::StrFormat("set_tolerance(%d)", value);
  }
  return "?";
}

absl::StatusOr<CheckedCache> CheckedCache::Create(const CacheConfig& config,
                                                  const ReferenceWeights* weights,
                                                  const diff::NeuronMask& initial_mask) {
  absl::StatusOr<WeightCache> cache =
      WeightCache::Create(config.Options(weights->h, weights->i),
                          weights->View(config.has_gate, config.down_layout), initial_mask);
  if (!cache.ok()) return cache.status();
  return CheckedCache(*std::move(cache), weights, config.tolerance, initial_mask);
}

std::string CheckedCache::Check() const {
  if (cache_.requested_mask() != requested_) return "requested_mask() is not the expected mask";
  const size_t lag = *diff::CountMaskChanges(applied_, requested_);
  if (cache_.lag() != lag) {
    return absl::StrFormat("lag() is %d, expected %d", cache_.lag(), lag);
  }
  return CompareWithReference(cache_, *weights_, applied_);
}

std::string CheckedCache::ExpectUpdate(const absl::Status& status,
                                       const diff::NeuronMask& next) {
  if (!status.ok()) return "failed: " + std::string(status.message());
  const size_t changes = *diff::CountMaskChanges(applied_, next);
  requested_ = next;
  if (changes != 0 && changes >= tolerance_) applied_ = next;
  return Check();
}

std::string CheckedCache::Apply(const CacheOp& op) {
  const size_t i = weights_->i;
  std::string result;
  // An update whose input is invalid must fail with InvalidArgument and
  // change nothing.
  auto expect_refused = [&](const absl::Status& status) -> std::string {
    if (status.code() != absl::StatusCode::kInvalidArgument) {
      return "invalid input not refused: " + status.ToString();
    }
    return Check();
  };
  switch (op.kind) {
    case CacheOp::kUpdate: {
      const absl::Status s = cache_.Update(op.mask);
      result = op.mask.size() == i ? ExpectUpdate(s, op.mask) : expect_refused(s);
      break;
    }
    case CacheOp::kUpdateFromBytes: {
      const absl::Status s = cache_.Update(cache::MaskInput::Bytes(op.bytes));
      if (op.bytes.size() != i) {
        result = expect_refused(s);
        break;
      }
      diff::NeuronMask next(i);
      for (size_t k = 0; k < i; ++k) next.Set(k, op.bytes[k] != 0);
      result = ExpectUpdate(s, next);
      break;
    }
    case CacheOp::kUpdateFromIndices: {
      const absl::Status s = cache_.Update(cache::MaskInput::Indices(op.indices));
      bool valid = true;
      for (size_t k = 0; k < op.indices.size(); ++k) {
        if (op.indices[k] >= i || (k > 0 && op.indices[k] <= op.indices[k - 1])) valid = false;
      }
      if (!valid) {
        result = expect_refused(s);
        break;
      }
      diff::NeuronMask next(i);
      for (uint32_t n : op.indices) next.Set(n, true);
      result = ExpectUpdate(s, next);
      break;
    }
    case CacheOp::kUpdateFromByteRows: {
      const absl::Status s = cache_.Update(cache::MaskInput::ByteRows(op.bytes, op.rows));
      if (op.rows == 0 || op.bytes.size() != op.rows * i) {
        result = expect_refused(s);
        break;
      }
      diff::NeuronMask next(i);
      for (size_t r = 0; r < op.rows; ++r) {
        for (size_t k = 0; k < i; ++k) {
          if (op.bytes[r * i + k] != 0) next.Set(k, true);
        }
      }
      result = ExpectUpdate(s, next);
      break;
    }
    case CacheOp::kCatchUp: {
      const absl::Status s = cache_.CatchUp();
      if (!s.ok()) {
        result = "failed: " + std::string(s.message());
        break;
      }
      applied_ = requested_;
      result = Check();
      break;
    }
    case CacheOp::kReserve: {
      const absl::Status s = cache_.Reserve(op.value);
      if (op.value > i) {
        result = expect_refused(s);
      } else if (!s.ok()) {
        result = "failed: " + std::string(s.message());
      } else if (cache_.capacity() < op.value) {
        result = absl::StrFormat("capacity %d after Reserve", cache_.capacity());
      } else {
        result = Check();
      }
      break;
    }
    case CacheOp::kSetTolerance: {
      const absl::Status s = cache_.set_tolerance(op.value);
      if (!s.ok()) {
        result = "failed: " + std::string(s.message());
        break;
      }
      tolerance_ = op.value;
      result = Check();
      break;
    }
  }
  return result.empty() ? result : op.Describe() + ": " + result;
}

}  // namespace sparse_mlp::cache::testing
