// The flash tier against what a user would otherwise do, on one mask trace:
//
//   bazel run //bench:flash                       # a few minutes; writes 4.2 GB once
//   bazel run //bench:flash -- --dir=/data/tmp --plot=/tmp/flash.png
//
// A 28-layer llama-3.2-3b-shaped bfloat16 MLP stack (4.2 GB) in a bundle
// file in --dir (written once, reused while its header matches; never
// tmpfs). Masks: a synthetic trace (each neuron a two-state Markov chain,
// activity rates lognormal with mean --active: hot and cold neurons; flip
// rates set so that a layer's churn without a window runs from --churn_first
// in layer 0 to --churn_last in the last) or --trace=FILE (lines of '0'/'1',
// one mask per layer, token-major).
//
// Rows, same masks, one token at a time (T = 1), --threads compute threads:
//   tier          flash::FlashModelCache + FlashLayerStep per budget (x the MLP
//                 weights) and window; next layer's reads prefetched while a
//                 layer computes (--prefetch)
//   dram          everything in DRAM (the file read into memory),
//                 direct-index forward: the compute bound
//   mmap          the file mmap'd, direct-index forward on the mapping, in a
//                 child process whose memory cgroup caps the page cache at
//                 --mmap_budget x the weights (created under this process's
//                 own cgroup, removed afterwards; said so when it cannot)
//   no-cache      every active bundle read from the file every token
//   dense-stream  the whole file read and computed every token
//   gate-first    the cost of gate-first on the same masks: the gates in
//                 DRAM (act(gate x) for every neuron, each token), up and
//                 down from a second, gate-less file (bundles 2/3 the
//                 size); the budget counts the gates (a third of the
//                 weights), the slots get the rest
// Per token: ms, GB read from the device (/proc/self/io), requests and mean
// request size, time waiting on reads / computing / planning, and DRAM used
// (the cache's footprint; resident set growth; the file's page-cache pages).
// The device's random-read curve at depth --queue_depth is measured in the
// same run for the I/O bound. Goals at the end; --plot draws ms and GB per
// token against the budget (matplotlib).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bundle_file.h"
#include "bench/decode_loop.h"
#include "bench/device_curve.h"
#include "bench/model_presets.h"
#include "bench/optimized_build_check.h"
#include "bench/process_stats.h"
#include "bench/synthetic_weights.h"
#include "flash/flash_cache.h"
#include "flash/residency.h"
#include "memory/aligned_buffer.h"
#include "mlp/mlp_forward.h"
#include "nlohmann/json.hpp"
#include "quant/format.h"
#include "step/flash_step.h"
#include "step/mask_step.h"
#include "store/bundle_reader.h"

ABSL_FLAG(std::string, dir, "/var/tmp/sparse_mlp", "directory of the bundle file (not tmpfs)");
ABSL_FLAG(std::string, model, "llama-3.2-3b", "MLP shape (bench/model_presets.h)");
ABSL_FLAG(int, layers, 28, "layers");
ABSL_FLAG(double, active, 0.5, "mean active fraction");
ABSL_FLAG(double, churn_first, 0.05, "churn without a window, first layer");
ABSL_FLAG(double, churn_last, 0.40, "churn without a window, last layer");
ABSL_FLAG(std::string, trace, "", "a recorded trace instead of the synthetic one");
ABSL_FLAG(std::string, budgets, "0.3,0.55,0.6,0.8,1.0", "tier budgets, x the MLP weights");
ABSL_FLAG(std::string, windows, "1,2,4,8", "tier windows");
ABSL_FLAG(int, tokens, 6, "timed tokens per tier row");
ABSL_FLAG(int, warmup, 6, "untimed tokens first (the cache fills: at least the window)");
ABSL_FLAG(int, baseline_tokens, 2, "timed tokens of the slow baselines (after one untimed)");
ABSL_FLAG(int, threads, 2, "compute threads");
ABSL_FLAG(int, queue_depth, 32, "reads in flight");
ABSL_FLAG(int, io_lanes, 1, "the tier's readers (each with its own I/O thread)");
ABSL_FLAG(bool, prefetch, true, "prefetch the next layer's neurons while a layer computes");
ABSL_FLAG(double, mmap_budget, 0.6, "the mmap baseline's page-cache cap, x the weights");
ABSL_FLAG(bool, compute, true, "tier rows compute (false: loads only, the I/O alone)");
ABSL_FLAG(bool, verify, true, "tier rows verify each bundle's checksum");
ABSL_FLAG(int, int8_group, 32, "the int8 rows' weights per scale (0: the whole row)");
ABSL_FLAG(bool, quantize_x, true,
          "tier-int8 rows round x to int8 per block of 32 (integer products with VNNI)");
ABSL_FLAG(std::string, variants,
          "decode,tier,tier-int8,gate-first,pinning,no-cache,dense-stream,flexinfer,mmap,dram",
          "rows to run");
ABSL_FLAG(std::string, decode_budgets, "0.6",
          "decode rows: the tier's DRAM budgets, x the file's MLP weights; the goals read "
          "0.6's (else the first)");
ABSL_FLAG(std::string, decode_dtypes, "bfloat16,int8",
          "decode rows: the files' weights (int8: the tier-int8 file; budgets x its own MLP "
          "bytes)");
ABSL_FLAG(int, decode_window, 4, "decode rows: the tier's window");
ABSL_FLAG(int, kv_dim, 1024, "decode rows: rows of the k and v projections (llama-3.2-3b's)");
ABSL_FLAG(int, vocab, 128256, "decode rows: the LM head's rows (llama-3.2-3b's)");
ABSL_FLAG(double, spec_recall, 0.9,
          "decode rows: the whole guess's recall of the exact set (stories260K measured "
          "0.85-0.92 at over-fetch 1.5: examples/llama2c_sparse.py --flash)");
ABSL_FLAG(double, spec_recall_k, 0.8,
          "decode rows: the recall of the guess's top k (k = the exact set's size; the guess "
          "is ranked; stories260K: 0.73-0.83 at over-fetch 1.0)");
ABSL_FLAG(double, spec_over, 1.5, "decode rows: the guessed set's size over the exact one's");
ABSL_FLAG(int, decode_pairs, 2, "decode rows: (without, with speculation) pairs, interleaved");
ABSL_FLAG(std::string, gate_first_budgets, "0.8,1.0",
          "gate-first rows: DRAM budgets x the MLP weights, the gates (a third) included");
ABSL_FLAG(int, gate_first_window, 4, "gate-first rows' window");
ABSL_FLAG(int, mmap_child_fd, -1, "internal: run the mmap baseline here, report to this fd");
ABSL_FLAG(std::string, mmap_cgroup, "", "internal: the cgroup the mmap child joined");
ABSL_FLAG(std::string, plot, "", "draw ms and GB per token against the budget into this PNG");
ABSL_FLAG(std::string, json, "", "write the results here");
ABSL_FLAG(std::string, omp_wait_policy, "passive",
          "OpenMP's wait policy for this run (passive, active, or default: the environment's): "
          "spinning workers take the cores the tier's I/O threads need (docs/performance.md)");

