// The main job: a differential WeightCache update against the memcpy floor
// of the bytes it moves and against full rebuilds, in one run.
//
//   bazel run //bench:cache                      # default table, ~15 seconds
//   bazel run //bench:cache -- --help            # every option
//
// For each element type and churn (fraction of the active set replaced per
// step) it replays a mask sequence of --steps steps through one WeightCache
// per packed layout (--layouts: split, the library's default, and fused, the
// fastest; their updates alternate within each step) and measures, per
// step and interleaved so all columns see the same machine:
//   update     WeightCache::Update (diff + plan + parallel row copies)
//   floor      memcpy (gather::ParallelCopy) of exactly the bytes the update
//              copied, same threads
//   rebuild_a  a naive cache's step: gather all active gate/up rows and the
//              down columns from [H, I] (strided) into packed buffers
//   rebuild_b  the same full rebuild from a neuron-major ([I, H]) down
// and prints medians. Construction (copies + transpose of down) is compared
// with a plain copy of the three matrices. Under the table, the goals of
// the main job (PrintGoals) are judged on this run's medians.
//
// Replay: --replay=FILE reads a mask sequence instead of generating one:
// text, one mask per line as I characters '0'/'1' (other characters are an
// error), or --replay_format=bytes: a raw [steps, I] byte matrix, non-zero
// bytes active.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/types/span.h"
#include "nlohmann/json.hpp"
#include "bench/cache_eviction.h"
#include "bench/masks.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/timing.h"
#include "cache/weight_cache.h"
#include "diff/neuron_mask.h"
#include "gather/parallel_copy.h"
#include "gather/row_gather.h"
#include "gather/transpose.h"
#include "memory/aligned_buffer.h"
#include "platform/simd_level.h"

ABSL_FLAG(std::string, model, "llama-3.2-3b",
          "shape preset: llama-3.2-1b, llama-3.2-3b, qwen2-1.5b, llama-2-7b, "
          "mistral-7b (= llama-3-8b)");
ABSL_FLAG(std::string, dtypes, "float32,bfloat16",
          "comma-separated element types: float32, bfloat16, float16");
ABSL_FLAG(double, active, 0.5, "active fraction A / I of each mask");
ABSL_FLAG(std::string, churn, "0,0.02,0.10,0.25,1.0",
          "comma-separated fractions of the active set replaced per step");
ABSL_FLAG(int, threads, 2, "threads for every copy (update, floor, rebuilds)");
ABSL_FLAG(int, steps, 20, "measured update steps per case");
ABSL_FLAG(int, batch, 1,
          "tokens per step of a generated sequence: each step's mask is the "
          "union of this many per-token masks (a replay uses its masks as read)");
ABSL_FLAG(bool, gate, true, "gated MLP (false: up and down only)");
ABSL_FLAG(std::string, layouts, "split,fused",
          "comma-separated packed layouts: split (three [A, H] arrays, the "
          "default of WeightCacheOptions), interleaved ([A, 2H] gate|up + "
          "down), fused (one [A, 3H] array)");
ABSL_FLAG(double, repack_fraction,
          sparse_mlp::cache::WeightCacheOptions::kDefaultRepackFraction,
          "repack when max(|added|, |removed|) >= this fraction of the new "
          "active count (1.0: only when every slot changes)");
ABSL_FLAG(std::string, simd, "best",
          "kernel instruction set: best, avx512, avx2 or scalar (the portable "
          "reference paths, for comparison)");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");
ABSL_FLAG(std::string, replay, "", "replay a mask sequence from this file");
ABSL_FLAG(std::string, replay_format, "text", "text (0/1 lines) or bytes");

