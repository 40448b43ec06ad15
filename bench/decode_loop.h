// The flash tier inside a decode loop (//bench:flash --variants=decode):
// per layer the attention projections (q, k, v, o; dense, bfloat16, in
// DRAM, computed with the forward's dot kernels) and then the MLP from the
// tier, plus the LM head once per token. With speculation, each layer's
// gate-first set is guessed before its attention (drawn from the trace's
// exact mask: a ranked guess whose top k holds a given recall and whose
// whole over-fetched set another; its wrong neurons from the layer's
// previous set, then at random; drawn before the loop) and its reads start
// then; the step after the attention plans over them at once and reads
// only the misses (flash/flash_cache.h's PrefetchGuess: the guess is not a
// token of the window).
//
// Per token it reports the split the issue asks for: device-busy I/O
// (time with reads in flight; it overlaps the rest), stall (compute
// waiting for reads), management (planning, residency, speculation's
// prefetch calls), attention compute (projections), the LM head, MLP
// compute, and the bytes read. Scores and softmax over a KV cache are left
// out: at the short contexts measured they are microseconds against the
// projections' milliseconds.
#ifndef SPARSE_MLP_BENCH_DECODE_LOOP_H_
#define SPARSE_MLP_BENCH_DECODE_LOOP_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "flash/flash_cache.h"
#include "memory/aligned_buffer.h"
#include "mlp/mlp_forward.h"

namespace sparse_mlp::bench {

// Token t's sorted active neurons of layer l: trace[t][l].
using DecodeTrace = std::vector<std::vector<std::vector<uint32_t>>>;

// The attention projections of every layer and the LM head, bfloat16,
// random (their values do not change the timing).
class AttentionWeights {
 public:
  // hidden H, kv_dim the k and v projections' rows, vocab the LM head's.
  static AttentionWeights Make(size_t layers, size_t hidden, size_t kv_dim, size_t vocab,
                               int threads);
  size_t bytes() const { return bytes_; }
  size_t hidden() const { return hidden_; }
  // x (H float32) through layer l's q, k, v and o (o on q's output: its
  // stand-in for the attention's output); writes o's output to out.
  void Attention(size_t layer, const float* x, float* out, int threads);
  // logits = head x.
  void Head(const float* x, int threads);

 private:
  void MatVec(const uint8_t* rows, size_t count, const float* x, float* out, int threads);
  size_t layers_ = 0, hidden_ = 0, kv_ = 0, vocab_ = 0, bytes_ = 0;
  memory::AlignedBuffer layers_buf_, head_;
  std::vector<uint16_t> x16_;
  std::vector<float> q_, kv_out_, logits_;
};

struct DecodeOptions {
  bool speculate = false;
  double recall_k = 0.8;  // of the exact set, in the guess's first |exact| (its top k)
  double recall = 0.9;    // of the exact set, in the whole guess
  double over = 1.5;    // guess size / exact size (clipped to the slots)
  int threads = 2;
  uint64_t seed = 1;
};

// Milliseconds (and GB) per token, averaged over the timed tokens.
struct DecodeSplit {
  double ms = 0, stall_ms = 0, manage_ms = 0, attention_ms = 0, head_ms = 0, mlp_ms = 0;
  double gb = 0;            // read from the file per token (the reader's count)
  double io_ms = 0;         // time with reads in flight (the device busy for us), per token
  double guessed = 0;       // neurons guessed per token
  double extra_loads = 0;   // guessed and loaded, not in the exact set, per token
  double late_loads = 0;    // read by the exact steps (after the attention), per token
  double guess_waits = 0;   // layers per token whose step waited for the guess's reads
};

// Runs `warmup` untimed then `tokens` timed tokens of trace (from token 0)
// through `cache` (this trace's layers) and `attention`.
absl::StatusOr<DecodeSplit> RunDecode(flash::FlashModelCache* cache, AttentionWeights* attention,
                                      const DecodeTrace& trace, size_t warmup, size_t tokens,
                                      const DecodeOptions& options,
                                      const mlp::ForwardOptions& forward, mlp::Workspace* workspace);

}  // namespace sparse_mlp::bench

#endif  // SPARSE_MLP_BENCH_DECODE_LOOP_H_