namespace sparse_mlp::bench {
namespace {

using Clock = std::chrono::steady_clock;

void Die(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  std::exit(1);
}

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<double> Doubles(const std::string& s) {
  std::vector<double> out;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    double v;
    if (!absl::SimpleAtod(p, &v)) Die(absl::InvalidArgumentError(absl::StrCat("bad number ", p)));
    out.push_back(v);
  }
  return out;
}

// masks[t][l]: sorted active neurons of layer l at token t.
using Trace = std::vector<std::vector<std::vector<uint32_t>>>;

// Each neuron a two-state Markov chain: stationary activity p_n (lognormal
// weights scaled to mean `active`, capped so the chain exists), off after
// on with probability c (the layer's churn), on after off with c p/(1-p):
// each token replaces about c of the active set.
Trace SyntheticTrace(size_t layers, size_t neurons, size_t tokens, double active, double c0,
                     double c1, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0, 1);
  std::uniform_real_distribution<double> u(0, 1);
  Trace t(tokens, std::vector<std::vector<uint32_t>>(layers));
  for (size_t l = 0; l < layers; ++l) {
    const double churn = layers == 1 ? c0 : c0 + (c1 - c0) * l / (layers - 1);
    const double cap = std::min(0.98, 1 / (1 + churn));
    std::vector<double> w(neurons), p(neurons);
    for (double& v : w) v = std::exp(normal(rng));
    double lo = 0, hi = 10;  // scale s: mean(min(cap, s w)) = active
    for (int it = 0; it < 60; ++it) {
      const double s = (lo + hi) / 2;
      double mean = 0;
      for (double v : w) mean += std::min(cap, s * v);
      (mean / neurons < active ? lo : hi) = s;
    }
    std::vector<uint8_t> on(neurons);
    for (size_t n = 0; n < neurons; ++n) {
      p[n] = std::min(cap, lo * w[n]);
      on[n] = u(rng) < p[n];
    }
    for (size_t k = 0; k < tokens; ++k) {
      for (size_t n = 0; n < neurons; ++n) {
        const double flip = on[n] ? churn : churn * p[n] / (1 - p[n]);
        if (u(rng) < flip) on[n] ^= 1;
        if (on[n]) t[k][l].push_back(static_cast<uint32_t>(n));
      }
    }
  }
  return t;
}

// Pinning a layer's most often active neurons (counted over the first
// `calibration` tokens) against the window alone, at `capacity` slots per
// layer: the planner only (flash/residency.h), loads per token over the
// rest of the trace (the calibration tokens run first, uncounted, so both
// start warm). refused: masks that did not fit beside the pinned neurons.
struct PinRow {
  double fraction = 0;  // of the slots pinned
  double loads = 0;     // per token
  size_t refused = 0;
};

PinRow SimulatePinning(const Trace& trace, size_t neurons, size_t capacity, size_t window,
                       size_t calibration, double fraction) {
  PinRow r;
  r.fraction = fraction;
  const size_t layers = trace[0].size();
  const size_t pins = std::min(capacity - 1, static_cast<size_t>(fraction * capacity));
  uint64_t loads = 0;
  for (size_t l = 0; l < layers; ++l) {
    flash::ResidencyPlanner planner(neurons, capacity, window);
    std::vector<uint32_t> count(neurons, 0), order(neurons);
    for (size_t t = 0; t < calibration; ++t) {
      for (uint32_t j : trace[t][l]) ++count[j];
    }
    for (uint32_t j = 0; j < neurons; ++j) order[j] = j;
    std::stable_sort(order.begin(), order.end(),
                     [&](uint32_t a, uint32_t b) { return count[a] > count[b]; });
    order.resize(pins);
    std::sort(order.begin(), order.end());
    if (absl::Status s = planner.Pin(order); !s.ok()) Die(s);
    flash::ResidencyPlan plan;
    for (size_t t = 0; t < trace.size(); ++t) {
      if (!planner.Plan(trace[t][l], &plan).ok()) {
        r.refused += t >= calibration;
        continue;
      }
      if (t >= calibration) loads += plan.entering.size();
    }
  }
  r.loads = static_cast<double>(loads) / static_cast<double>(trace.size() - calibration);
  return r;
}

Trace ReadTrace(const std::string& path, size_t layers, size_t neurons) {
  std::ifstream in(path);
  if (!in) Die(absl::NotFoundError("cannot open " + path));
  Trace t;
  std::string line;
  size_t count = 0;
  while (std::getline(in, line)) {
    if (line.size() != neurons) {
      Die(absl::InvalidArgumentError(absl::StrFormat("%s line %d: %d characters, expected %d",
                                                     path, count + 1, line.size(), neurons)));
    }
    if (count % layers == 0) t.emplace_back(layers);
    std::vector<uint32_t>& m = t.back()[count % layers];
    for (size_t n = 0; n < neurons; ++n) {
      if (line[n] == '1') m.push_back(static_cast<uint32_t>(n));
    }
    ++count;
  }
  if (count == 0 || count % layers != 0) {
    Die(absl::InvalidArgumentError(absl::StrFormat(
        "%s: %d lines is not a whole number of tokens of %d layers", path, count, layers)));
  }
  return t;
}

std::string EnsureFile(const std::string& dir, const ModelPreset& p, size_t layers,
                       bool gated = true) {
  const std::string path = absl::StrFormat("%s/flash_%s_bf16_L%d%s.spmlb", dir, p.name, layers,
                                           gated ? "" : "_updown");
  if (absl::Status s = EnsureBundleFile(
          path, {DType::kBFloat16, p.hidden, p.intermediate, layers, gated, 0, 0, std::nullopt},
          store::kDefaultAlignment);
      !s.ok()) {
    Die(s);
  }
  return path;
}

// The same stack quantized to int8 rows (synthetic quants, valid scales),
// 512-byte aligned as sparse_mlp.store writes quantized files.
quant::QuantFormat Int8Format() {
  return {quant::QuantType::kInt8,
          static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_int8_group)))};
}

std::string EnsureInt8File(const std::string& dir, const ModelPreset& p, size_t layers) {
  const quant::QuantFormat f = Int8Format();
  const std::string path = absl::StrFormat("%s/flash_%s_int8g%d_L%d.spmlb", dir, p.name,
                                           quant::RowLayout::Create(f, p.hidden)->group(), layers);
  if (absl::Status s = EnsureBundleFile(
          path, {DType::kFloat32, p.hidden, p.intermediate, layers, true, 0, 0, f}, 512);
      !s.ok()) {
    Die(s);
  }
  return path;
}