namespace sparse_mlp::bench {
namespace {

using cache::DType;

memory::AlignedBuffer Buffer(size_t bytes, int fill) {
  memory::AlignedBuffer b = *memory::AlignedBuffer::Allocate(
      std::max<size_t>(bytes, 64), memory::kCacheLineBytes,
      memory::HugePageAdvice::kHugePages);
  std::memset(b.data(), fill, b.size());
  return b;
}

absl::StatusOr<std::vector<diff::NeuronMask>> ReadReplay(const std::string& path,
                                                         const std::string& format,
                                                         size_t n) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("cannot open %s", path));
  std::vector<diff::NeuronMask> masks;
  if (format == "bytes") {
    std::vector<uint8_t> row(n);
    while (in.read(reinterpret_cast<char*>(row.data()), static_cast<std::streamsize>(n))) {
      masks.push_back(*diff::NeuronMask::FromBytes(row));
    }
    if (in.gcount() != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: %d trailing bytes, not a whole mask of %u", path, in.gcount(), n));
    }
  } else if (format == "text") {
    std::string line;
    for (int line_no = 1; std::getline(in, line); ++line_no) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) continue;
      if (line.size() != n) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s:%d: mask has %u characters, the model has %u neurons", path, line_no,
            line.size(), n));
      }
      std::vector<uint8_t> bytes(n);
      for (size_t i = 0; i < n; ++i) {
        if (line[i] != '0' && line[i] != '1') {
          return absl::InvalidArgumentError(absl::StrFormat(
              "%s:%d: character %u is '%c', expected 0 or 1", path, line_no, i + 1, line[i]));
        }
        bytes[i] = line[i] == '1';
      }
      masks.push_back(*diff::NeuronMask::FromBytes(bytes));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrFormat("--replay_format must be text or bytes, got %s", format));
  }
  if (masks.size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s holds %u masks; a replay needs at least 2", path, masks.size()));
  }
  return masks;
}

struct CaseResult {
  std::string dtype, layout, churn;
  double update_us, floor_us, rebuild_a_ms, rebuild_b_ms, moved_mb;
  size_t active;

  // The derived columns, shared by the table and the goals.
  double x_floor() const { return floor_us > 0 ? update_us / floor_us : 0; }
  double speedup_a() const { return rebuild_a_ms * 1e3 / update_us; }
  double speedup_b() const { return rebuild_b_ms * 1e3 / update_us; }
};

struct Weights {
  memory::AlignedBuffer gate, up, down, down_neuron_major;
};

// The main job's goals (issue #4), judged on this run's medians and
// printed under the table, so a run shows by itself which goals it met. The
// thresholds are set for the default workload (llama-3.2-3b, 2 threads); a
// goal whose cases were not run (say --churn without 0.10) says so.
void PrintGoals(const std::vector<CaseResult>& results,
                const std::vector<std::pair<std::string, double>>& construction_ratio) {
  constexpr double kMaxFloorRatio = 1.25, kMinSpeedupA = 8.0, kMaxNoChangeUs = 5.0,
                   kMaxConstructionRatio = 2.0;
  auto near = [](double a, double b) { return std::abs(a - b) < 1e-9; };
  // One goal's line: its value and verdict, or "not run" (empty value).
  auto print_goal = [](const char* dtype, const std::string& goal, const std::string& value,
                       bool met) {
    std::printf("  %-9s %s: %s\n", dtype, goal.c_str(),
                value.empty() ? "not run"
                              : absl::StrCat(value, met ? " met" : " MISSED").c_str());
  };
  std::printf("\ngoals (set for llama-3.2-3b, 2 threads), judged on this run:\n");
  for (const auto& [dtype, ratio] : construction_ratio) {
    const CaseResult* worst_floor = nullptr;  // highest x_floor at churn 0.02-0.25
    const CaseResult* slowest_a = nullptr;    // lowest speedup_a at churn 0.10
    const CaseResult* slowest_still = nullptr;  // slowest no-change update
    for (const CaseResult& r : results) {
      double churn;
      if (r.dtype != dtype || !absl::SimpleAtod(r.churn, &churn)) continue;
      if (churn >= 0.02 - 1e-9 && churn <= 0.25 + 1e-9 && r.floor_us > 0 &&
          (worst_floor == nullptr || r.x_floor() > worst_floor->x_floor())) {
        worst_floor = &r;
      }
      if (near(churn, 0.10) && (slowest_a == nullptr || r.speedup_a() < slowest_a->speedup_a())) {
        slowest_a = &r;
      }
      if (churn == 0 && (slowest_still == nullptr || r.update_us > slowest_still->update_us)) {
        slowest_still = &r;
      }
    }
    print_goal(dtype.c_str(),
               absl::StrFormat("update <= %.2fx memcpy floor at churn 0.02-0.25", kMaxFloorRatio),
               worst_floor == nullptr ? ""
                                      : absl::StrFormat("worst %.2f (%s, churn %s)",
                                                        worst_floor->x_floor(),
                                                        worst_floor->layout, worst_floor->churn),
               worst_floor != nullptr && worst_floor->x_floor() <= kMaxFloorRatio);
    print_goal("", absl::StrFormat(">= %.0fx faster than rebuild (a) at churn 0.10", kMinSpeedupA),
               slowest_a == nullptr ? ""
                                    : absl::StrFormat("slowest %.1fx (%s)", slowest_a->speedup_a(),
                                                      slowest_a->layout),
               slowest_a != nullptr && slowest_a->speedup_a() >= kMinSpeedupA);
    print_goal("", absl::StrFormat("no-change update < %.0f us", kMaxNoChangeUs),
               slowest_still == nullptr ? ""
                                        : absl::StrFormat("slowest %.1f us (%s)",
                                                          slowest_still->update_us,
                                                          slowest_still->layout),
               slowest_still != nullptr && slowest_still->update_us < kMaxNoChangeUs);
    print_goal("", absl::StrFormat("construction <= %.0fx a plain copy", kMaxConstructionRatio),
               absl::StrFormat("%.2fx", ratio),
               ratio <= kMaxConstructionRatio);
  }
}

