// FlashModelCache's views of its state: verification, statistics,
// footprint, residency (flash/flash_cache.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "flash/flash_cache.h"
#include "flash/flash_cache_internal.h"

namespace sparse_mlp::flash {

absl::Status FlashModelCache::Verify(size_t layer) const {
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  const Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !l.busy(); });
  lock.unlock();  // only this (stepping) thread plans: the slots stay as they are
  store::ReaderOptions o;
  o.direct_io = store::DirectIo::kNever;
  o.queue_depth = 8;
  absl::StatusOr<std::unique_ptr<store::BundleReader>> r = store::BundleReader::Open(path_, o);
  if (!r.ok()) return r.status();
  const size_t bundle = layout_.bundle_bytes();
  std::vector<uint8_t> buffer(bundle);
  for (uint32_t s = 0; s < capacity_; ++s) {
    const uint32_t j = l.planner.neuron_of(s);
    if (j == kNoSlot) continue;
    if (absl::Status st = (*r)->Read({{layer, j, buffer.data()}}); !st.ok()) return st;
    if (std::memcmp(buffer.data(), slots(layer) + s * slot_stride_, bundle) != 0) {
      return absl::DataLossError(absl::StrFormat(
          "%s layer %d: slot %d holds neuron %d's bundle wrongly", path_, layer, s, j));
    }
  }
  return absl::OkStatus();
}

FlashLayerStats FlashModelCache::layer_stats(size_t layer) const {
  std::lock_guard<std::mutex> lock(mu_);
  FlashLayerStats s = layers_[layer]->stats;
  s.resident = layers_[layer]->planner.resident();
  return s;
}

store::ReaderStats FlashModelCache::io_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  store::ReaderStats sum;
  for (const auto& lane : lanes_) {
    const store::ReaderStats& s = lane->stats;
    sum.batches += s.batches;
    sum.bundles += s.bundles;
    sum.requests += s.requests;
    sum.bytes_read += s.bytes_read;
    sum.staged_bundles += s.staged_bundles;
    sum.errors += s.errors;
    sum.busy_seconds += s.busy_seconds;
  }
  return sum;
}

FlashFootprint FlashModelCache::footprint() const {
  FlashFootprint f;
  f.budget_bytes = options_.budget_bytes;
  f.slot_bytes = pool_.size();
  for (const auto& lane : lanes_) f.reader_bytes += lane->reader->memory_bytes();
  if (repair_ != nullptr) f.reader_bytes += repair_->memory_bytes();
  f.bookkeeping_bytes = bookkeeping_bytes_;
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& l : layers_) f.resident_bytes += l->planner.resident() * slot_stride_;
  return f;
}

std::vector<uint32_t> FlashModelCache::resident_neurons(size_t layer) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint32_t> out;
  const ResidencyPlanner& p = layers_[layer]->planner;
  for (uint32_t s = 0; s < capacity_; ++s) {
    if (p.neuron_of(s) != kNoSlot) out.push_back(p.neuron_of(s));
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Span<const uint32_t> FlashModelCache::slot_neurons(size_t layer) const {
  return layers_[layer]->planner.slot_neurons();
}

absl::StatusOr<float*> FlashModelCache::Scratch(size_t tokens) {
  const size_t bytes = tokens * layout_.shape().hidden * sizeof(float);
  if (bytes > scratch_.size()) {
    absl::StatusOr<memory::AlignedBuffer> b = memory::AlignedBuffer::Allocate(bytes);
    if (!b.ok()) return b.status();
    scratch_ = *std::move(b);
  }
  return reinterpret_cast<float*>(scratch_.data());
}

}  // namespace sparse_mlp::flash
