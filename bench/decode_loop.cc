#include "bench/decode_loop.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/str_format.h"
#include "bench/synthetic_weights.h"
#include "mlp/kernels.h"
#include "platform/float16.h"
#include "step/flash_step.h"

namespace sparse_mlp::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A guess of `exact` (sorted): `rank` most likely first, `set` the same
// sorted. round(over x |exact|) neurons (at most `limit`); the first
// |exact| of the rank hold round(recall_k x |exact|) of the exact ones, the
// whole guess round(recall x |exact|) (a ranked gate-first guess: its top
// k finds most, the over-fetch some more). The others come first from
// `previous` (the layer's last exact set: a guess from a nearby input errs
// towards neurons that were just active, as the measured gate-first
// guesses on stories260K do), then at random.
void Guess(const std::vector<uint32_t>& exact, const std::vector<uint32_t>& previous,
           size_t neurons, double recall_k, double recall, double over, size_t limit,
           std::mt19937_64& rng, std::vector<uint32_t>* set, std::vector<uint32_t>* rank) {
  const size_t e = exact.size();
  const size_t want = std::min(limit, static_cast<size_t>(over * e + 0.5));
  const size_t first = std::min(want, e);
  const size_t right = std::min(want, static_cast<size_t>(recall * e + 0.5));
  const size_t right_first = std::min({first, right, static_cast<size_t>(recall_k * e + 0.5)});
  std::vector<uint32_t> hits(exact);
  std::shuffle(hits.begin(), hits.end(), rng);
  std::vector<char> taken(neurons, 0);
  for (uint32_t n : exact) taken[n] = 1;  // the wrong ones come from outside the exact set
  std::vector<uint32_t> recent(previous);
  std::shuffle(recent.begin(), recent.end(), rng);
  size_t next_recent = 0;
  std::uniform_int_distribution<uint32_t> any(0, static_cast<uint32_t>(neurons - 1));
  auto wrong = [&]() -> uint32_t {
    while (next_recent < recent.size()) {
      const uint32_t n = recent[next_recent++];
      if (!taken[n]) return taken[n] = 1, n;
    }
    while (true) {
      const uint32_t n = any(rng);
      if (!taken[n]) return taken[n] = 1, n;
    }
  };
  rank->clear();
  // The first |exact|: right_first right, the rest wrong; then the over-fetch.
  for (size_t k = 0; k < right_first; ++k) rank->push_back(hits[k]);
  while (rank->size() < first) rank->push_back(wrong());
  std::shuffle(rank->begin(), rank->end(), rng);
  std::vector<uint32_t> more(hits.begin() + right_first,
                             hits.begin() + right_first + std::min(right - right_first, want - first));
  while (more.size() + first < want && more.size() + first < neurons) more.push_back(wrong());
  std::shuffle(more.begin(), more.end(), rng);
  rank->insert(rank->end(), more.begin(), more.end());
  set->assign(rank->begin(), rank->end());
  std::sort(set->begin(), set->end());
}

}  // namespace

AttentionWeights AttentionWeights::Make(size_t layers, size_t hidden, size_t kv_dim,
                                        size_t vocab, int threads) {
  AttentionWeights a;
  a.layers_ = layers;
  a.hidden_ = hidden;
  a.kv_ = kv_dim;
  a.vocab_ = vocab;
  const size_t per_layer = (2 * hidden + 2 * kv_dim) * hidden;  // q, o: H x H; k, v: kv x H
  a.layers_buf_ = RandomValues(layers * per_layer, DType::kBFloat16, 0.02f, 31, threads);
  a.head_ = RandomValues(vocab * hidden, DType::kBFloat16, 0.02f, 37, threads);
  a.bytes_ = (layers * per_layer + vocab * hidden) * 2;
  a.x16_.resize(hidden);
  a.q_.resize(hidden);
  a.kv_out_.resize(2 * kv_dim);
  a.logits_.resize(vocab);
  return a;
}

void AttentionWeights::MatVec(const uint8_t* rows, size_t count, const float* x, float* out,
                              int threads) {
  const mlp::internal::Kernels k =
      mlp::internal::SelectKernels(DType::kBFloat16, SimdLevel::kBest);
  for (size_t c = 0; c < hidden_; ++c) x16_[c] = FloatToBFloat16(x[c]);
  const size_t row_bytes = hidden_ * 2;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (long r = 0; r < static_cast<long>(count); r += 2) {
    const size_t n = std::min<size_t>(2, count - static_cast<size_t>(r));
    const void* rr[2] = {rows + r * row_bytes, rows + (r + 1) * row_bytes};
    k.dot(rr, n, x16_.data(), hidden_, 1, hidden_, out + r);
  }
}

void AttentionWeights::Attention(size_t layer, const float* x, float* out, int threads) {
  const size_t per_layer = (2 * hidden_ + 2 * kv_) * hidden_ * 2;
  const uint8_t* w = layers_buf_.data() + layer * per_layer;
  const size_t hh = hidden_ * hidden_ * 2, kh = kv_ * hidden_ * 2;
  MatVec(w, hidden_, x, q_.data(), threads);                              // q
  MatVec(w + hh, kv_, x, kv_out_.data(), threads);                        // k
  MatVec(w + hh + kh, kv_, x, kv_out_.data() + kv_, threads);             // v
  MatVec(w + hh + 2 * kh, hidden_, q_.data(), out, threads);              // o
}

void AttentionWeights::Head(const float* x, int threads) {
  MatVec(head_.data(), vocab_, x, logits_.data(), threads);
}