// Three lines a user can act on, from this run's medians at churn 0.10.
void PrintSummary(const std::vector<CaseResult>& results) {
  auto find = [&](const std::string& dtype, const std::string& layout) -> const CaseResult* {
    for (const CaseResult& r : results) {
      double churn;
      if (r.dtype == dtype && r.layout == layout && absl::SimpleAtod(r.churn, &churn) &&
          std::abs(churn - 0.10) < 1e-9) {
        return &r;
      }
    }
    return nullptr;
  };
  std::vector<std::string> cost, rebuild, layout;
  for (const std::string dtype : {"float32", "bfloat16", "float16"}) {
    const CaseResult* split = find(dtype, "split");
    if (split == nullptr) continue;
    cost.push_back(absl::StrFormat("%s %.2f ms (%.2fx the memcpy of its bytes)", dtype,
                                   split->update_us / 1e3, split->x_floor()));
    rebuild.push_back(absl::StrFormat("%s %.0fx", dtype, split->speedup_a()));
    if (const CaseResult* fused = find(dtype, "fused"); fused != nullptr) {
      layout.push_back(absl::StrFormat("%s %.2fx", dtype, fused->update_us / split->update_us));
    }
  }
  if (cost.empty()) return;
  std::printf("\nsummary (churn 0.10, split layout):\n");
  std::printf("  an update costs %s: it moves only the entering neurons, so its cost is churn "
              "x active x the layer's bytes\n",
              absl::StrJoin(cost, ", ").c_str());
  std::printf("  against rebuilding the active rows each token (index_select) it is %s faster: "
              "keep a WeightCache wherever a consumer needs packed rows\n",
              absl::StrJoin(rebuild, ", ").c_str());
  if (!layout.empty()) {
    std::printf("  fused / split update time: %s; pick split for torch matmul on the views, "
                "fused for the native forward when updates dominate\n",
                absl::StrJoin(layout, ", ").c_str());
  }
}

// The floor: a memcpy of exactly the bytes an update copied, from and to
// memory as cold as the update's. Its source and destination windows
// advance through buffers of its own, far larger than the caches and
// touched by nothing else (the weights themselves are read by the rebuilds,
// which would leave the next window partly cached), as the update's rows
// are spread over the cache's sources and packed buffers. Each matrix's
// part has a destination of its own too: writing the parts into one window
// would leave the second and third writes hitting lines the first had just
// brought into the cache, a floor faster than any copy of that many
// distinct bytes.
class Floor {
 public:
  Floor(size_t matrix_bytes, size_t matrices)
      : matrix_bytes_(matrix_bytes),
        matrices_(matrices),
        dst_(Buffer(3 * matrix_bytes, 0)),
        src_(Buffer(3 * matrix_bytes, 1)) {}

  // Seconds for `bytes` split over the matrices like the update's rows
  // (without a gate: the up and down parts). Untimed afterwards: what it
  // read and wrote is flushed, so the next timed copy does not pay its
  // write-back.
  double Time(size_t bytes, int threads) {
    const size_t per_matrix = bytes / matrices_;
    if (offset_ + per_matrix > matrix_bytes_) offset_ = 0;
    const size_t first_part = 3 - matrices_;
    auto at = [&](memory::AlignedBuffer& b, size_t m) {
      return b.data() + m * matrix_bytes_ + offset_;
    };
    const double seconds = SecondsOf([&] {
      for (size_t m = first_part; m < 3; ++m) {
        (void)gather::ParallelCopy(at(dst_, m), at(src_, m), per_matrix, threads);
      }
    });
    for (size_t m = first_part; m < 3; ++m) {
      EvictFromCaches(at(dst_, m), per_matrix);
      EvictFromCaches(at(src_, m), per_matrix);
    }
    offset_ += per_matrix;
    return seconds;
  }

