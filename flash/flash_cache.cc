#include "flash/flash_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_format.h"
#include "flash/flash_cache_internal.h"

namespace sparse_mlp::flash {
namespace {

size_t RoundUp(size_t v, size_t a) { return (v + a - 1) / a * a; }

// Bookkeeping bytes of one layer with `capacity` slots: the planner's, the
// two jobs', the slots' and the step's arrays (Layer reserves exactly these).
size_t LayerBytes(size_t neurons, size_t capacity, size_t chunk) {
  const size_t chunks = capacity / chunk + 1;
  return neurons * (4 + 8 + 1 + 1 + 4 + 1) + capacity * 4 * 7 /* planner */ +
         2 * capacity * (sizeof(store::BundleRequest) + 4 + 4 + 1) /* jobs */ +
         capacity * (1 + 4 + 1 + 4) /* per slot */ + capacity * 4 * 2 /* waited, repairs */ +
         chunks * (4 + sizeof(absl::Status)) + neurons * 4 /* prefetched mask */;
}

}  // namespace

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
  c->make_engine_ = make_engine;
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
           scratch + lane_count * 2 * layers * sizeof(size_t) /* queues */ +
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
    lane->queue.assign(2 * layers, 0);  // each layer's two jobs
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

void FlashModelCache::Landed(Layer& l, size_t which, size_t k, const absl::Status& status) {
  Job& job = l.jobs[which];
  const uint32_t s = job.slots[k], c = l.waiter[s];
  l.pending[s] = 0;
  if (!status.ok()) {
    if (which == kAhead && c != kNoSlot) {
      l.reread[s] = 1;  // the open step needs it: WaitChunk reads it again
    } else {
      job.failed[k] = 1;
      if (c != kNoSlot) {
        if (l.chunk_status[c].ok()) l.chunk_status[c] = status;
        if (l.step_status.ok()) l.step_status = status;
      }
    }
  }
  bool notify = false;
  if (c != kNoSlot) {
    l.waiter[s] = kNoSlot;
    notify = --l.chunk_left[c] == 0;
  }
  if (--job.left == 0) {
    job.busy = false;
    notify = true;
  }
  if (notify) cv_.notify_all();
}

void FlashModelCache::IoLoop(Lane& lane) {
  // Bundle `index` of the batch landed (under mu_).
  auto landed = [&](size_t index, const absl::Status& status) {
    size_t j = 0;
    while (index >= lane.active[j].base + lane.active[j].count) ++j;  // few jobs: a scan
    const ActiveJob& job = lane.active[j];
    std::lock_guard<std::mutex> guard(mu_);
    Landed(*layers_[job.layer], job.job, index - job.base, status);
  };
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (lane.active.empty()) {
      lane.work.wait(lock, [&] { return stop_ || lane.size > 0; });
      if (lane.size == 0) return;  // stopping, nothing in flight
    }
    // Every queued job joins the batch in flight (or starts one).
    while (lane.size > 0) {
      const size_t entry = lane.queue[lane.head];
      const size_t layer = entry / 2, which = entry % 2;
      const Job& job = layers_[layer]->jobs[which];
      const size_t n = job.requests.size();
      size_t base = 0;
      if (!lane.active.empty()) {
        const ActiveJob& last = lane.active.back();
        base = last.base + last.count;
        if (base + n > lane.batch_limit) break;  // the batch must drain first
      }
      lane.head = (lane.head + 1) % lane.queue.size();
      --lane.size;
      lane.active.push_back({layer, which, base, n});
      lock.unlock();
      // The job's requests stay as they are while it runs (its layer plans
      // it again only once it is done).
      const absl::Status s = lane.reader->Append(job.requests);
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
  cv_.wait(lock, [&] { return !l.busy(); });
}

void FlashModelCache::ForgetAhead(Layer& l) {
  for (uint32_t s : l.jobs[kAhead].slots) l.ahead_request[s] = kNoSlot;
  l.ahead_live = false;
}

void FlashModelCache::ApplyFailures(Layer& l, size_t which) {
  Job& job = l.jobs[which];
  for (size_t k = 0; k < job.failed.size(); ++k) {
    if (!job.failed[k]) continue;
    // Unless a later plan gave the slot to another neuron meanwhile.
    if (l.planner.slot_of(job.neurons[k]) == job.slots[k]) l.planner.Unload(job.neurons[k]);
    ++l.stats.failed_loads;
    job.failed[k] = 0;
  }
}

void FlashModelCache::Issue(Layer& l, size_t layer, size_t which,
                            absl::Span<const uint32_t> neurons, absl::Span<const uint32_t> slots) {
  Job& job = l.jobs[which];
  const size_t n = neurons.size();
  job.requests.resize(n);
  job.neurons.assign(neurons.begin(), neurons.end());
  job.slots.assign(slots.begin(), slots.end());
  job.failed.assign(n, 0);
  uint8_t* base = pool_.data() + layer * capacity_ * slot_stride_;
  for (size_t k = 0; k < n; ++k) {
    job.requests[k] = {layer, neurons[k], base + slots[k] * slot_stride_};
    l.pending[slots[k]] = 1;
  }
  job.left = n;
  job.busy = n > 0;
  if (n > 0) {
    Lane& lane = *lanes_[layer % lanes_.size()];
    lane.queue[(lane.head + lane.size) % lane.queue.size()] = 2 * layer + which;
    ++lane.size;
    lane.work.notify_one();
  }
}

absl::Status FlashModelCache::CheckLayer(size_t layer, bool no_step) const {
  if (layer >= layers_.size()) {
    return absl::OutOfRangeError(
        absl::StrFormat("layer %d out of range [0, %d)", layer, layers_.size()));
  }
  if (no_step && layers_[layer]->step_open) {
    return absl::FailedPreconditionError(
        absl::StrFormat("layer %d: a step is open; FinishStep it first", layer));
  }
  return absl::OkStatus();
}

absl::Status FlashModelCache::PlanError(size_t layer, const absl::Status& s) const {
  return absl::InvalidArgumentError(
      absl::StrFormat("%s layer %d: %s (%d bytes each; budget %d bytes)", path_, layer, s.message(),
                      slot_stride_, options_.budget_bytes));
}

absl::Status FlashModelCache::PlanAhead(size_t layer, absl::Span<const uint32_t> mask, bool guess,
                                        absl::Span<const uint32_t> rank) {
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  WaitIdle(l, lock);
  ApplyFailures(l, kAhead);
  ApplyFailures(l, kStep);
  // The planner is this (the stepping) thread's: planned without the lock,
  // so the I/O threads report and refill meanwhile.
  lock.unlock();
  ResidencyPlan plan;
  if (absl::Status s = guess ? l.planner.PlanGuess(mask, &plan, rank) : l.planner.Plan(mask, &plan);
      !s.ok()) {
    return PlanError(layer, s);
  }
  lock.lock();
  if (!guess) l.stats.hits += plan.hit_slots.size() + plan.guessed_hit_slots.size();
  l.stats.loads += plan.entering.size();
  l.stats.evictions += plan.evicted;
  l.stats.expirations += plan.expired;
  l.plan = plan;
  ForgetAhead(l);  // the earlier job's
  for (size_t k = 0; k < plan.entering_slots.size(); ++k) {
    l.ahead_request[plan.entering_slots[k]] = static_cast<uint32_t>(k);
  }
  l.ahead_live = true;
  l.ahead_guess = guess;
  if (!guess) l.prefetch_mask.assign(mask.begin(), mask.end());
  Issue(l, layer, kAhead, plan.entering, plan.entering_slots);
  return absl::OkStatus();
}

absl::Status FlashModelCache::BeginStep(size_t layer, absl::Span<const uint32_t> mask,
                                        FlashStepPlan* plan) {
  if (absl::Status s = CheckLayer(layer, /*no_step=*/true); !s.ok()) return s;
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  const bool reuse = l.ahead_live && !l.ahead_guess && absl::MakeConstSpan(l.prefetch_mask) == mask;
  absl::Span<const uint32_t> ready, ahead, entering, entering_slots;
  if (reuse) {  // the Prefetch's plan: its reads are this step's
    ready = l.plan.hit_slots;
    ahead = l.jobs[kAhead].slots;
  } else {
    if (!(l.ahead_live && l.ahead_guess)) {
      // A Prefetch of another mask (a token of its own), or reads of an
      // answered guess: planned after they land.
      WaitIdle(l, lock);
      ApplyFailures(l, kAhead);
      ForgetAhead(l);
    }
    // Over a guess in flight: the plan does not depend on which of its
    // reads landed (failed ones are still resident to the planner); the
    // guessed hits are waited for per chunk.
    ResidencyPlan p;
    lock.unlock();  // as in PlanAhead
    absl::Status planned = l.planner.Plan(mask, &p);
    lock.lock();
    if (!planned.ok()) return PlanError(layer, planned);
    l.stats.hits += p.hit_slots.size() + p.guessed_hit_slots.size();
    l.stats.loads += p.entering.size();
    l.stats.evictions += p.evicted;
    l.stats.expirations += p.expired;
    l.plan = p;
    ready = p.hit_slots;
    ahead = p.guessed_hit_slots;
    entering = p.entering;
    entering_slots = p.entering_slots;
  }
  const size_t chunk = options_.chunk_neurons;
  l.waited.assign(ahead.begin(), ahead.end());
  l.waited.insert(l.waited.end(), entering_slots.begin(), entering_slots.end());
  const size_t chunks = (l.waited.size() + chunk - 1) / chunk;
  // The forward takes ascending slots: the chunk where the guessed hits
  // end and the entering neurons begin is sorted (its members stay).
  if (const size_t j = ahead.size() / chunk; ahead.size() % chunk != 0 && j < chunks) {
    const auto first = l.waited.begin() + j * chunk;
    std::sort(first, first + std::min(chunk, l.waited.size() - j * chunk));
  }
  l.chunk_left.assign(chunks, 0);
  l.chunk_status.assign(chunks, absl::OkStatus());
  l.step_status = absl::OkStatus();
  l.repair_failed.clear();
  Job& a = l.jobs[kAhead];
  for (size_t i = 0; i < ahead.size(); ++i) {
    const uint32_t s = ahead[i], k = l.ahead_request[s];
    if (k == kNoSlot) continue;  // landed before (an earlier guess)
    if (l.pending[s]) {
      l.waiter[s] = static_cast<uint32_t>(i / chunk);
      ++l.chunk_left[i / chunk];
    } else if (a.failed[k]) {
      a.failed[k] = 0;
      l.reread[s] = 1;
    }
  }
  // A slot the plan took from a guessed neuron whose read is still in
  // flight: the step's reads wait for the guess (the guessed neurons stay
  // longest among the latest token's, so this is rare).
  bool taken = false;
  for (uint32_t s : entering_slots) taken = taken || l.pending[s];
  if (taken) {
    ++l.stats.guess_waits;
    cv_.wait(lock, [&] { return !a.busy; });
    ApplyFailures(l, kAhead);
  }
  for (size_t i = 0; i < entering_slots.size(); ++i) {
    const size_t c = (ahead.size() + i) / chunk;
    l.waiter[entering_slots[i]] = static_cast<uint32_t>(c);
    ++l.chunk_left[c];
  }
  Issue(l, layer, kStep, entering, entering_slots);
  l.ahead_live = false;
  l.step_open = true;
  ++l.stats.steps;
  plan->hit_slots = ready;
  plan->entering_slots = l.waited;
  plan->chunk_neurons = chunk;
  return absl::OkStatus();
}

absl::Status FlashModelCache::Prefetch(size_t layer, absl::Span<const uint32_t> mask) {
  if (absl::Status s = CheckLayer(layer, /*no_step=*/true); !s.ok()) return s;
  return PlanAhead(layer, mask, /*guess=*/false);
}

absl::Status FlashModelCache::PrefetchGuess(size_t layer, absl::Span<const uint32_t> mask,
                                            absl::Span<const uint32_t> rank) {
  if (absl::Status s = CheckLayer(layer, /*no_step=*/true); !s.ok()) return s;
  return PlanAhead(layer, mask, /*guess=*/true, rank);
}

absl::Status FlashModelCache::Pin(size_t layer, absl::Span<const uint32_t> neurons) {
  if (absl::Status s = CheckLayer(layer, /*no_step=*/true); !s.ok()) return s;
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  WaitIdle(l, lock);
  if (absl::Status s = l.planner.Pin(neurons); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s layer %d: %s", path_, layer, s.message()));
  }
  return absl::OkStatus();
}

absl::Status FlashModelCache::WaitReads(size_t layer) {
  if (absl::Status s = CheckLayer(layer); !s.ok()) return s;
  std::unique_lock<std::mutex> lock(mu_);
  WaitIdle(*layers_[layer], lock);
  return absl::OkStatus();
}

absl::Status FlashModelCache::Repair(size_t layer, uint32_t slot) {
  if (repair_ == nullptr) {  // opened at the first failed read a step needs
    store::ReaderOptions o = options_.reader;
    o.queue_depth = 1;
    absl::StatusOr<std::unique_ptr<store::BundleReader>> r =
        store::BundleReader::Open(path_, o, make_engine_);
    if (!r.ok()) return r.status();
    repair_ = *std::move(r);
  }
  const uint32_t neuron = layers_[layer]->planner.neuron_of(slot);
  return repair_->Read({{layer, neuron, pool_.data() + (layer * capacity_ + slot) * slot_stride_}});
}

absl::Status FlashModelCache::WaitChunk(size_t layer, size_t chunk) {
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  if (!l.step_open || chunk >= l.chunk_left.size()) {
    return absl::OutOfRangeError(absl::StrFormat("layer %d: chunk %d of %d", layer, chunk,
                                                 l.step_open ? l.chunk_left.size() : 0));
  }
  cv_.wait(lock, [&] { return l.chunk_left[chunk] == 0; });
  if (!l.chunk_status[chunk].ok()) return l.chunk_status[chunk];
  // Guessed neurons whose reads failed: read again, here (a fault path).
  const size_t c = options_.chunk_neurons;
  const size_t end = std::min(l.waited.size(), (chunk + 1) * c);
  for (size_t i = chunk * c; i < end; ++i) {
    const uint32_t s = l.waited[i];
    if (!l.reread[s]) continue;
    l.reread[s] = 0;
    lock.unlock();  // the slot is this thread's: no read is in flight into it
    const absl::Status st = Repair(layer, s);
    lock.lock();
    if (!st.ok()) {
      l.repair_failed.push_back(l.planner.neuron_of(s));
      l.chunk_status[chunk] = st;
      if (l.step_status.ok()) l.step_status = st;
      return st;
    }
  }
  return absl::OkStatus();
}

absl::Status FlashModelCache::FinishStep(size_t layer) {
  if (layer >= layers_.size() || !layers_[layer]->step_open) {
    return absl::FailedPreconditionError(absl::StrFormat("layer %d: no open step", layer));
  }
  Layer& l = *layers_[layer];
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !l.jobs[kStep].busy; });
  for (uint32_t s : l.waited) {
    l.waiter[s] = kNoSlot;  // guessed reads the step stopped waiting for (an error)
    if (l.reread[s]) {      // failed, and not read again: not resident
      l.reread[s] = 0;
      l.repair_failed.push_back(l.planner.neuron_of(s));
    }
  }
  for (uint32_t j : l.repair_failed) {
    l.planner.Unload(j);
    ++l.stats.failed_loads;
  }
  l.repair_failed.clear();
  ApplyFailures(l, kStep);
  if (!l.jobs[kAhead].busy) ApplyFailures(l, kAhead);
  l.step_open = false;
  l.stats.resident = l.planner.resident();
  return std::exchange(l.step_status, absl::OkStatus());
}

}  // namespace sparse_mlp::flash