// Drops the file's clean pages from the page cache (the write that made it
// leaves them), so every row starts from the device.
void DropPageCache(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

struct Row {
  std::string variant;
  double budget = 0;  // x weights (0: none)
  int window = 0;
  bool ran = false;
  std::string note;
  double ms = 0, gb = 0, requests = 0, mean_request = 0;
  double wait_ms = 0, compute_ms = 0, plan_ms = 0;
  double dram_gb = 0, rss_gb = 0, page_cache_gb = 0;
};

// The stack's rows for layer l in a buffer laid out as the file lays out
// bundles (the whole file in DRAM, or a mapping of it).
mlp::NeuronRows FileRows(const store::BundleLayout& l, const uint8_t* file, size_t layer) {
  return step::BundleRows(l, file + l.layer_offset(layer), l.shape().intermediate,
                          l.bundle_stride());
}

class FlashBench {
 public:
  FlashBench(std::string path, const Trace& trace, int threads)
      : path_(std::move(path)), trace_(trace) {
    store::ReaderOptions o;
    o.verify_checksums = false;
    layout_ = (*store::BundleReader::Open(path_, o))->layout();
    const size_t h = layout_.shape().hidden;
    x_.resize(h);
    std::mt19937_64 rng(5);
    for (float& v : x_) v = std::normal_distribution<float>(0, 1)(rng);
    y_.resize(h);
    weight_bytes_ = 3.0 * h * layout_.shape().intermediate * 2 * layout_.shape().layers;
    options_.num_threads = threads;
    options_.quantize_x = absl::GetFlag(FLAGS_quantize_x);  // float rows ignore it
    (void)ws_.Reserve(1, h, 0, threads);
  }

  double weight_bytes() const { return weight_bytes_; }
  size_t max_mask() const {
    size_t m = 0;
    for (const auto& token : trace_) {
      for (const auto& mask : token) m = std::max(m, mask.size());
    }
    return m;
  }

  // Gate-first rows: a gate-less file of the same stack and its gates in DRAM.
  void set_gate_first(std::string updown_path) {
    updown_path_ = std::move(updown_path);
    const store::BundleShape& sh = layout_.shape();
    gates_ = RandomValues(sh.layers * sh.intermediate * sh.hidden, DType::kBFloat16, 0.03f, 11,
                          options_.num_threads);
    const size_t gate_bytes = sh.intermediate * sh.hidden * 2;
    for (size_t l = 0; l < sh.layers; ++l) {
      gate_first_.push_back(std::make_unique<step::GateFirst>(
          *step::GateFirst::Create(DType::kBFloat16, sh.hidden, sh.intermediate,
                                   gates_.data() + l * gate_bytes, sh.hidden)));
    }
    act_.resize(sh.intermediate);
  }

  // Tier rows over the int8 file: the same budget in bytes as the bfloat16
  // rows (budget x the bfloat16 weights).
  void set_int8(std::string path) { int8_path_ = std::move(path); }

  Row Tier(double budget, int window, int warmup, int tokens, bool prefetch, int depth,
           bool gate_first = false, bool int8 = false) {
    Row r;
    r.variant = gate_first ? "gate-first" : int8 ? "tier-int8" : "tier";
    r.budget = budget;
    r.window = window;
    const std::string& path = gate_first ? updown_path_ : int8 ? int8_path_ : path_;
    DropPageCache(path);
    flash::FlashCacheOptions o;
    // Gate-first: the gates take a third of the weights out of the budget.
    const double gates = gate_first ? weight_bytes_ / 3 : 0;
    if (budget * weight_bytes_ <= gates) {
      r.note = "the gates alone exceed the budget";
      return r;
    }
    o.budget_bytes = static_cast<size_t>(budget * weight_bytes_ - gates);
    o.window = static_cast<size_t>(window);
    o.reader.queue_depth = depth;
    o.reader.verify_checksums = absl::GetFlag(FLAGS_verify);
    o.io_lanes = static_cast<size_t>(absl::GetFlag(FLAGS_io_lanes));
    const size_t rss0 = ResidentBytes();
    auto opened = flash::FlashModelCache::Open(path, o);
    if (!opened.ok()) {
      r.note = std::string(opened.status().message()).substr(0, 60);
      return r;
    }
    flash::FlashModelCache& fc = **opened;
    if (fc.capacity() < max_mask()) {
      r.note = absl::StrFormat("masks of %d > %d slots per layer", max_mask(), fc.capacity());
      return r;
    }
    const size_t layers = layout_.shape().layers;
    step::FlashStepTimes sum;
    auto token = [&](size_t t, bool timed) {
      for (size_t l = 0; l < layers; ++l) {
        if (prefetch) {
          const size_t nl = (l + 1) % layers, nt = l + 1 == layers ? t + 1 : t;
          if (nt < trace_.size()) Check(fc.Prefetch(nl, trace_[nt][nl]));
        }
        step::FlashStepTimes times;
        if (!absl::GetFlag(FLAGS_compute)) {
          flash::FlashStepPlan plan;
          const auto w0 = Clock::now();
          Check(fc.BeginStep(l, trace_[t][l], &plan));
          Check(fc.FinishStep(l));
          times.wait_seconds = Since(w0);
        } else if (gate_first) {
          // The gate pass (counted as compute), then up and down only.
          const auto g0 = Clock::now();
          Check(gate_first_[l]->Activations({x_.data(), 1, x_.size(), DType::kFloat32}, options_,
                                            &ws_, absl::MakeSpan(act_)));
          const double gate_seconds = Since(g0);
          Check(step::FlashLayerStepGivenGate(&fc, l, trace_[t][l], act_.data(), act_.size(),
                                              {x_.data(), 1, x_.size(), DType::kFloat32},
                                              {y_.data(), 1, y_.size(), DType::kFloat32}, options_,
                                              &ws_, &times));
          times.compute_seconds += gate_seconds;
        } else {
          Check(step::FlashLayerStep(
              &fc, l, trace_[t][l], {x_.data(), 1, x_.size(), DType::kFloat32},
              {y_.data(), 1, y_.size(), DType::kFloat32}, options_, &ws_, &times));
        }
        if (timed) {
          sum.plan_seconds += times.plan_seconds;
          sum.compute_seconds += times.compute_seconds;
          sum.wait_seconds += times.wait_seconds;
        }
      }
    };
    for (int t = 0; t < warmup; ++t) token(static_cast<size_t>(t), false);
    const store::ReaderStats io0 = fc.io_stats();
    const uint64_t read0 = DeviceReadBytes();
    const auto start = Clock::now();
    for (int t = 0; t < tokens; ++t) token(static_cast<size_t>(warmup + t), true);
    const double seconds = Since(start);
    // Prefetches of the token after the last are in flight: let them land
    // before counting bytes (they belong to no timed token: subtract none,
    // they are a token's first layer at most).
    const store::ReaderStats io1 = fc.io_stats();
    r.ran = true;
    r.ms = seconds / tokens * 1e3;
    r.gb = (DeviceReadBytes() - read0) / 1e9 / tokens;
    r.requests = double(io1.requests - io0.requests) / tokens;
    r.mean_request = double(io1.bytes_read - io0.bytes_read) / std::max(1.0, r.requests * tokens);
    r.wait_ms = sum.wait_seconds / tokens * 1e3;
    r.compute_ms = sum.compute_seconds / tokens * 1e3;
    r.plan_ms = sum.plan_seconds / tokens * 1e3;
    r.dram_gb = (fc.footprint().total_bytes() + gates) / 1e9;
    r.rss_gb = (ResidentBytes() - rss0) / 1e9;
    r.page_cache_gb = PageCacheBytes(path) / 1e9;
    return r;
  }

  // The decode loop over the tier (bench/decode_loop.h): the split per
  // token, with or without speculation.
  absl::StatusOr<DecodeSplit> Decode(AttentionWeights* attention, double budget, int window,
                                     int warmup, int tokens, int depth, bool speculate, bool int8) {
    const std::string& path = int8 ? int8_path_ : path_;
    DropPageCache(path);
    flash::FlashCacheOptions o;
    // x this file's MLP weights (an int8 row: H bytes and a 2-byte scale
    // per group).
    double weights = weight_bytes_;
    if (int8) {
      const size_t hidden = layout_.shape().hidden;
      weights *= static_cast<double>(quant::RowLayout::Create(Int8Format(), hidden)->row_bytes()) /
                 (2.0 * hidden);
    }
    o.budget_bytes = static_cast<size_t>(budget * weights);
    o.window = static_cast<size_t>(window);
    o.reader.queue_depth = depth;
    o.reader.verify_checksums = absl::GetFlag(FLAGS_verify);
    o.io_lanes = static_cast<size_t>(absl::GetFlag(FLAGS_io_lanes));
    absl::StatusOr<std::unique_ptr<flash::FlashModelCache>> opened =
        flash::FlashModelCache::Open(path, o);
    if (!opened.ok()) return opened.status();
    DecodeOptions d;
    d.speculate = speculate;
    d.recall = absl::GetFlag(FLAGS_spec_recall);
    d.recall_k = absl::GetFlag(FLAGS_spec_recall_k);
    d.over = absl::GetFlag(FLAGS_spec_over);
    d.threads = options_.num_threads;
    return RunDecode(opened->get(), attention, trace_, static_cast<size_t>(warmup),
                     static_cast<size_t>(tokens), d, options_, &ws_);
  }

  // The whole file in DRAM, direct-index forward (the compute bound).
  Row Dram(int tokens) {
    Row r;
    r.variant = "dram";
    memory::AlignedBuffer file = Buffer(layout_.file_bytes());
    const int fd = ::open(path_.c_str(), O_RDONLY);
    for (uint64_t off = 0; off < layout_.file_bytes();) {
      const ssize_t n = ::pread(fd, file.data() + off, std::min<uint64_t>(64 << 20,
                                layout_.file_bytes() - off), off);
      if (n <= 0) Die(absl::UnavailableError("reading " + path_));
      off += n;
    }
    ::close(fd);
    const size_t layers = layout_.shape().layers;
    auto token = [&](size_t t) {
      for (size_t l = 0; l < layers; ++l) {
        Check(mlp::ForwardIndexed(FileRows(layout_, file.data(), l), trace_[t][l],
                                  {x_.data(), 1, x_.size(), DType::kFloat32},
                                  {y_.data(), 1, y_.size(), DType::kFloat32}, options_, &ws_));
      }
    };
    token(0);
    const auto start = Clock::now();
    for (int t = 0; t < tokens; ++t) token(static_cast<size_t>(1 + t % (trace_.size() - 1)));
    r.ran = true;
    r.ms = Since(start) / tokens * 1e3;
    r.compute_ms = r.ms;
    r.dram_gb = layout_.file_bytes() / 1e9;
    return r;
  }

  // Reads with a BundleReader: every mask bundle of each token (no cache),
  // or every bundle (dense streaming); the next layer's reads in flight
  // while a layer computes (double buffer).
  // pin_budget > 0 (FlexInfer-style, dense): as many whole layers as the
  // budget holds (x the weights, less the two streaming buffers) stay in
  // DRAM, read once before timing; the rest stream, the next streamed
  // layer's read issued before the current layer computes.
  Row Streaming(bool dense, int tokens, int depth, double pin_budget = 0) {
    DropPageCache(path_);
    Row r;
    r.variant = pin_budget > 0 ? "flexinfer" : dense ? "dense-stream" : "no-cache";
    r.budget = pin_budget;
    store::ReaderOptions o;
    o.queue_depth = depth;
    o.verify_checksums = false;
    o.max_request_bytes = dense ? size_t{1} << 20 : size_t{128} << 10;
    auto reader = store::BundleReader::Open(path_, o);
    if (!reader.ok()) Die(reader.status());
    const size_t layers = layout_.shape().layers, n = layout_.shape().intermediate;
    const size_t bundle = layout_.bundle_bytes();
    memory::AlignedBuffer buf[2] = {Buffer(n * bundle), Buffer(n * bundle)};
    std::vector<store::BundleRequest> q;
    std::vector<uint32_t> all(n);
    for (size_t j = 0; j < n; ++j) all[j] = static_cast<uint32_t>(j);
    auto neurons = [&](size_t t, size_t l) -> const std::vector<uint32_t>& {
      return dense ? all : trace_[t][l];
    };
    const double layer_bytes = static_cast<double>(n * bundle);
    const size_t pinned =
        pin_budget > 0
            ? std::min<size_t>(layers, static_cast<size_t>(std::max(
                                           0.0, (pin_budget * weight_bytes_ - 2 * layer_bytes) /
                                                    layer_bytes)))
            : 0;
    std::vector<memory::AlignedBuffer> pin(pinned);
    for (size_t l = 0; l < pinned; ++l) {
      pin[l] = Buffer(n * bundle);
      q.clear();
      for (size_t k = 0; k < n; ++k) q.push_back({l, all[k], pin[l].data() + k * bundle});
      Check((*reader)->Read(q));
    }
    if (pin_budget > 0) r.note = absl::StrFormat("%zu of %zu layers pinned", pinned, layers);
    auto start_reads = [&](size_t t, size_t l, size_t b) {
      q.clear();
      const std::vector<uint32_t>& m = neurons(t, l);
      for (size_t k = 0; k < m.size(); ++k) q.push_back({l, m[k], buf[b].data() + k * bundle});
      Check((*reader)->Start(q));
    };
    auto token = [&](size_t t) {
      if (pinned < layers) start_reads(t, pinned, 0);
      for (size_t l = 0; l < layers; ++l) {
        const uint8_t* b;
        if (l < pinned) {
          b = pin[l].data();
        } else {
          Check((*reader)->Finish());
          if (l + 1 < layers) start_reads(t, l + 1, (l + 1 - pinned) % 2);
          b = buf[(l - pinned) % 2].data();
        }
        const size_t count = neurons(t, l).size();
        const mlp::NeuronRows rows = step::BundleRows(layout_, b, count, bundle);
        Check(mlp::Forward(rows, {x_.data(), 1, x_.size(), DType::kFloat32},
                           {y_.data(), 1, y_.size(), DType::kFloat32}, options_, &ws_));
      }
    };
    token(0);
    const store::ReaderStats io0 = (*reader)->stats();
    const uint64_t read0 = DeviceReadBytes();
    const auto start = Clock::now();
    for (int t = 0; t < tokens; ++t) token(static_cast<size_t>(1 + t % (trace_.size() - 1)));
    r.ran = true;
    r.ms = Since(start) / tokens * 1e3;
    r.gb = (DeviceReadBytes() - read0) / 1e9 / tokens;
    const store::ReaderStats& io1 = (*reader)->stats();
    r.requests = double(io1.requests - io0.requests) / tokens;
    r.mean_request = double(io1.bytes_read - io0.bytes_read) / std::max(1.0, r.requests * tokens);
    r.dram_gb = (2.0 + pinned) * n * bundle / 1e9;
    return r;
  }

  // The mmap baseline's body, in the child: per-token seconds, device bytes,
  // resident bytes written to `fd`.
  void MmapChild(int fd, int tokens) {
    const int file = ::open(path_.c_str(), O_RDONLY);
    auto* map = static_cast<uint8_t*>(
        ::mmap(nullptr, layout_.file_bytes(), PROT_READ, MAP_SHARED, file, 0));
    if (map == MAP_FAILED) std::exit(1);
    const size_t layers = layout_.shape().layers;
    auto token = [&](size_t t) {
      for (size_t l = 0; l < layers; ++l) {
        Check(mlp::ForwardIndexed(FileRows(layout_, map, l), trace_[t][l],
                                  {x_.data(), 1, x_.size(), DType::kFloat32},
                                  {y_.data(), 1, y_.size(), DType::kFloat32}, options_, &ws_));
      }
    };
    token(0);
    const uint64_t read0 = DeviceReadBytes();
    const auto start = Clock::now();
    for (int t = 0; t < tokens; ++t) token(static_cast<size_t>(1 + t % (trace_.size() - 1)));
    const double out[3] = {Since(start) / tokens, double(DeviceReadBytes() - read0) / tokens,
                           double(ResidentBytes())};
    (void)!::write(fd, out, sizeof(out));
  }

  void set_child_args(std::vector<std::string> args) { child_args_ = std::move(args); }

  // The file mmap'd in a child process capped by a memory cgroup.
  Row Mmap(double budget) {
    Row r;
    r.variant = "mmap";
    r.budget = budget;
    const size_t limit = static_cast<size_t>(budget * weight_bytes_);
    std::string cgroup;
    {
      std::ifstream self("/proc/self/cgroup");
      std::string line;
      while (std::getline(self, line)) {
        const size_t at = line.find(":memory:");
        if (at != std::string::npos) cgroup = "/sys/fs/cgroup/memory" + line.substr(at + 8);
      }
    }
    std::string child_group;
    if (!cgroup.empty()) {
      child_group = absl::StrFormat("%s/sparse_mlp_flash_%d", cgroup, getpid());
      if (::mkdir(child_group.c_str(), 0755) != 0 ||
          !(std::ofstream(child_group + "/memory.limit_in_bytes") << limit)) {
        ::rmdir(child_group.c_str());
        child_group.clear();
      }
    }
    r.note = child_group.empty() ? "no memory cgroup: page cache not capped"
                                 : absl::StrFormat("cgroup cap %.2f GB", limit / 1e9);
    DropPageCache(path_);
    int fds[2];
    if (::pipe(fds) != 0) Die(absl::UnavailableError("pipe"));
    const pid_t pid = ::fork();
    if (pid == 0) {
      // A fresh process (exec): OpenMP's threads do not survive a fork.
      ::close(fds[0]);
      if (!child_group.empty()) std::ofstream(child_group + "/cgroup.procs") << getpid();
      std::vector<std::string> args = child_args_;
      args.push_back(absl::StrFormat("--mmap_child_fd=%d", fds[1]));
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    double in[3] = {0, 0, 0};
    pollfd p{fds[0], POLLIN, 0};
    const bool got = ::poll(&p, 1, 900 * 1000) == 1 &&
                     ::read(fds[0], in, sizeof(in)) == static_cast<ssize_t>(sizeof(in));
    if (!got) ::kill(pid, SIGKILL);
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!child_group.empty()) ::rmdir(child_group.c_str());
    if (!got) {
      r.note += "; the child failed";
      return r;
    }
    r.ran = true;
    r.ms = in[0] * 1e3;
    r.gb = in[1] / 1e9;
    r.rss_gb = in[2] / 1e9;
    r.dram_gb = child_group.empty() ? 0 : limit / 1e9;
    return r;
  }

 private:
  static void Check(const absl::Status& s) {
    if (!s.ok()) Die(s);
  }

  std::string path_, int8_path_;
  const Trace& trace_;
  store::BundleLayout layout_;
  std::vector<float> x_, y_;
  double weight_bytes_ = 0;
  mlp::ForwardOptions options_;
  mlp::Workspace ws_;
  std::vector<std::string> child_args_;
  // Gate-first rows.
  std::string updown_path_;
  memory::AlignedBuffer gates_;
  std::vector<std::unique_ptr<step::GateFirst>> gate_first_;
  std::vector<float> act_;
};

void PrintRow(const Row& r) {
  const std::string budget = r.budget > 0 ? absl::StrFormat("%.2f", r.budget) : "-";
  const std::string window = r.window > 0 ? absl::StrFormat("%d", r.window) : "-";
  if (!r.ran) {
    std::printf("%-13s %6s %6s  %s\n", r.variant.c_str(), budget.c_str(), window.c_str(),
                r.note.c_str());
    return;
  }
  std::printf("%-13s %6s %6s %9.1f %8.3f %9.0f %9.1fK %9.1f %9.1f %8.2f %8.3f %8.3f %8.3f %s\n",
              r.variant.c_str(), budget.c_str(), window.c_str(), r.ms, r.gb, r.requests,
              r.mean_request / 1024, r.wait_ms, r.compute_ms, r.plan_ms, r.dram_gb, r.rss_gb,
              r.page_cache_gb, r.note.c_str());
}

int Main(int argc, char** argv) {
  RequireOptimizedBuild();
  const ModelPreset* preset = FindModelPreset(absl::GetFlag(FLAGS_model));
  if (preset == nullptr) Die(absl::InvalidArgumentError("unknown --model"));
  const std::string dir = absl::GetFlag(FLAGS_dir);
  ::mkdir(dir.c_str(), 0755);
  if (IsMemoryFileSystem(dir)) Die(absl::InvalidArgumentError(dir + " is tmpfs: use --dir"));
  const size_t layers = static_cast<size_t>(absl::GetFlag(FLAGS_layers));
  const std::string path = EnsureFile(dir, *preset, layers);
  const int warmup = absl::GetFlag(FLAGS_warmup), tokens = absl::GetFlag(FLAGS_tokens);
  const int depth = absl::GetFlag(FLAGS_queue_depth);
  const Trace trace =
      absl::GetFlag(FLAGS_trace).empty()
          ? SyntheticTrace(layers, preset->intermediate, static_cast<size_t>(warmup + tokens + 1),
                           absl::GetFlag(FLAGS_active), absl::GetFlag(FLAGS_churn_first),
                           absl::GetFlag(FLAGS_churn_last), 2026)
          : ReadTrace(absl::GetFlag(FLAGS_trace), layers, preset->intermediate);
  if (trace.size() < static_cast<size_t>(warmup + tokens)) {
    Die(absl::InvalidArgumentError(absl::StrFormat(
        "the trace has %d tokens; --warmup + --tokens need %d", trace.size(), warmup + tokens)));
  }
  double mean_active = 0;
  for (const auto& t : trace) {
    for (const auto& m : t) mean_active += m.size();
  }
  mean_active /= trace.size() * layers * preset->intermediate;
  FlashBench bench(path, trace, absl::GetFlag(FLAGS_threads));
  if (const int fd = absl::GetFlag(FLAGS_mmap_child_fd); fd >= 0) {
    bench.MmapChild(fd, absl::GetFlag(FLAGS_baseline_tokens));
    return 0;
  }
  bench.set_child_args(std::vector<std::string>(argv, argv + argc));
  const std::vector<std::string> variants = absl::StrSplit(absl::GetFlag(FLAGS_variants), ',');
  auto wanted = [&](const char* v) {
    return std::find(variants.begin(), variants.end(), v) != variants.end();
  };
  std::printf(
      "flash tier: %s, %zu layers x (H=%zu, I=%zu) bfloat16, %.2f GB of MLP weights in %s; "
      "%s trace, mean active %.3f; %d compute threads, queue depth %d, prefetch %s; "
      "%d warm-up + %d timed tokens per tier row; OpenMP wait policy %s\n\n",
      preset->name, layers, preset->hidden, preset->intermediate, bench.weight_bytes() / 1e9,
      path.c_str(), absl::GetFlag(FLAGS_trace).empty() ? "synthetic Markov" : "recorded",
      mean_active, absl::GetFlag(FLAGS_threads), depth,
      absl::GetFlag(FLAGS_prefetch) ? "on" : "off", warmup, tokens,
      std::getenv("OMP_WAIT_POLICY") ? std::getenv("OMP_WAIT_POLICY") : "default");
  std::printf("%-13s %6s %6s %9s %8s %9s %10s %9s %9s %8s %8s %8s %8s\n", "variant", "budget",
              "window", "ms/token", "GB/tok", "req/tok", "mean_req", "wait_ms", "comp_ms",
              "plan_ms", "dram_GB", "rss_GB", "pcache_GB");
  std::vector<Row> rows;
  // The decode loop: without and with speculation, interleaved pairs, per
  // budget and file type.
  struct DecodeRow {
    double budget;
    bool int8, speculate;
    DecodeSplit split;
  };
  std::vector<DecodeRow> decode_rows;
  std::vector<DecodeSplit> decode_plain, decode_spec;    // bfloat16 at the goals' budget
  std::vector<DecodeSplit> decode_plain8, decode_spec8;  // int8 there
  double attention_gb = 0;
  const std::vector<double> decode_budgets = Doubles(absl::GetFlag(FLAGS_decode_budgets));
  double goal_budget = decode_budgets.empty() ? 0.6 : decode_budgets[0];
  for (double b : decode_budgets) {
    if (std::fabs(b - 0.6) < 1e-9) goal_budget = b;
  }
  if (wanted("decode")) {
    const std::string dtypes = absl::GetFlag(FLAGS_decode_dtypes);
    std::vector<bool> int8s;
    for (absl::string_view d : absl::StrSplit(dtypes, ',')) {
      if (d == "bfloat16") {
        int8s.push_back(false);
      } else if (d == "int8") {
        int8s.push_back(true);
      } else {
        Die(absl::InvalidArgumentError(
            absl::StrFormat("--decode_dtypes: '%s' is not bfloat16 or int8 (in '%s')", d, dtypes)));
      }
    }
    if (std::find(int8s.begin(), int8s.end(), true) != int8s.end()) {
      bench.set_int8(EnsureInt8File(absl::GetFlag(FLAGS_dir), *preset, layers));
    }
    AttentionWeights attention = AttentionWeights::Make(
        layers, preset->hidden, static_cast<size_t>(absl::GetFlag(FLAGS_kv_dim)),
        static_cast<size_t>(absl::GetFlag(FLAGS_vocab)), absl::GetFlag(FLAGS_threads));
    attention_gb = attention.bytes() / 1e9;
    std::printf(
        "decode loop: per layer q, k, v, o (%zu x %zu, %d x %zu twice, bfloat16) then "
        "the MLP from the tier (budgets x that file's MLP weights, window %d), LM head %d x %zu; "
        "attention and head %.2f GB in "
        "DRAM beside the tier's budget; speculation: gate-first guessed before each layer's "
        "attention, ranked, %.1f x the exact set: recall %.2f in its top k, %.2f in all\n",
        preset->hidden, preset->hidden, absl::GetFlag(FLAGS_kv_dim), preset->hidden,
        absl::GetFlag(FLAGS_decode_window), absl::GetFlag(FLAGS_vocab), preset->hidden,
        attention_gb, absl::GetFlag(FLAGS_spec_over), absl::GetFlag(FLAGS_spec_recall_k),
        absl::GetFlag(FLAGS_spec_recall));
    std::printf("%-18s %6s %9s %8s %8s %9s %9s %9s %8s %8s %9s %9s %9s %6s\n", "decode", "budget",
                "ms/token", "GB/tok", "io_ms", "stall_ms", "manage_ms", "attn_ms", "head_ms",
                "mlp_ms", "guessed", "extra", "late", "waits");
    for (double budget : decode_budgets) {
      for (int pair = 0; pair < absl::GetFlag(FLAGS_decode_pairs); ++pair) {
        for (bool int8 : int8s) {
          for (bool speculate : {false, true}) {
            absl::StatusOr<DecodeSplit> d =
                bench.Decode(&attention, budget, absl::GetFlag(FLAGS_decode_window), warmup, tokens,
                             depth, speculate, int8);
            if (!d.ok()) {  // e.g. a budget too small for the masks
              std::printf("%-18s %6.2f  not run: %s\n", int8 ? "int8" : "bfloat16", budget,
                          std::string(d.status().message()).substr(0, 400).c_str());
              continue;
            }
            decode_rows.push_back({budget, int8, speculate, *d});
            if (budget == goal_budget) {
              (int8 ? (speculate ? decode_spec8 : decode_plain8)
                    : (speculate ? decode_spec : decode_plain))
                  .push_back(*d);
            }
            std::printf(
                "%-18s %6.2f %9.1f %8.3f %8.1f %9.1f %9.1f %9.1f %8.1f %8.1f %9.0f %9.0f %9.0f "
                "%6.1f\n",
                absl::StrCat(int8 ? "int8 " : "", speculate ? "speculative" : "exact-only").c_str(),
                budget, d->ms, d->gb, d->io_ms, d->stall_ms, d->manage_ms, d->attention_ms,
                d->head_ms, d->mlp_ms, d->guessed, d->extra_loads, d->late_loads, d->guess_waits);
            std::fflush(stdout);
          }
        }
      }
    }
    std::printf("\n");
  }
  for (double b : wanted("tier") ? Doubles(absl::GetFlag(FLAGS_budgets)) : std::vector<double>{}) {
    for (double w : Doubles(absl::GetFlag(FLAGS_windows))) {
      rows.push_back(bench.Tier(b, static_cast<int>(w), warmup, tokens,
                                absl::GetFlag(FLAGS_prefetch), depth));
      PrintRow(rows.back());
      std::fflush(stdout);
      if (!rows.back().ran) break;  // the other windows cannot run either
    }
  }
  if (wanted("tier-int8")) {
    // int8 rows under the same budgets in bytes (x the bfloat16 weights),
    // interleaved with a bfloat16 row each, so the pair sees one machine.
    bench.set_int8(EnsureInt8File(absl::GetFlag(FLAGS_dir), *preset, layers));
    for (double b : {0.6}) {
      for (double w : Doubles(absl::GetFlag(FLAGS_windows))) {
        if (w < 2) continue;  // window 1 reloads every token: not the tier's operating point
        rows.push_back(bench.Tier(b, static_cast<int>(w), warmup, tokens,
                                  absl::GetFlag(FLAGS_prefetch), depth, false, true));
        PrintRow(rows.back());
        rows.push_back(bench.Tier(b, static_cast<int>(w), warmup, tokens,
                                  absl::GetFlag(FLAGS_prefetch), depth));
        rows.back().note = "(paired with the int8 row above)";
        PrintRow(rows.back());
        std::fflush(stdout);
      }
    }
  }
  if (wanted("gate-first")) {
    bench.set_gate_first(EnsureFile(absl::GetFlag(FLAGS_dir), *preset, layers, false));
    for (double b : Doubles(absl::GetFlag(FLAGS_gate_first_budgets))) {
      rows.push_back(bench.Tier(b, absl::GetFlag(FLAGS_gate_first_window), warmup, tokens,
                                absl::GetFlag(FLAGS_prefetch), depth, true));
      PrintRow(rows.back());
      std::fflush(stdout);
    }
  }
  const int bt = absl::GetFlag(FLAGS_baseline_tokens);
  auto add = [&](Row r) {
    rows.push_back(std::move(r));
    PrintRow(rows.back());
    std::fflush(stdout);
  };
  // Pinning against the window alone (the planner only: no I/O).
  std::vector<PinRow> pin_rows;
  if (wanted("pinning")) {
    flash::FlashCacheOptions o;
    o.budget_bytes = static_cast<size_t>(0.6 * bench.weight_bytes());
    o.window = static_cast<size_t>(absl::GetFlag(FLAGS_decode_window));
    o.reader.queue_depth = depth;
    auto opened = flash::FlashModelCache::Open(path, o);
    if (!opened.ok()) Die(opened.status());
    const size_t capacity = (*opened)->capacity(), bundle = (*opened)->layout().bundle_bytes();
    opened->reset();
    // 64 tokens to calibrate on, 64 to measure (a recorded trace: halves).
    const Trace long_trace =
        absl::GetFlag(FLAGS_trace).empty()
            ? SyntheticTrace(layers, preset->intermediate, 128, absl::GetFlag(FLAGS_active),
                             absl::GetFlag(FLAGS_churn_first), absl::GetFlag(FLAGS_churn_last),
                             2027)
            : trace;
    const size_t calibration = long_trace.size() / 2;
    std::printf(
        "pinning (planner only; pinned: a layer's most often active neurons over tokens "
        "[0, %zu), measured over [%zu, %zu); %zu slots per layer = budget 0.60, window "
        "%zu):\n%-8s %12s %9s %16s %8s\n",
        calibration, calibration, long_trace.size(), capacity, o.window, "pinned", "loads/token",
        "GB/token", "vs window alone", "refused");
    for (double f : {0.0, 0.1, 0.25, 0.4, 0.5}) {
      pin_rows.push_back(
          SimulatePinning(long_trace, preset->intermediate, capacity, o.window, calibration, f));
      const PinRow& r = pin_rows.back();
      std::printf("%-8.2f %12.0f %9.3f %15.3fx %8zu\n", r.fraction, r.loads, r.loads * bundle / 1e9,
                  r.loads / pin_rows[0].loads, r.refused);
    }
    std::printf("\n");
  }
  if (wanted("no-cache")) add(bench.Streaming(false, bt, depth));
  if (wanted("dense-stream")) add(bench.Streaming(true, bt, depth));
  if (wanted("flexinfer")) add(bench.Streaming(true, bt, depth, 0.6));
  if (wanted("mmap")) add(bench.Mmap(absl::GetFlag(FLAGS_mmap_budget)));
  if (wanted("dram")) add(bench.Dram(std::max(tokens, 4)));

  // The device at the tier's request sizes.
  std::map<size_t, double> curve;
  for (size_t kb : {16, 20, 24, 32, 48, 64, 128}) {
    auto pt = MeasureRandomReads(path, std::min<uint64_t>(4ull << 30, 4096ull * (1 << 20)),
                                 kb * 1024, depth, 0.3, kb);
    if (!pt.ok()) Die(pt.status());
    curve[kb * 1024] = pt->gbps;
  }
  auto device_at = [&](double bytes) { return InterpolateLogSize(curve, bytes); };
  std::printf("\ndevice random reads at depth %d (io_uring, O_DIRECT), GB/s:", depth);
  for (const auto& [bytes, gbps] : curve) std::printf(" %zuK %.2f", bytes / 1024, gbps);
  std::printf("\n");

  // Goals.
  auto find = [&](const std::string& v, double budget, int window) -> const Row* {
    for (const Row& r : rows) {
      if (r.ran && r.variant == v && (budget == 0 || std::abs(r.budget - budget) < 1e-9) &&
          (window == 0 || r.window == window)) {
        return &r;
      }
    }
    return nullptr;
  };
  const Row* dram = find("dram", 0, 0);
  const Row* mmap_row = find("mmap", 0, 0);
  const Row* dense = find("dense-stream", 0, 0);
  const Row* best06 = nullptr;
  for (const Row& r : rows) {
    if (r.ran && r.variant == "tier" && std::abs(r.budget - 0.6) < 1e-9 &&
        (best06 == nullptr || r.ms < best06->ms)) {
      best06 = &r;
    }
  }
  std::printf("\ngoals (a = %.2f, budget 0.6x the weights):\n", mean_active);
  auto verdict = [](bool met) { return met ? "met" : "MISSED"; };
  if (best06 != nullptr) {
    if (mmap_row != nullptr) {
      std::printf("  tier (window %d) vs mmap under the same budget: %.1fx faster (goal >= 5x) %s\n",
                  best06->window, mmap_row->ms / best06->ms, verdict(mmap_row->ms / best06->ms >= 5));
    }
    if (dense != nullptr) {
      std::printf("  tier vs dense streaming of the file: %.1fx faster (goal >= 10x) %s\n",
                  dense->ms / best06->ms, verdict(dense->ms / best06->ms >= 10));
    }
    if (const Row* flex = find("flexinfer", 0, 0); flex != nullptr) {
      std::printf("  tier vs FlexInfer-style (%s, the rest streamed a layer ahead; MLPs only): "
                  "%.1fx faster (goal >= 3x) %s\n",
                  flex->note.c_str(), flex->ms / best06->ms, verdict(flex->ms / best06->ms >= 3));
    }
    const double io_bound = best06->gb / device_at(best06->mean_request) * 1e3;
    const double bound = std::max(io_bound, dram == nullptr ? 0 : dram->ms);
    std::printf("  tier %.1f ms vs max(I/O bound %.1f ms = %.3f GB at %.2f GB/s for %.1fK "
                "requests, compute bound %.1f ms) = %.2fx (goal <= 1.3x) %s\n",
                best06->ms, io_bound, best06->gb, device_at(best06->mean_request),
                best06->mean_request / 1024, dram == nullptr ? 0 : dram->ms, best06->ms / bound,
                verdict(best06->ms / bound <= 1.3));
  }
  for (double budget : {1.0, 0.6}) {
    const Row* w1 = find("tier", budget, 1);
    const Row* best = nullptr;
    for (const Row& r : rows) {
      if (r.ran && r.variant == "tier" && std::abs(r.budget - budget) < 1e-9 &&
          (best == nullptr || r.gb < best->gb)) {
        best = &r;
      }
    }
    if (w1 == nullptr || best == nullptr) continue;
    std::printf("  budget %.1f: window %d reads %.2fx fewer bytes per token than window 1 "
                "(%.3f vs %.3f GB)%s\n",
                budget, best->window, w1->gb / best->gb, best->gb, w1->gb,
                budget == 1.0 ? (w1->gb / best->gb >= 2.5 ? " (goal >= 2.5x) met"
                                                          : " (goal >= 2.5x) MISSED")
                              : " (what the window buys where the budget caps it)");
  }
  {
    // int8 against bfloat16 at the same DRAM budget in bytes: the best
    // window of each, from the paired rows.
    const Row* best_int8 = nullptr;
    const Row* best_bf16 = nullptr;
    for (size_t k = 0; k + 1 < rows.size(); ++k) {
      if (!rows[k].ran || rows[k].variant != "tier-int8" || !rows[k + 1].ran) continue;
      if (best_int8 == nullptr || rows[k].ms < best_int8->ms) best_int8 = &rows[k];
      if (best_bf16 == nullptr || rows[k + 1].ms < best_bf16->ms) best_bf16 = &rows[k + 1];
    }
    if (best_int8 != nullptr && best_bf16 != nullptr) {
      std::printf("  int8 file (window %d) vs bfloat16 (window %d) at the same DRAM budget "
                  "(0.6 x the bfloat16 weights): %.2fx fewer ms per token (%.1f vs %.1f ms; "
                  "%.3f vs %.3f GB read per token) (goal >= 2x) %s\n",
                  best_int8->window, best_bf16->window, best_bf16->ms / best_int8->ms,
                  best_int8->ms, best_bf16->ms, best_int8->gb, best_bf16->gb,
                  verdict(best_bf16->ms / best_int8->ms >= 2));
    }
  }
  if (!decode_spec.empty() && !decode_plain.empty()) {
    // Medians over the pairs: the speculative loop against its own bounds
    // (I/O at the device's rate for the tier's mean request; compute: the
    // MLP in DRAM plus this loop's attention and head) and against the loop
    // without speculation.
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    };
    auto med = [&](const std::vector<DecodeSplit>& ds, double DecodeSplit::*f) {
      std::vector<double> v;
      for (const DecodeSplit& d : ds) v.push_back(d.*f);
      return median(v);
    };
    // One file type's loop against its bounds and without speculation.
    auto loop_goals = [&](const char* label, const std::vector<DecodeSplit>& spec,
                          const std::vector<DecodeSplit>& plain, double mean_request,
                          double mlp_bound_ms) {
      const double spec_ms = med(spec, &DecodeSplit::ms), plain_ms = med(plain, &DecodeSplit::ms);
      const double spec_stall = med(spec, &DecodeSplit::stall_ms);
      const double plain_stall = med(plain, &DecodeSplit::stall_ms);
      const double io_bound = med(spec, &DecodeSplit::gb) / device_at(mean_request) * 1e3;
      const double compute_bound =
          mlp_bound_ms + med(spec, &DecodeSplit::attention_ms) + med(spec, &DecodeSplit::head_ms);
      const double bound = std::max(io_bound, compute_bound);
      std::printf(
          "  %s decode loop with speculation %.1f ms vs max(I/O bound %.1f ms, compute bound "
          "incl. attention and head %.1f ms) = %.2fx (goal <= 1.15x) %s\n",
          label, spec_ms, io_bound, compute_bound, spec_ms / bound,
          verdict(spec_ms / bound <= 1.15));
      std::printf(
          "  %s stall with speculation %.1f ms vs without %.1f ms per token = %.2fx (goal <= "
          "0.5x) %s; whole token %.1f vs %.1f ms\n",
          label, spec_stall, plain_stall, plain_stall > 0 ? spec_stall / plain_stall : 0.0,
          verdict(plain_stall > 0 && spec_stall <= 0.5 * plain_stall), spec_ms, plain_ms);
    };
    const double mean_request = best06 != nullptr ? best06->mean_request : 22.4 * 1024;
    loop_goals("bfloat16", decode_spec, decode_plain, mean_request,
               dram == nullptr ? med(decode_spec, &DecodeSplit::mlp_ms) : dram->ms);
    if (!decode_spec8.empty() && !decode_plain8.empty()) {
      // The int8 file's requests are about half as large: the device's rate
      // there; its MLP compute as measured in the loop.
      loop_goals("int8", decode_spec8, decode_plain8, mean_request / 2,
                 med(decode_spec8, &DecodeSplit::mlp_ms));
    }
    const double spec_ms = med(decode_spec, &DecodeSplit::ms);
    const double plain_ms = med(decode_plain, &DecodeSplit::ms);
    const double attention_and_head =
        med(decode_spec, &DecodeSplit::attention_ms) + med(decode_spec, &DecodeSplit::head_ms);
    const double best_loop = std::min(spec_ms, plain_ms);
    if (const Row* flex = find("flexinfer", 0, 0); flex != nullptr) {
      std::printf("  decode loop (the faster of exact-only and speculative, %.1f ms) vs "
                  "FlexInfer-style plus the same attention and head (%.1f ms): %.1fx faster "
                  "(goal >= 3x) %s\n",
                  best_loop, flex->ms + attention_and_head,
                  (flex->ms + attention_and_head) / best_loop,
                  verdict((flex->ms + attention_and_head) / best_loop >= 3));
    }
    if (mmap_row != nullptr) {
      std::printf(
          "  decode loop vs mmap under the same cap (MLPs only there): %.1fx faster "
          "(goal >= 8x) %s\n",
          mmap_row->ms / spec_ms, verdict(mmap_row->ms / spec_ms >= 8));
    }
  }
  if (pin_rows.size() > 1) {
    const PinRow* best = &pin_rows[0];
    for (const PinRow& r : pin_rows) {
      if (r.refused == 0 && r.loads < best->loads) best = &r;
    }
    std::printf(
        "  pinning the most often active neurons vs the window alone at the same budget: "
        "best %.2f of the slots pinned, %.3fx the loads (%s)\n",
        best->fraction, best->loads / pin_rows[0].loads,
        best->fraction > 0 ? "pinning wins: FlashModelCache::Pin is the option"
                           : "the window alone wins");
  }
  double worst_dram = 0;
  for (const Row& r : rows) {
    if (r.ran && (r.variant == "tier" || r.variant == "tier-int8")) {
      worst_dram = std::max(worst_dram, (r.dram_gb + r.page_cache_gb) / (r.budget * bench.weight_bytes() / 1e9));
    }
  }
  std::printf("  DRAM used (footprint + the file's page cache) / budget: worst %.3f (goal <= 1.05) "
              "%s\n",
              worst_dram, verdict(worst_dram <= 1.05));

  nlohmann::json j;
  for (const Row& r : rows) {
    j["rows"].push_back({{"variant", r.variant}, {"budget", r.budget}, {"window", r.window},
                         {"ran", r.ran}, {"note", r.note}, {"ms", r.ms}, {"gb", r.gb},
                         {"requests", r.requests}, {"mean_request", r.mean_request},
                         {"wait_ms", r.wait_ms}, {"compute_ms", r.compute_ms},
                         {"plan_ms", r.plan_ms}, {"dram_gb", r.dram_gb}, {"rss_gb", r.rss_gb},
                         {"page_cache_gb", r.page_cache_gb}});
  }
  for (const DecodeRow& d : decode_rows) {
    j["decode"].push_back({{"budget", d.budget},
                           {"file", d.int8 ? "int8" : "bfloat16"},
                           {"speculate", d.speculate},
                           {"ms", d.split.ms},
                           {"io_ms", d.split.io_ms},
                           {"gb", d.split.gb},
                           {"stall_ms", d.split.stall_ms},
                           {"manage_ms", d.split.manage_ms},
                           {"attention_ms", d.split.attention_ms},
                           {"head_ms", d.split.head_ms},
                           {"mlp_ms", d.split.mlp_ms},
                           {"guessed", d.split.guessed},
                           {"extra_loads", d.split.extra_loads},
                           {"late_loads", d.split.late_loads},
                           {"guess_waits", d.split.guess_waits}});
  }
  if (!absl::GetFlag(FLAGS_json).empty()) std::ofstream(absl::GetFlag(FLAGS_json)) << j.dump(2);
  if (!absl::GetFlag(FLAGS_plot).empty()) {
    const std::string data = absl::GetFlag(FLAGS_plot) + ".json";
    std::ofstream(data) << j.dump(2);
    const std::string cmd = absl::StrFormat("/usr/bin/python3 bench/flash_plot.py '%s' '%s'", data,
                                            absl::GetFlag(FLAGS_plot));
    if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "plot failed: %s\n", cmd.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace sparse_mlp::bench

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("The flash tier against mmap, no cache, dense streaming, DRAM");
  absl::ParseCommandLine(argc, argv);
  // libgomp reads its wait policy when it loads: set it and start again.
  const std::string policy = absl::GetFlag(FLAGS_omp_wait_policy);
  if (policy != "default") {
    if (policy != "passive" && policy != "active") {
      std::fprintf(stderr, "--omp_wait_policy must be passive, active or default, got '%s'\n",
                   policy.c_str());
      return 2;
    }
    const char* now = std::getenv("OMP_WAIT_POLICY");
    if (now == nullptr || policy != now) {
      ::setenv("OMP_WAIT_POLICY", policy.c_str(), 1);
      ::execv("/proc/self/exe", argv);
      std::perror("execv /proc/self/exe");
      return 1;
    }
  }
  return sparse_mlp::bench::Main(argc, argv);
}