 private:
  size_t matrix_bytes_, matrices_;
  memory::AlignedBuffer dst_, src_;
  size_t offset_ = 0;
};

class Bench {
 public:
  Bench(size_t h, size_t i, int threads, SimdLevel simd)
      : h_(h), i_(i), threads_(threads), simd_(simd) {}

  // Returns Create's median time over the plain copy's.
  double ConstructionReport(DType dtype, const Weights& w, const diff::NeuronMask& mask,
                            std::vector<std::string>* lines) {
    const size_t bytes = h_ * i_ * cache::DTypeSize(dtype);
    std::vector<double> create, copy;
    // Seven pairs: with three, one slow phase of the machine could move the
    // median of either side by 30%.
    for (int rep = 0; rep < 7; ++rep) {
      // Only construction is timed: what was built is destroyed afterwards.
      absl::StatusOr<cache::WeightCache> built;
      create.push_back(SecondsOf([&] { built = cache::WeightCache::Create(Options(dtype), Sources(w), mask); }));
      built = absl::UnknownError("released");
      // The plain copy a user would make (allocate + copy, as tensor.clone()),
      // into fresh memory like the cache's.
      std::vector<memory::AlignedBuffer> copies;
      copy.push_back(SecondsOf([&] {
        for (const memory::AlignedBuffer* src : {&w.gate, &w.up, &w.down}) {
          copies.push_back(*memory::AlignedBuffer::Allocate(
              bytes, memory::kCacheLineBytes, memory::HugePageAdvice::kHugePages));
          (void)gather::ParallelCopy(copies.back().data(), src->data(), bytes, threads_);
        }
      }));
    }
    const double ratio = Median(create) / Median(copy);
    lines->push_back(absl::StrFormat(
        "construction %-8s: Create %.1f ms (copies + transpose of down), allocate + copy "
        "of gate, up, down %.1f ms -> %.2fx",
        cache::DTypeName(dtype), Median(create) * 1e3, Median(copy) * 1e3, ratio));
    return ratio;
  }

  // One case: the same mask sequence through one cache per layout. Each
  // step updates every cache (in an order that rotates from step to step),
  // then runs the floor and the rebuilds once: the layouts' update times
  // are taken under the same machine conditions, so their ratio is fair
  // even when the machine's speed drifts during the run.
  std::vector<CaseResult> Run(DType dtype, absl::Span<const cache::PackedLayout> layouts,
                              const Weights& w, const std::vector<diff::NeuronMask>& masks,
                              const std::string& churn_label) {
    const size_t elem = cache::DTypeSize(dtype);
    const size_t rb = h_ * elem;
    const size_t matrices = absl::GetFlag(FLAGS_gate) ? 3 : 2;
    size_t max_active = 0;
    for (const auto& m : masks) max_active = std::max(max_active, m.CountActive());
    std::vector<cache::WeightCache> caches;
    for (cache::PackedLayout layout : layouts) {
      cache::WeightCacheOptions cache_options = Options(dtype);
      cache_options.layout = layout;
      caches.push_back(*cache::WeightCache::Create(cache_options, Sources(w), masks[0]));
      (void)caches.back().Reserve(max_active);  // growth is not what this measures
    }
    Floor floor_buffers(w.up.size(), absl::GetFlag(FLAGS_gate) ? 3 : 2);
    memory::AlignedBuffer packed = Buffer(matrices * max_active * rb, 0);
    std::vector<std::vector<double>> update(caches.size());
    std::vector<double> floor, rebuild_a, rebuild_b, moved;
    for (size_t k = 1; k < masks.size(); ++k) {
      for (size_t j = 0; j < caches.size(); ++j) {
        const size_t which = (j + k) % caches.size();
        update[which].push_back(SecondsOf([&] { (void)caches[which].Update(masks[k]); }));
      }
      // Every layout copies the same rows (same plan), hence the same bytes.
      const size_t bytes = caches[0].last_update().bytes_copied;
      moved.push_back(static_cast<double>(bytes));
      floor.push_back(floor_buffers.Time(bytes, threads_));
      const auto [a, b] = TimeRebuilds(dtype, w, masks[k], packed);
      rebuild_a.push_back(a);
      rebuild_b.push_back(b);
    }
    std::vector<CaseResult> results;
    for (size_t j = 0; j < caches.size(); ++j) {
      results.push_back({cache::DTypeName(dtype), cache::PackedLayoutName(layouts[j]),
                         churn_label, Median(update[j]) * 1e6, Median(floor) * 1e6,
                         Median(rebuild_a) * 1e3, Median(rebuild_b) * 1e3,
                         Median(moved) / 1e6, masks.back().CountActive()});
    }
    return results;
  }

