#include "flash/flash_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"

namespace sparse_mlp::flash {
namespace {

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Bookkeeping bytes of one layer with `capacity` slots: the planner's and
// the job's arrays (Layer reserves exactly these).
size_t LayerBytes(size_t neurons, size_t capacity, size_t chunk) {
  const size_t chunks = capacity / chunk + 1;
  return neurons * (4 + 8 + 1) + capacity * 4 * 5 /* planner */ +
         capacity * (sizeof(store::BundleRequest) + 4 + 1) /* requests, neurons, failed */ +
         chunks * (4 + sizeof(absl::Status)) + neurons * 4 /* prefetched mask */;
}

}  // namespace

struct FlashModelCache::Layer {
  Layer(size_t neurons, size_t capacity, size_t window, size_t chunk)
      : planner(neurons, capacity, window) {
    requests.reserve(capacity);
    request_neurons.reserve(capacity);
    failed.reserve(capacity);
    chunk_left.reserve(capacity / chunk + 1);
    chunk_status.reserve(capacity / chunk + 1);
    prefetch_mask.reserve(neurons);
    stats.capacity = capacity;
  }

  ResidencyPlanner planner;
  ResidencyPlan plan;
  FlashLayerStats stats;
  // The layer's job: set up by the stepping thread while !busy, read by the
  // I/O thread while busy (chunk_left, chunk_status, failed, job_status
  // change under mu_).
  std::vector<store::BundleRequest> requests;
  std::vector<uint32_t> request_neurons;
  std::vector<uint8_t> failed;
  std::vector<uint32_t> chunk_left;
  std::vector<absl::Status> chunk_status;
  absl::Status job_status;
  bool busy = false;
  bool step_open = false;
  bool prefetched = false;
  std::vector<uint32_t> prefetch_mask;
};

absl::StatusOr<std::unique_ptr<FlashModelCache>> FlashModelCache::Open(
    const std::string& path, const FlashCacheOptions& options) {
  return Open(path, options, store::MakeIoEngine);
}

absl::StatusOr<std::unique_ptr<FlashModelCache>> FlashModelCache::Open(
    const std::string& path, const FlashCacheOptions& options,
    const store::IoEngineMaker& make_engine) {
  if (options.window == 0) return absl::InvalidArgumentError("window must be >= 1, got 0");
  if (options.chunk_neurons == 0) {
    return absl::InvalidArgumentError("chunk_neurons must be >= 1, got 0");
  }
  if (options.io_lanes < 1 || options.io_lanes > 8) {
    return absl::InvalidArgumentError(
        absl::StrFormat("io_lanes must be in [1, 8], got %d", options.io_lanes));
  }
  std::vector<std::unique_ptr<Lane>> lanes;
  for (size_t k = 0; k < options.io_lanes; ++k) {
    absl::StatusOr<std::unique_ptr<store::BundleReader>> reader =
        store::BundleReader::Open(path, options.reader, make_engine);
    if (!reader.ok()) return reader.status();
    lanes.push_back(std::make_unique<Lane>());
    lanes.back()->reader = *std::move(reader);
  }
  std::unique_ptr<FlashModelCache> c(
      new FlashModelCache(path, lanes[0]->reader->layout(), options));
  c->lanes_ = std::move(lanes);
  const store::BundleShape& s = c->layout_.shape();
  const size_t layers = s.layers, neurons = s.intermediate;
  c->slot_stride_ = RoundUp(c->layout_.bundle_bytes(),
                            std::max<size_t>(64, c->lanes_[0]->reader->destination_alignment()));
  const size_t scratch = std::max<size_t>(1, options.max_tokens) * s.hidden * sizeof(float);
  size_t reader_now = 0;
  for (const auto& lane : c->lanes_) reader_now += lane->reader->memory_bytes();
  const size_t lane_count = c->lanes_.size();
  // Everything the cache holds with `capacity` slots per layer (the reader's
  // batch arrays hold two layers' slots: reserved below).
  auto total = [&](size_t capacity) {
    return reader_now + lane_count * 2 * capacity * store::BundleReader::BatchBytesPerBundle() +
           scratch + lane_count * layers * sizeof(size_t) /* queues */ +
           layers *
               (LayerBytes(neurons, capacity, options.chunk_neurons) + capacity * c->slot_stride_);
  };
  if (options.budget_bytes < total(1)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "budget_bytes %d is below the minimum %d for %s (%d layers: one %d-byte slot each, "
        "the reader's %d bytes, bookkeeping)",
        options.budget_bytes, total(1), path, layers, c->slot_stride_, reader_now));
  }
  size_t lo = 1, hi = neurons;  // the largest capacity within the budget
  while (lo < hi) {
    const size_t mid = lo + (hi - lo + 1) / 2;
    if (total(mid) <= options.budget_bytes) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  c->capacity_ = lo;
  for (const auto& lane : c->lanes_) {
    if (absl::Status r = lane->reader->Reserve(2 * c->capacity_); !r.ok()) return r;
    lane->batch_limit = 2 * c->capacity_;
    lane->active.reserve(2 * c->capacity_ + 1);  // a job holds at least one request
  }
  absl::StatusOr<memory::AlignedBuffer> pool = memory::AlignedBuffer::Allocate(
      layers * c->capacity_ * c->slot_stride_, 4096, memory::HugePageAdvice::kHugePages);
  if (!pool.ok()) return pool.status();
  c->pool_ = *std::move(pool);
  absl::StatusOr<memory::AlignedBuffer> scratch_buffer =
      memory::AlignedBuffer::Allocate(scratch);
  if (!scratch_buffer.ok()) return scratch_buffer.status();
  c->scratch_ = *std::move(scratch_buffer);
  for (size_t l = 0; l < layers; ++l) {
    c->layers_.push_back(
        std::make_unique<Layer>(neurons, c->capacity_, options.window, options.chunk_neurons));
    c->bookkeeping_bytes_ += LayerBytes(neurons, c->capacity_, options.chunk_neurons);
  }
  c->bookkeeping_bytes_ += c->scratch_.size();
  for (const auto& lane : c->lanes_) {
    lane->queue.assign(layers, 0);
    c->bookkeeping_bytes_ += lane->queue.capacity() * sizeof(size_t);
    lane->stats = lane->reader->stats();
    lane->thread = std::thread([p = c.get(), l = lane.get()] { p->IoLoop(*l); });
  }
  return c;
}