absl::StatusOr<DecodeSplit> RunDecode(flash::FlashModelCache* cache, AttentionWeights* attention,
                                      const DecodeTrace& trace, size_t warmup, size_t tokens,
                                      const DecodeOptions& options,
                                      const mlp::ForwardOptions& forward,
                                      mlp::Workspace* workspace) {
  const size_t layers = cache->num_layers(), h = attention->hidden();
  const size_t neurons = cache->layout().shape().intermediate;
  if (trace.size() < warmup + tokens || trace[0].size() != layers) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the trace has %d tokens of %d layers; %d + %d tokens of %d layers needed", trace.size(),
        trace.empty() ? 0 : trace[0].size(), warmup, tokens, layers));
  }
  std::mt19937_64 rng(options.seed);
  std::vector<float> x(h), a(h), y(h);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  // The guesses, drawn before the loop (the trace's stand-in for the gate
  // pass over the early input: not the system's time).
  DecodeTrace guesses, ranks;
  std::vector<std::vector<size_t>> wrong;  // guessed, not in the exact set
  if (options.speculate) {
    static const std::vector<uint32_t> kNone;
    guesses.resize(warmup + tokens);
    ranks.resize(warmup + tokens);
    wrong.resize(warmup + tokens);
    for (size_t t = 0; t < warmup + tokens; ++t) {
      guesses[t].resize(layers);
      ranks[t].resize(layers);
      for (size_t l = 0; l < layers; ++l) {
        const std::vector<uint32_t>& exact = trace[t][l];
        Guess(exact, t > 0 ? trace[t - 1][l] : kNone, neurons, options.recall_k, options.recall,
              options.over, cache->capacity(), rng, &guesses[t][l], &ranks[t][l]);
        size_t w = 0;
        for (uint32_t n : guesses[t][l]) w += !std::binary_search(exact.begin(), exact.end(), n);
        wrong[t].push_back(w);
      }
    }
  }
  DecodeSplit sum;
  double seconds = 0;
  store::ReaderStats io_timed = cache->io_stats();
  for (size_t t = 0; t < warmup + tokens; ++t) {
    const bool timed = t >= warmup;
    if (t == warmup) io_timed = cache->io_stats();
    DecodeSplit tok;
    const auto start = Clock::now();
    for (size_t l = 0; l < layers; ++l) {
      const std::vector<uint32_t>& exact = trace[t][l];
      if (options.speculate) {
        // The guess, from the layer's input before its attention.
        const std::vector<uint32_t>& guess = guesses[t][l];
        const auto m0 = Clock::now();
        const uint64_t loads = cache->layer_stats(l).loads;
        if (absl::Status s = cache->PrefetchGuess(l, guess, ranks[t][l]); !s.ok()) return s;
        tok.manage_ms += Since(m0) * 1e3;
        tok.guessed += static_cast<double>(guess.size());
        // Loaded by the guess and not needed by the step: counted below.
        const uint64_t loaded = cache->layer_stats(l).loads - loads;
        tok.extra_loads += std::min<double>(loaded, wrong[t][l]);
      }
      const auto a0 = Clock::now();
      attention->Attention(l, x.data(), a.data(), options.threads);
      tok.attention_ms += Since(a0) * 1e3;
      // The step plans over the guess's reads in flight; waiting for the
      // ones it selected is part of its wait (a stall).
      step::FlashStepTimes times;
      const uint64_t loads_before_step = cache->layer_stats(l).loads;
      const uint64_t waits_before = cache->layer_stats(l).guess_waits;
      if (absl::Status s =
              step::FlashLayerStep(cache, l, exact, {x.data(), 1, h, DType::kFloat32},
                                   {y.data(), 1, h, DType::kFloat32}, forward, workspace, &times);
          !s.ok()) {
        return s;
      }
      tok.late_loads += static_cast<double>(cache->layer_stats(l).loads - loads_before_step);
      tok.guess_waits += static_cast<double>(cache->layer_stats(l).guess_waits - waits_before);
      tok.stall_ms += times.wait_seconds * 1e3;
      tok.mlp_ms += times.compute_seconds * 1e3;
      tok.manage_ms += times.plan_seconds * 1e3;
    }
    const auto h0 = Clock::now();
    attention->Head(x.data(), options.threads);
    tok.head_ms += Since(h0) * 1e3;
    const double token_seconds = Since(start);
    if (timed) {
      seconds += token_seconds;
      sum.stall_ms += tok.stall_ms;
      sum.manage_ms += tok.manage_ms;
      sum.attention_ms += tok.attention_ms;
      sum.head_ms += tok.head_ms;
      sum.mlp_ms += tok.mlp_ms;
      sum.guessed += tok.guessed;
      sum.extra_loads += tok.extra_loads;
      sum.late_loads += tok.late_loads;
      sum.guess_waits += tok.guess_waits;
    }
  }
  const store::ReaderStats io1 = cache->io_stats();
  const double n = static_cast<double>(tokens);
  DecodeSplit out;
  out.ms = seconds / n * 1e3;
  out.stall_ms = sum.stall_ms / n;
  out.manage_ms = sum.manage_ms / n;
  out.attention_ms = sum.attention_ms / n;
  out.head_ms = sum.head_ms / n;
  out.mlp_ms = sum.mlp_ms / n;
  out.gb = static_cast<double>(io1.bytes_read - io_timed.bytes_read) / 1e9 / n;
  out.io_ms = (io1.busy_seconds - io_timed.busy_seconds) * 1e3 / n;
  out.guessed = sum.guessed / n;
  out.extra_loads = sum.extra_loads / n;
  out.late_loads = sum.late_loads / n;
  out.guess_waits = sum.guess_waits / n;
  return out;
}

}  // namespace sparse_mlp::bench