  // The baselines: every active row rebuilt from scratch into `packed`,
  // (a) with down columns gathered from [H, I], (b) from a neuron-major down.
  // Seconds of each.
  std::pair<double, double> TimeRebuilds(DType dtype, const Weights& w,
                                         const diff::NeuronMask& mask,
                                         memory::AlignedBuffer& packed) {
    const size_t elem = cache::DTypeSize(dtype);
    const size_t rb = h_ * elem;
    const std::vector<uint32_t> active = mask.ToIndices();
    copies_.clear();
    for (size_t s = 0; s < active.size(); ++s) {
      copies_.push_back({active[s], static_cast<uint32_t>(s)});
    }
    const size_t a = active.size();
    auto gather_gate_up = [&] {
      size_t offset = 0;
      if (absl::GetFlag(FLAGS_gate)) {
        (void)gather::GatherRows({w.gate.data(), i_, rb}, {packed.data(), a, rb}, rb, copies_,
                                 threads_);
        offset = a * rb;
      }
      (void)gather::GatherRows({w.up.data(), i_, rb}, {packed.data() + offset, a, rb}, rb,
                               copies_, threads_);
      return offset + a * rb;
    };
    const double seconds_a = SecondsOf([&] {
      const size_t offset = gather_gate_up();
      gather::TransposeOptions options;
      options.num_threads = threads_;
      (void)gather::GatherColumns({w.down.data(), h_, i_ * elem}, i_, elem, active,
                                  {packed.data() + offset, a, rb}, options);
    });
    const double seconds_b = SecondsOf([&] {
      const size_t offset = gather_gate_up();
      (void)gather::GatherRows({w.down_neuron_major.data(), i_, rb},
                               {packed.data() + offset, a, rb}, rb, copies_, threads_);
    });
    return {seconds_a, seconds_b};
  }

  Weights MakeWeights(DType dtype) const {
    const size_t bytes = h_ * i_ * cache::DTypeSize(dtype);
    Weights w{Buffer(bytes, 1), Buffer(bytes, 2), Buffer(bytes, 3), Buffer(bytes, 0)};
    gather::TransposeOptions options;
    options.num_threads = threads_;
    const size_t elem = cache::DTypeSize(dtype);
    (void)gather::Transpose({w.down.data(), h_, i_ * elem}, i_, elem,
                            {w.down_neuron_major.data(), i_, h_ * elem}, options);
    return w;
  }

 private:
  cache::WeightCacheOptions Options(DType dtype) const {
    cache::WeightCacheOptions o;
    o.hidden_size = h_;
    o.intermediate_size = i_;
    o.dtype = dtype;
    o.has_gate = absl::GetFlag(FLAGS_gate);
    o.num_threads = threads_;
    o.repack_fraction = absl::GetFlag(FLAGS_repack_fraction);
    o.simd = simd_;
    return o;
  }
  cache::MlpWeights Sources(const Weights& w) const {
    return {absl::GetFlag(FLAGS_gate) ? w.gate.data() : nullptr, w.up.data(), w.down.data()};
  }

  size_t h_, i_;
  int threads_;
  SimdLevel simd_;
  std::vector<gather::RowCopy> copies_;  // the rebuilds' copy list
};

// What a run measures, from the flags.
struct Config {
  const ModelPreset* preset = nullptr;
  std::vector<DType> dtypes;
  std::vector<cache::PackedLayout> layouts;
  std::vector<std::pair<std::string, double>> churns;  // label as given, value
  double active = 0;
  int threads = 0, steps = 0, batch = 0;
  SimdLevel simd = SimdLevel::kBest;
  std::vector<diff::NeuronMask> replay;  // empty: generated masks
};