FlashModelCache::FlashModelCache(std::string path, store::BundleLayout layout,
                                 FlashCacheOptions options)
    : path_(std::move(path)), layout_(std::move(layout)), options_(std::move(options)) {}

FlashModelCache::~FlashModelCache() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;  // the I/O threads finish queued jobs first
  }
  for (const auto& lane : lanes_) {
    lane->work.notify_all();
    if (lane->thread.joinable()) lane->thread.join();
  }
}

void FlashModelCache::IoLoop(Lane& lane) {
  const size_t chunk = options_.chunk_neurons;
  // Bundle `index` of the batch landed: its job's chunk accounting (under
  // mu_); the job ends when its last bundle lands.
  auto landed = [&](size_t index, const absl::Status& status) {
    size_t j = 0;
    while (index >= lane.active[j].base + lane.active[j].count) ++j;  // few jobs: a scan
    ActiveJob& job = lane.active[j];
    Layer& l = *layers_[job.layer];
    const size_t k = index - job.base, c = k / chunk;
    std::lock_guard<std::mutex> guard(mu_);
    if (!status.ok()) {
      l.failed[k] = 1;
      if (l.chunk_status[c].ok()) l.chunk_status[c] = status;
      if (l.job_status.ok()) l.job_status = status;
    }
    bool notify = --l.chunk_left[c] == 0;
    if (--job.left == 0) {
      l.busy = false;
      notify = true;
    }
    if (notify) cv_.notify_all();
  };
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (lane.active.empty()) {
      lane.work.wait(lock, [&] { return stop_ || lane.size > 0; });
      if (lane.size == 0) return;  // stopping, nothing in flight
    }
    // Every queued job joins the batch in flight (or starts one).
    while (lane.size > 0) {
      const size_t layer = lane.queue[lane.head];
      Layer& l = *layers_[layer];
      const size_t n = l.requests.size();
      size_t base = 0;
      if (!lane.active.empty()) {
        const ActiveJob& last = lane.active.back();
        base = last.base + last.count;
        if (base + n > lane.batch_limit) break;  // the batch must drain first
      }
      lane.head = (lane.head + 1) % lane.queue.size();
      --lane.size;
      lane.active.push_back({layer, base, n, n});
      lock.unlock();
      // l.requests stays as it is while the job runs (Plan waits for it).
      const absl::Status s = lane.reader->Append(l.requests);
      if (!s.ok()) {  // nothing of it entered the batch: fail it, and forget it
        for (size_t k = 0; k < n; ++k) landed(base + k, s);
        lane.active.pop_back();
      }
      lock.lock();
    }
    lock.unlock();
    lane.reader->Poll(landed, /*wait=*/true);
    lock.lock();
    lane.stats = lane.reader->stats();
    // Finished jobs keep their indices until the whole batch is done (every
    // job's last bundle reported = the reader idle); then the next job
    // starts a batch at index 0.
    if (!lane.reader->busy()) lane.active.clear();
  }
}

