// WeightCache: updates (one mask, UpdateWith, UpdateMany, CatchUp) in three
// phases: BeginApply (diff, growth), PlanApply, FinishApply.
#include <algorithm>
#include <string>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_format.h"
#include "cache/weight_cache.h"
#include "cache/weight_cache_internal.h"
#include "gather/row_gather.h"
#include "platform/threads.h"

namespace sparse_mlp::cache {

using internal::ConcurrentMutationError;
using internal::PartData;

static_assert(WeightCache::kMaxBatchCaches * 2 <= gather::kMaxBatchJobs,
              "UpdateMany's jobs must fit one gather batch");

absl::Status WeightCache::Update(const MaskInput& mask) { return UpdateFrom(mask, nullptr); }

absl::Status WeightCache::UpdateWith(const MaskInput& mask, PlanExecutor execute) {
  return UpdateFrom(mask, &execute);
}

absl::Status WeightCache::UpdateFrom(const MaskInput& mask, const PlanExecutor* execute) {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError(execute ? "UpdateWith" : "Update");
  if (absl::Status s =
          mask.Materialize(options_.intermediate_size, options_.simd, &selector_, &incoming_);
      !s.ok()) {
    return s;
  }
  return ApplyIncoming(/*respect_tolerance=*/true, execute);
}

absl::Status WeightCache::CatchUp() {
  MutationScope scope(mutation_);
  if (!scope.held()) return ConcurrentMutationError("CatchUp");
  if (absl::Status s = incoming_.AssignWords(requested_.words()); !s.ok()) return s;
  return ApplyIncoming(/*respect_tolerance=*/false);
}

absl::Status WeightCache::BeginApply(bool respect_tolerance, PendingUpdate* pending) {
  // The diff itself is the change count (an unchanged mask costs one XOR +
  // popcount pass inside it and extracts nothing).
  diff::DiffOptions diff_options;
  diff_options.num_threads = options_.num_threads;
  diff_options.simd = options_.simd;
  // Sizes match (checked by every caller), so this cannot fail.
  (void)diff::ComputeMaskDiff(applied_, incoming_, &diff_, diff_options);
  *pending = PendingUpdate();
  UpdateStats& stats = pending->stats;
  stats.changed_neurons = diff_.added.size() + diff_.removed.size();
  if (stats.changed_neurons == 0 ||
      (respect_tolerance && stats.changed_neurons < options_.tolerance)) {
    stats.skipped = stats.changed_neurons != 0;
    return absl::OkStatus();
  }
  pending->apply = true;
  pending->old_active = num_active();
  pending->new_active = num_active() + diff_.added.size() - diff_.removed.size();
  if (pending->new_active > capacity_) {
    if (absl::Status s = Grow(pending->new_active); !s.ok()) return s;
    stats.grew = true;
  }
  return absl::OkStatus();
}

void WeightCache::PlanApply(const PendingUpdate& pending) {
  const size_t rewritten = std::max(diff_.added.size(), diff_.removed.size());
  if (static_cast<double>(rewritten) >=
      options_.repack_fraction * static_cast<double>(pending.new_active)) {
    incoming_.ToIndices(&active_scratch_, options_.simd);
    PlanRepack(active_scratch_, &map_, &plan_);
  } else {
    PlanDifferentialUpdate(diff_.added, diff_.removed, &map_, &plan_);
  }
}

void WeightCache::FinishApply(PendingUpdate pending) {
  UpdateStats& stats = pending.stats;
  if (!pending.apply) {
    std::swap(requested_, incoming_);
    lag_ = stats.changed_neurons;
  } else {
    if (options_.concat_gate_up) {
      concat_.Apply(plan_, pending.old_active, pending.new_active,
                    {src_[kGatePart], options_.intermediate_size, src_stride_[kGatePart]},
                    {src_[kUpPart], options_.intermediate_size, src_stride_[kUpPart]},
                    options_.num_threads, options_.simd);
    }
    std::swap(applied_, incoming_);
    (void)requested_.AssignWords(applied_.words());
    lag_ = 0;
    ++version_;
    stats.rows_loaded = plan_.loads.size();
    stats.rows_moved = plan_.moves.size();
    stats.repacked = plan_.repack;
    const size_t matrices = options_.has_gate ? 3 : 2;
    stats.bytes_copied = (stats.rows_loaded + stats.rows_moved) * row_bytes() * matrices;
  }
  last_update_ = stats;
  ++totals_.updates;
  totals_.skipped += stats.skipped ? 1 : 0;
  totals_.changed_neurons += stats.changed_neurons;
  totals_.rows_loaded += stats.rows_loaded;
  totals_.rows_moved += stats.rows_moved;
  totals_.bytes_copied += stats.bytes_copied;
  totals_.repacks += stats.repacked ? 1 : 0;
  totals_.growths += stats.grew ? 1 : 0;
}

absl::Status WeightCache::ApplyIncoming(bool respect_tolerance, const PlanExecutor* execute) {
  PendingUpdate pending;
  if (absl::Status s = BeginApply(respect_tolerance, &pending); !s.ok()) return s;
  if (pending.apply) {
    PlanApply(pending);
  } else {
    plan_.Clear();  // nothing to copy: an executor sees the current set
  }
  if (execute != nullptr) {
    (*execute)(MakePlannedUpdate());
  } else if (pending.apply) {
    ExecutePlan();
  }
  FinishApply(pending);
  return absl::OkStatus();
}

void WeightCache::WritePlanJobs(gather::RowPart* parts, gather::RowGatherJob* jobs) const {
  const size_t rb = row_bytes();
  // Loads: one job, the parts of each loaded neuron in slot order, so a
  // neuron's rows are read back to back (one run of a fused source row).
  // With fused sources, parts that are also adjacent in their packed slot
  // are one part of the summed length (the layout says so, nothing is
  // probed): kFusedRows loads a neuron as one piece, kInterleavedGateUp its
  // gate and up as one.
  gather::RowPart* load_parts = parts;
  size_t num_load_parts = 0;
  int last = -1;
  for (int p = kGatePart; p <= kDownPart; ++p) {
    if (!HasPart(p)) continue;
    const int b = slots_.buffer[p];
    if (last >= 0 && fused_sources_ && slots_.buffer[last] == b &&
        slots_.offset[p] == slots_.offset[last] + rb) {
      load_parts[num_load_parts - 1].row_bytes += rb;
    } else {
      load_parts[num_load_parts++] = {
          {src_[p], options_.intermediate_size, src_stride_[p]},
          {PartData(*packed_[b], slots_.offset[p]), capacity_, slots_.slot_bytes[b]},
          rb};
    }
    last = p;
  }
  // Moves: whole slots of each packed buffer, one job.
  gather::RowPart* move_parts = parts + num_load_parts;
  size_t num_move_parts = 0;
  for (size_t b = 0; b < 3; ++b) {
    if (slots_.slot_bytes[b] == 0) continue;
    move_parts[num_move_parts++] = {{packed_[b]->data(), capacity_, slots_.slot_bytes[b]},
                                    {packed_[b]->data(), capacity_, slots_.slot_bytes[b]},
                                    slots_.slot_bytes[b]};
  }
  jobs[0] = {absl::MakeConstSpan(load_parts, num_load_parts), plan_.loads};
  jobs[1] = {absl::MakeConstSpan(move_parts, num_move_parts), plan_.moves};
}

void WeightCache::ExecutePlan() {
  gather::RowPart parts[kMaxPlanParts];
  gather::RowGatherJob jobs[kPlanJobs];
  WritePlanJobs(parts, jobs);
  RunPlanJobs(jobs, options_.num_threads, options_.simd);
}

void WeightCache::RunPlanJobs(absl::Span<const gather::RowGatherJob> jobs, int num_threads,
                              SimdLevel simd) {
  const absl::Status s = gather::GatherRowsBatch(jobs, num_threads, simd);
  if (!s.ok()) {
    // The plans index only valid neurons and slots below capacity; a
    // failure here is a bug in the planner, not a caller error.
    ABSL_RAW_LOG(FATAL, "sparse_mlp: internal error executing a cache update: %s",
                 std::string(s.message()).c_str());
  }
}

absl::Status WeightCache::UpdateMany(absl::Span<const CacheUpdate> updates, int num_threads,
                                     SimdLevel simd) {
  if (absl::Status s = ValidateNumThreads(num_threads); !s.ok()) return s;
  if (updates.size() > kMaxBatchCaches) {
    return absl::InvalidArgumentError(absl::StrFormat("a batch updates at most %u caches, got %u",
                                                      kMaxBatchCaches, updates.size()));
  }
  for (size_t i = 0; i < updates.size(); ++i) {
    const CacheUpdate& u = updates[i];
    if (u.cache == nullptr || u.mask == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrFormat("update %u has a null %s", i, u.cache == nullptr ? "cache" : "mask"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (updates[j].cache == u.cache) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "updates %u and %u name the same cache; a batch updates a cache once", j, i));
      }
    }
    const size_t neurons = u.cache->options_.intermediate_size;
    if (u.mask->size() != neurons) {
      return absl::InvalidArgumentError(
          absl::StrFormat("update %u: mask has %u neurons, the cache has intermediate_size %u", i,
                          u.mask->size(), neurons));
    }
  }
  // Every cache's flag, or none (released on every return).
  struct HeldFlags {
    absl::InlinedVector<MutationFlag*, kInlineBatchCaches> flags;
    ~HeldFlags() {
      for (MutationFlag* f : flags) f->Release();
    }
  } held;
  for (size_t i = 0; i < updates.size(); ++i) {
    if (!updates[i].cache->mutation_.TryAcquire()) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "WeightCache::UpdateMany: the cache of update %u is being mutated by another "
          "call; WeightCache is thread-compatible: serialize mutating calls on one object",
          i));
    }
    held.flags.push_back(&updates[i].cache->mutation_);
  }
  // Each cache's diff, growth and plan are its own (the arena is
  // thread-safe), so the threads share them out, cache by cache; nested
  // regions inside (a diff's or growth's own threads) run on one thread.
  const size_t n = updates.size();
  auto for_each_cache = [&](auto&& fn) {
    if (num_threads <= 1 || n <= 1) {
      for (size_t i = 0; i < n; ++i) fn(i);
      return;
    }
#pragma omp parallel for num_threads(num_threads) schedule(dynamic, 1)
    for (long i = 0; i < static_cast<long>(n); ++i) fn(static_cast<size_t>(i));
  };
  // Phase 1: diffs and capacity. A growth failure returns here, before any
  // cache's map or rows change.
  absl::InlinedVector<PendingUpdate, kInlineBatchCaches> pending(n);
  absl::InlinedVector<absl::Status, kInlineBatchCaches> status(n);
  for_each_cache([&](size_t i) {
    WeightCache& cache = *updates[i].cache;
    (void)cache.incoming_.AssignWords(updates[i].mask->words());  // sizes match
    status[i] = cache.BeginApply(/*respect_tolerance=*/true, &pending[i]);
  });
  for (size_t i = 0; i < n; ++i) {
    if (!status[i].ok()) {
      return absl::Status(status[i].code(),
                          absl::StrFormat("update %u: %s", i, status[i].message()));
    }
  }
  // Phase 2: the plans, then all their copies as one batch (one parallel
  // region, bytes split evenly over the threads whatever each cache's
  // churn).
  absl::InlinedVector<gather::RowPart, kMaxPlanParts * kInlineBatchCaches> parts(n * kMaxPlanParts);
  absl::InlinedVector<gather::RowGatherJob, kPlanJobs * kInlineBatchCaches> jobs(n * kPlanJobs);
  for_each_cache([&](size_t i) {
    if (!pending[i].apply) return;
    WeightCache& cache = *updates[i].cache;
    cache.PlanApply(pending[i]);
    cache.WritePlanJobs(&parts[i * kMaxPlanParts], &jobs[i * kPlanJobs]);
  });
  if (!jobs.empty()) RunPlanJobs(jobs, num_threads, simd);
  for (size_t i = 0; i < updates.size(); ++i) updates[i].cache->FinishApply(pending[i]);
  return absl::OkStatus();
}

PlannedUpdate WeightCache::MakePlannedUpdate() const {
  PlannedUpdate p;
  p.num_active = num_active();
  p.row_bytes = row_bytes();
  for (int part = kGatePart; part <= kDownPart; ++part) {
    if (!HasPart(part)) continue;
    const int b = slots_.buffer[part];
    p.source[part] = src_[part];
    p.source_stride[part] = src_stride_[part];
    p.packed[part] = PartData(*packed_[b], slots_.offset[part]);
    p.packed_stride[part] = slots_.slot_bytes[b];
  }
  p.loads = plan_.loads;
  p.moves = plan_.moves;
  p.slot_to_neuron = map_.slot_to_neuron;
  return p;
}

}  // namespace sparse_mlp::cache