// Every flag checked; the error names the flag and the value.
absl::StatusOr<Config> ConfigFromFlags() {
  Config c;
  const std::string model = absl::GetFlag(FLAGS_model);
  c.preset = FindModelPreset(model);
  if (c.preset == nullptr) return absl::InvalidArgumentError("unknown --model=" + model);
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_dtypes), ',')) {
    absl::StatusOr<DType> dtype = cache::ParseDType(name);
    if (!dtype.ok()) return dtype.status();
    c.dtypes.push_back(*dtype);
  }
  for (absl::string_view name : absl::StrSplit(absl::GetFlag(FLAGS_layouts), ',')) {
    absl::StatusOr<cache::PackedLayout> layout = cache::ParsePackedLayout(name);
    if (!layout.ok()) return layout.status();
    if (*layout == cache::PackedLayout::kInterleavedGateUp && !absl::GetFlag(FLAGS_gate)) {
      return absl::InvalidArgumentError("the interleaved layout needs --gate");
    }
    c.layouts.push_back(*layout);
  }
  for (absl::string_view text : absl::StrSplit(absl::GetFlag(FLAGS_churn), ',')) {
    double churn;
    if (!absl::SimpleAtod(text, &churn) || churn < 0 || churn > 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("churn '%s' is not a number in [0, 1]", text));
    }
    c.churns.push_back({std::string(text), churn});
  }
  c.active = absl::GetFlag(FLAGS_active);
  c.threads = absl::GetFlag(FLAGS_threads);
  c.steps = absl::GetFlag(FLAGS_steps);
  c.batch = absl::GetFlag(FLAGS_batch);
  if (!(c.active > 0 && c.active <= 1) || c.threads < 1 || c.steps < 1 || c.batch < 1) {
    return absl::InvalidArgumentError(
        "need 0 < --active <= 1 and --threads, --steps, --batch >= 1");
  }
  absl::StatusOr<SimdLevel> simd = ParseSimdLevel(absl::GetFlag(FLAGS_simd));
  if (!simd.ok()) return simd.status();
  if (!IsSupported(*simd)) {
    return absl::InvalidArgumentError("this CPU does not support --simd=" +
                                      absl::GetFlag(FLAGS_simd));
  }
  c.simd = *simd;
  if (!absl::GetFlag(FLAGS_replay).empty()) {
    absl::StatusOr<std::vector<diff::NeuronMask>> read =
        ReadReplay(absl::GetFlag(FLAGS_replay), absl::GetFlag(FLAGS_replay_format),
                   c.preset->intermediate);
    if (!read.ok()) return read.status();
    c.replay = *std::move(read);
  }
  return c;
}

// A case's mask sequence: one warm-up transition (dropped here, so that the
// medians see only steady-state updates), then `steps` measured steps, each
// the union of `batch` token masks around the step's base mask.
std::vector<diff::NeuronMask> CaseMasks(const Config& c, size_t count, double churn,
                                        std::mt19937_64& rng) {
  const size_t n = c.preset->intermediate;
  std::vector<diff::NeuronMask> masks;
  diff::NeuronMask base = RandomMask(n, count, rng);
  for (int k = 0; k <= c.steps + 1; ++k) {
    diff::NeuronMask step = base;
    for (int t = 1; t < c.batch; ++t) (void)step.UnionWith(Churn(base, churn, rng));
    if (k > 0) masks.push_back(step);
    base = Churn(base, churn, rng);
  }
  return masks;
}