void FlashModelCache::WaitIdle(Layer& l, std::unique_lock<std::mutex>& lock) {
  cv_.wait(lock, [&] { return !l.busy; });
}

void FlashModelCache::ApplyFailures(Layer& l) {
  for (size_t k = 0; k < l.failed.size(); ++k) {
    if (!l.failed[k]) continue;
    l.planner.Unload(l.request_neurons[k]);
    ++l.stats.failed_loads;
    l.failed[k] = 0;
  }
}

absl::Status FlashModelCache::Plan(size_t layer, absl::Span<const uint32_t> mask, bool prefetch,
                                   bool guess) {
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  WaitIdle(l, lock);
  ApplyFailures(l);
  ResidencyPlan plan;
  if (absl::Status s = guess ? l.planner.PlanGuess(mask, &plan) : l.planner.Plan(mask, &plan);
      !s.ok()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s layer %d: %s (%d bytes each; budget %d bytes)", path_, layer, s.message(),
        slot_stride_, options_.budget_bytes));
  }
  l.plan = plan;
  l.stats.hits += plan.hit_slots.size();
  l.stats.loads += plan.entering.size();
  l.stats.evictions += plan.evicted;
  l.stats.expirations += plan.expired;
  l.prefetched = prefetch && !guess;  // a guess is never a step's plan
  if (l.prefetched) l.prefetch_mask.assign(mask.begin(), mask.end());
  const size_t n = plan.entering.size(), chunk = options_.chunk_neurons;
  l.requests.resize(n);
  l.request_neurons.assign(plan.entering.begin(), plan.entering.end());
  l.failed.assign(n, 0);
  uint8_t* base = pool_.data() + layer * capacity_ * slot_stride_;
  for (size_t k = 0; k < n; ++k) {
    l.requests[k] = {layer, plan.entering[k], base + plan.entering_slots[k] * slot_stride_};
  }
  const size_t chunks = (n + chunk - 1) / chunk;
  l.chunk_left.resize(chunks);
  l.chunk_status.resize(chunks);
  for (size_t j = 0; j < chunks; ++j) {
    l.chunk_left[j] = static_cast<uint32_t>(std::min(chunk, n - j * chunk));
    l.chunk_status[j] = absl::OkStatus();
  }
  l.job_status = absl::OkStatus();
  if (n > 0) {
    l.busy = true;
    Lane& lane = *lanes_[layer % lanes_.size()];
    lane.queue[(lane.head + lane.size) % lane.queue.size()] = layer;
    ++lane.size;
    lane.work.notify_one();
  }
  return absl::OkStatus();
}