void PrintTable(const std::vector<std::string>& construction,
                const std::vector<CaseResult>& results) {
  for (const std::string& line : construction) std::printf("%s\n", line.c_str());
  std::printf("\n%-9s %-6s %-7s %7s %11s %9s %8s %8s %8s %11s %9s %11s %9s\n", "dtype",
              "layout", "churn", "active", "update_us", "moved_MB", "GB/s", "floor_GB/s",
              "x_floor", "rebuild_a_ms", "speedup_a", "rebuild_b_ms", "speedup_b");
  for (const CaseResult& r : results) {
    const double gbps = r.update_us > 0 ? r.moved_mb * 1e6 / (r.update_us * 1e-6) / 1e9 : 0;
    const double floor_gbps = r.floor_us > 0 ? r.moved_mb * 1e6 / (r.floor_us * 1e-6) / 1e9 : 0;
    std::printf("%-9s %-6s %-7s %7zu %11.1f %9.2f %8.2f %10.2f %8s %11.2f %9.1f %11.2f %9.1f\n",
                r.dtype.c_str(), r.layout.c_str(), r.churn.c_str(), r.active, r.update_us,
                r.moved_mb, gbps, floor_gbps,
                r.moved_mb > 0 ? absl::StrFormat("%.2f", r.x_floor()).c_str() : "-",
                r.rebuild_a_ms, r.speedup_a(), r.rebuild_b_ms, r.speedup_b());
  }
  std::printf(
      "\nupdate_us: median WeightCache::Update; moved_MB: bytes it copied; floor_GB/s: memcpy of "
      "those bytes;\nx_floor: update / that memcpy (same threads, same run);\nrebuild_a: full "
      "gather with down columns from [H, I]; rebuild_b: full gather from a neuron-major down; "
      "speedup = rebuild / update.\n");
}

absl::Status WriteJson(const std::string& path, const Config& c,
                       const std::vector<std::string>& construction,
                       const std::vector<CaseResult>& results) {
  nlohmann::json cases = nlohmann::json::array();
  for (const CaseResult& r : results) {
    cases.push_back({{"dtype", r.dtype},
                     {"layout", r.layout},
                     {"churn", r.churn},
                     {"active", r.active},
                     {"update_us", r.update_us},
                     {"floor_us", r.floor_us},
                     {"moved_mb", r.moved_mb},
                     {"rebuild_a_ms", r.rebuild_a_ms},
                     {"rebuild_b_ms", r.rebuild_b_ms}});
  }
  const nlohmann::json doc = {{"model", c.preset->name},
                              {"threads", c.threads},
                              {"construction", construction},
                              {"cases", cases}};
  std::ofstream out(path);
  out << doc.dump(2) << "\n";
  if (!out) return absl::UnavailableError("cannot write " + path);
  return absl::OkStatus();
}

int Main() {
  RequireOptimizedBuild();
  const absl::StatusOr<Config> config = ConfigFromFlags();
  if (!config.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  const Config& c = *config;
  const size_t h = c.preset->hidden, n = c.preset->intermediate;
  std::printf("sparse_mlp cache benchmark: %s (H=%zu, I=%zu), %s, %d threads, %s kernels, %s\n",
              c.preset->name, h, n,
              c.replay.empty() ? absl::StrFormat("active %.2f, batch %d, %d steps", c.active,
                                                 c.batch, c.steps).c_str()
                               : absl::StrFormat("replay of %zu masks", c.replay.size()).c_str(),
              c.threads, SimdLevelName(Resolve(c.simd)),
              absl::GetFlag(FLAGS_gate) ? "gate+up+down" : "up+down (no gate)");
  Bench bench(h, n, c.threads, c.simd);
  std::vector<CaseResult> results;
  std::vector<std::string> construction;
  std::vector<std::pair<std::string, double>> construction_ratio;  // dtype, Create / copy
  for (DType dtype : c.dtypes) {
    const Weights w = bench.MakeWeights(dtype);
    std::mt19937_64 rng(2026);
    const size_t count = static_cast<size_t>(c.active * n);
    construction_ratio.push_back(
        {cache::DTypeName(dtype),
         bench.ConstructionReport(dtype, w, RandomMask(n, count, rng), &construction)});
    auto add = [&](std::vector<CaseResult> rs) {
      for (CaseResult& r : rs) results.push_back(std::move(r));
    };
    if (!c.replay.empty()) {
      add(bench.Run(dtype, c.layouts, w, c.replay, "replay"));
      continue;
    }
    for (const auto& [label, churn] : c.churns) {
      add(bench.Run(dtype, c.layouts, w, CaseMasks(c, count, churn, rng), label));
    }
  }
  PrintTable(construction, results);
  if (c.replay.empty()) {
    PrintGoals(results, construction_ratio);
    PrintSummary(results);
  }
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    if (absl::Status s = WriteJson(path, c, construction, results); !s.ok()) {
      std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Differential weight-cache updates vs the memcpy floor and full rebuilds.");
  absl::ParseCommandLine(argc, argv);
  return sparse_mlp::bench::Main();
}