absl::Status FlashModelCache::BeginStep(size_t layer, absl::Span<const uint32_t> mask,
                                        FlashStepPlan* plan) {
  if (layer >= layers_.size()) {
    return absl::OutOfRangeError(
        absl::StrFormat("layer %d out of range [0, %d)", layer, layers_.size()));
  }
  Layer& l = *layers_[layer];
  if (l.step_open) {
    return absl::FailedPreconditionError(
        absl::StrFormat("layer %d: a step is open; FinishStep it first", layer));
  }
  const bool reuse = l.prefetched && absl::MakeConstSpan(l.prefetch_mask) == mask;
  if (!reuse) {
    if (absl::Status s = Plan(layer, mask, /*prefetch=*/false); !s.ok()) return s;
  }
  l.prefetched = false;
  l.step_open = true;
  ++l.stats.steps;
  plan->hit_slots = l.plan.hit_slots;
  plan->entering_slots = l.plan.entering_slots;
  plan->chunk_neurons = options_.chunk_neurons;
  return absl::OkStatus();
}

absl::Status FlashModelCache::Prefetch(size_t layer, absl::Span<const uint32_t> mask) {
  if (layer >= layers_.size()) {
    return absl::OutOfRangeError(
        absl::StrFormat("layer %d out of range [0, %d)", layer, layers_.size()));
  }
  if (layers_[layer]->step_open) {
    return absl::FailedPreconditionError(
        absl::StrFormat("layer %d: a step is open; FinishStep it first", layer));
  }
  return Plan(layer, mask, /*prefetch=*/true);
}

absl::Status FlashModelCache::PrefetchGuess(size_t layer, absl::Span<const uint32_t> mask) {
  if (layer >= layers_.size()) {
    return absl::OutOfRangeError(
        absl::StrFormat("layer %d out of range [0, %d)", layer, layers_.size()));
  }
  if (layers_[layer]->step_open) {
    return absl::FailedPreconditionError(
        absl::StrFormat("layer %d: a step is open; FinishStep it first", layer));
  }
  return Plan(layer, mask, /*prefetch=*/true, /*guess=*/true);
}

absl::Status FlashModelCache::WaitReads(size_t layer) {
  if (layer >= layers_.size()) {
    return absl::OutOfRangeError(
        absl::StrFormat("layer %d out of range [0, %d)", layer, layers_.size()));
  }
  std::unique_lock<std::mutex> lock(mu_);
  WaitIdle(*layers_[layer], lock);
  return absl::OkStatus();
}

absl::Status FlashModelCache::WaitChunk(size_t layer, size_t chunk) {
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  if (chunk >= l.chunk_left.size()) {
    return absl::OutOfRangeError(absl::StrFormat("layer %d: chunk %d of %d", layer, chunk,
                                                 l.chunk_left.size()));
  }
  cv_.wait(lock, [&] { return l.chunk_left[chunk] == 0; });
  return l.chunk_status[chunk];
}

absl::Status FlashModelCache::FinishStep(size_t layer) {
  if (layer >= layers_.size() || !layers_[layer]->step_open) {
    return absl::FailedPreconditionError(absl::StrFormat("layer %d: no open step", layer));
  }
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  WaitIdle(l, lock);
  l.step_open = false;
  ApplyFailures(l);
  l.stats.resident = l.planner.resident();
  return std::exchange(l.job_status, absl::OkStatus());
}

absl::Status FlashModelCache::Verify(size_t layer) const {
  if (layer >= layers_.size()) {
    return absl::OutOfRangeError(
        absl::StrFormat("layer %d out of range [0, %d)", layer, layers_.size()));
  }
  const Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !l.busy; });
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
  }
  return sum;
}

FlashFootprint FlashModelCache::footprint() const {
  FlashFootprint f;
  f.budget_bytes = options_.budget_bytes;
  f.slot_bytes = pool_.size();
  for (const auto& lane : lanes_) f.reader_bytes += lane->reader->memory_bytes();
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
