"""A real checkpoint decoded with sparse MLPs: llama2.c's stories260K.

    bazel run //examples:llama2c_sparse
    bazel run //examples:llama2c_sparse -- --mask threshold --tokens 128

Loads a llama2.c checkpoint (format: tests/data/README.md), runs the whole
model (attention in plain torch, with a KV cache) and every layer's MLP
through one sparse_mlp.ModelCache, its weights read in place from the
checkpoint's buffer. Per token and layer, an oracle picks the active
neurons from |silu(gate x) * (up x)| (computed densely: it measures what
sparsity costs in quality, it is not a predictor): the top k = a x I
scores (--mask topk, selected natively by WeightCache.update_topk) or the
scores above a per-layer threshold calibrated on the dense run to keep a
fraction a on average (--mask threshold, WeightCache.update_threshold).

Reported for each active fraction a (default 1.0, 0.7, 0.5, 0.3):
  agree     greedy-token agreement: along the dense model's greedy decoding
            from BOS (--tokens tokens), the fraction of positions where the
            sparse model, given the same prefix, picks the same next token
  prefix    free-running greedy decoding: how many tokens the sparse model
            decodes before it first departs from the dense model
  kl        mean KL(dense || sparse) of the next-token distributions under
            teacher forcing on a sequence sampled from the dense model
  active    mean fraction of neurons the masks kept
  mlp_us    per-token time of the 5 MLPs (selection + forward through the
            library; dense: torch F.linear) -- a 260K-parameter model is all
            call overhead, this shows correctness more than speed
With a = 1.0 the sparse model must reproduce the dense tokens exactly; the
script exits with status 1 otherwise.

With --compare, the masks a user can actually get, per sparsity s (0.3,
0.5, 0.7: the fraction of neurons each token leaves out): the oracle top-k,
gate-first (LlamaSkipMLP's default: top-k by |silu(gate h)|), a learned
low-rank predictor per layer (sparse_mlp.predictors.train_low_rank, trained
on text sampled from the model itself) and random masks of the same size
(the floor): greedy agreement, KL, MLP time, the predictor's share of it,
and the predictors' held-out recall of the oracle set per layer. A second
table puts the MLP weights on the same axis: float32, bfloat16, int8 and q4
(sparse_mlp.quantize_mlp, the native quantized forward) x {dense,
gate-first at sparsity 0.5}, KL and greedy agreement against the float32
model, and the bytes of one layer's MLP.

With --flash, each fraction's greedy decoding runs again with the MLP
weights served from a bundle file (sparse_mlp.store, converted from the
checkpoint into a temporary directory) through ModelCache.from_file under a
DRAM budget (--budget, x the MLP weights; --window), replaying the masks the
in-memory run used: the tokens must be the same (flash column), and the
reads per token are reported (loads, KB read). Then gate-first runs from a
gate-less file with the gates in DRAM, each layer's neurons guessed one
attention block early (its input before the attention, normalised with the
layer's MLP norm, selects --over x k neurons whose reads start at once; the
exact selection after the attention reads only the misses): its tokens
must equal gate-first's in DRAM; the guess's recall, the extra KB it
read per token and the share of the decode's time the steps waited for
reads (stall, with and without the guess) are reported. Exit status 1
otherwise.
"""

import argparse
import math
import os
import struct
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

import sparse_mlp

DEFAULT_CHECKPOINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                  "data", "stories260K.bin")
BOS = 1


class Checkpoint:
    """A llama2.c checkpoint's config and weights, as views of one buffer."""

    def __init__(self, path):
        raw = np.fromfile(path, dtype=np.uint8)  # writable: torch takes it as is
        (self.dim, self.hidden, self.layers, self.heads, self.kv_heads, vocab,
         self.seq_len) = struct.unpack("7i", raw[:28].tobytes())
        shared = vocab > 0  # llama2.c: a negative vocab_size means a separate classifier
        self.vocab = abs(vocab)
        self.head_size = self.dim // self.heads
        kv_dim = self.dim * self.kv_heads // self.heads
        floats = torch.from_numpy(raw[28:28 + (raw.size - 28) // 4 * 4].view(np.float32))
        offset = 0

        def take(*shape):
            nonlocal offset
            n = math.prod(shape)
            t = floats[offset:offset + n].view(*shape)
            offset += n
            return t

        d, h, l = self.dim, self.hidden, self.layers
        self.embedding = take(self.vocab, d)
        self.rms_att = take(l, d)
        self.wq, self.wk, self.wv = take(l, d, d), take(l, kv_dim, d), take(l, kv_dim, d)
        self.wo = take(l, d, d)
        self.rms_ffn = take(l, d)
        self.w1, self.w2, self.w3 = take(l, h, d), take(l, d, h), take(l, h, d)
        self.rms_final = take(d)
        take(self.seq_len * self.head_size // 2)  # freq_cis_real (recomputed below)
        take(self.seq_len * self.head_size // 2)  # freq_cis_imag
        self.wcls = self.embedding if shared else take(self.vocab, d)

    def mlp_layers(self):
        """(gate, up, down) per layer: w1, w3, w2, contiguous views."""
        return [(self.w1[l], self.w3[l], self.w2[l]) for l in range(self.layers)]


def rmsnorm(x, weight):
    return x * torch.rsqrt(x.pow(2).mean() + 1e-5) * weight


def rope(vec, pos, head_size):
    """llama2.c's rotary embedding: pairs (2i, 2i + 1) within each head."""
    n = vec.shape[0]
    i = torch.arange(0, n, 2)
    freq = 1.0 / torch.pow(10000.0, (i % head_size).float() / head_size)
    angle = pos * freq
    cos, sin = torch.cos(angle), torch.sin(angle)
    v0, v1 = vec[0::2], vec[1::2]
    out = torch.empty_like(vec)
    out[0::2] = v0 * cos - v1 * sin
    out[1::2] = v0 * sin + v1 * cos
    return out


class Decoder:
    """The model, one token at a time, with a KV cache; the MLP is a callable
    mlp(layer, x) -> y so that dense and sparse runs share everything else."""

    def __init__(self, ckpt, mlp):
        self.c = ckpt
        self.mlp = mlp
        self.mlp_seconds = 0.0
        self.reset()

    def reset(self):
        self.keys = [[] for _ in range(self.c.layers)]
        self.values = [[] for _ in range(self.c.layers)]
        self.pos = 0

    def logits(self, token):
        c = self.c
        x = c.embedding[token].clone()
        kv_mul = c.heads // c.kv_heads
        for l in range(c.layers):
            if hasattr(self.mlp, "before"):  # the layer's input, before its attention
                self.mlp.before(l, x)
            h = rmsnorm(x, c.rms_att[l])
            q = rope(c.wq[l] @ h, self.pos, c.head_size)
            self.keys[l].append(rope(c.wk[l] @ h, self.pos, c.head_size))
            self.values[l].append(c.wv[l] @ h)
            keys = torch.stack(self.keys[l]).view(-1, c.kv_heads, c.head_size)
            values = torch.stack(self.values[l]).view(-1, c.kv_heads, c.head_size)
            q = q.view(c.heads, c.head_size)
            kv = torch.arange(c.heads) // kv_mul
            scores = torch.einsum("hd,thd->ht", q, keys[:, kv]) / math.sqrt(c.head_size)
            att = torch.einsum("ht,thd->hd", scores.softmax(-1), values[:, kv]).reshape(-1)
            x = x + c.wo[l] @ att
            h = rmsnorm(x, c.rms_ffn[l])
            start = time.perf_counter()
            y = self.mlp(l, h)
            self.mlp_seconds += time.perf_counter() - start
            x = x + y
        self.pos += 1
        return c.wcls @ rmsnorm(x, c.rms_final)


def dense_mlp(ckpt):
    def mlp(l, h):
        return F.linear(F.silu(F.linear(h, ckpt.w1[l])) * F.linear(h, ckpt.w3[l]), ckpt.w2[l])
    return mlp


def oracle_scores(ckpt, l, h):
    """|silu(gate h) * (up h)|: how much each neuron contributes (the oracle)."""
    return (F.silu(ckpt.w1[l] @ h) * (ckpt.w3[l] @ h)).abs()


class SparseMlp:
    """Every layer's MLP through one ModelCache, masks from the oracle."""

    def __init__(self, ckpt, fraction, mask_kind, thresholds=None):
        self.c = ckpt
        self.k = max(1, round(fraction * ckpt.hidden))
        self.kind = mask_kind
        self.thresholds = thresholds
        self.model = sparse_mlp.ModelCache(ckpt.mlp_layers(), active_fraction=fraction)
        self.kept = []
        self.masks = []  # the active neurons of every call, in order
        self.select_seconds = 0.0

    def __call__(self, l, h):
        start = time.perf_counter()
        scores = oracle_scores(self.c, l, h)  # the oracle: not timed as MLP work
        self.select_seconds += time.perf_counter() - start
        layer = self.model[l]
        if self.kind == "topk":
            layer.update_topk(scores, self.k)
        else:
            layer.update_threshold(scores, self.thresholds[l])
        self.kept.append(layer.num_active / self.c.hidden)
        self.masks.append(layer.active_indices())
        return layer.forward(h)


def flash_budget(path, fraction):
    """Bytes giving each layer slots for `fraction` of its neurons (the
    reader's buffers and bookkeeping on top)."""
    probe = sparse_mlp.ModelCache.from_file(path, budget_bytes=1 << 34, queue_depth=8)
    f = probe.footprint()
    stride = f["slot_bytes"] // (len(probe) * probe.capacity)
    slots = max(1, round(fraction * probe.intermediate_size))
    return f["reader_bytes"] + f["bookkeeping_bytes"] + len(probe) * slots * stride


class FlashMlp:
    """Every layer's MLP served from a bundle file under a DRAM budget,
    replaying recorded masks (the in-memory run's, call by call)."""

    def __init__(self, path, budget, window, masks, neurons):
        self.model = sparse_mlp.ModelCache.from_file(path, budget_bytes=budget, window=window,
                                                     queue_depth=8)
        self.masks = iter(masks)
        self.neurons = neurons

    def __call__(self, l, h):
        mask = torch.zeros(self.neurons, dtype=torch.bool)
        mask[torch.as_tensor(next(self.masks), dtype=torch.long)] = True
        return self.model.step(l, mask, h)


class SpeculativeFlashMlp:
    """Gate-first from a gate-less bundle file with the gates in DRAM, each
    layer's neurons guessed one attention block early: before layer l's
    attention its input, normalised with layer l's MLP norm, selects
    `over` x k neurons by |silu(gate x)| and starts their reads; after the
    attention the exact gate-first step reads only the misses. Records the
    guess's recall of the exact set per call."""

    def __init__(self, path, budget, window, ckpt, sparsity, over):
        self.c = ckpt
        self.over = over
        self.model = sparse_mlp.FlashModelCache(path, budget, window=window, queue_depth=8,
                                                gates=list(ckpt.w1), sparsity=sparsity)
        self.recalls, self.fetched = [], 0

    def before(self, l, x):
        self.fetched += self.model.speculate(l, rmsnorm(x, self.c.rms_ffn[l]), over=self.over)

    def __call__(self, l, h):
        y = self.model.step(l, None, h)
        guess = set(self.model.speculation(l).tolist())
        chosen = self.model.gate_first_selection(l).tolist()
        self.recalls.append(sum(n in guess for n in chosen) / max(1, len(chosen)))
        return y


def greedy(decoder, tokens):
    decoder.reset()
    out, token = [], BOS
    for _ in range(tokens):
        token = int(decoder.logits(token).argmax())
        out.append(token)
    return out


def sample(decoder, tokens, seed):
    gen = torch.Generator().manual_seed(seed)
    decoder.reset()
    out, token = [BOS], BOS
    for _ in range(tokens):
        token = int(torch.multinomial(decoder.logits(token).softmax(-1), 1, generator=gen))
        out.append(token)
    return out


def teacher_forced_log_probs(decoder, sequence):
    decoder.reset()
    return torch.stack([decoder.logits(t).log_softmax(-1) for t in sequence[:-1]])


def calibrate_thresholds(ckpt, sequence, fraction):
    """Per layer, the (1 - fraction) quantile of the oracle scores seen on a
    dense run over `sequence`: about `fraction` of the neurons above it."""
    seen = [[] for _ in range(ckpt.layers)]

    def mlp(l, h):
        seen[l].append(oracle_scores(ckpt, l, h))
        return dense_mlp(ckpt)(l, h)

    teacher_forced_log_probs(Decoder(ckpt, mlp), sequence)
    if fraction >= 1.0:
        return [-1.0] * ckpt.layers  # scores are >= 0: every neuron is above
    return [float(torch.quantile(torch.cat(s), 1.0 - fraction)) for s in seen]


def run(checkpoint=DEFAULT_CHECKPOINT, fractions=(1.0, 0.7, 0.5, 0.3), tokens=64,
        mask="topk", seed=0, flash=False, budget=0.6, window=2, over=1.5):
    """The table's rows: one dict per fraction, and the dense row first."""
    torch.manual_seed(seed)
    ckpt = Checkpoint(checkpoint)
    workdir = tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) if flash else None
    if flash:
        store_path = os.path.join(workdir.name, "stories.spmlb")
        sparse_mlp.store.convert(checkpoint, store_path, alignment=512)
        # Gate-less, for gate-first with the gates in DRAM.
        updown_path = os.path.join(workdir.name, "stories_updown.spmlb")
        sparse_mlp.store.write(updown_path, [(None, u, d) for _, u, d in ckpt.mlp_layers()],
                               alignment=512)
    dense = Decoder(ckpt, dense_mlp(ckpt))
    dense_tokens = greedy(dense, tokens)
    dense_greedy_us = dense.mlp_seconds / tokens * 1e6
    sequence = sample(dense, tokens, seed)
    dense.mlp_seconds = 0.0
    dense_log_probs = teacher_forced_log_probs(dense, sequence)
    rows = [{"fraction": "dense", "agree": 1.0, "prefix": tokens, "kl": 0.0, "active": 1.0,
             "mlp_us": (dense_greedy_us + dense.mlp_seconds / tokens * 1e6) / 2}]
    for fraction in fractions:
        thresholds = (calibrate_thresholds(ckpt, sequence, fraction)
                      if mask == "threshold" else None)
        mlp = SparseMlp(ckpt, fraction, mask, thresholds)
        decoder = Decoder(ckpt, mlp)
        sparse_tokens = greedy(decoder, tokens)
        greedy_masks = list(mlp.masks)
        on_greedy = teacher_forced_log_probs(decoder, [BOS] + dense_tokens).argmax(-1)
        log_probs = teacher_forced_log_probs(decoder, sequence)
        kl = float(F.kl_div(log_probs, dense_log_probs, log_target=True,
                            reduction="none").sum(-1).mean())
        kl = max(kl, 0.0)  # >= 0; rounding can give -1e-9 when the two agree
        prefix = next((i for i, (a, b) in enumerate(zip(sparse_tokens, dense_tokens)) if a != b),
                      tokens)
        rows.append({
            "fraction": fraction,
            "agree": float((on_greedy == torch.tensor(dense_tokens)).float().mean()),
            "prefix": prefix,
            "kl": kl,
            "active": sum(mlp.kept) / len(mlp.kept),
            "mlp_us": (decoder.mlp_seconds - mlp.select_seconds) / (3 * tokens) * 1e6,
            "tokens": sparse_tokens,
            "footprint": mlp.model.footprint(),
        })
        if flash:
            served = FlashMlp(store_path, flash_budget(store_path, max(budget, fraction)), window,
                              greedy_masks, ckpt.hidden)
            flash_tokens = greedy(Decoder(ckpt, served), tokens)
            totals, io = served.model.totals(), served.model.io_stats()
            rows[-1].update({"flash_same": flash_tokens == sparse_tokens,
                             "flash_loads": totals["loads"] / tokens,
                             "flash_kb": io["bytes_read"] / tokens / 1024,
                             "flash_capacity": served.model.capacity})
            if fraction < 1.0:
                rows[-1].update(speculative_row(ckpt, updown_path, fraction, tokens, budget,
                                                window, over))
    rows[0]["tokens"] = dense_tokens
    if workdir is not None:
        workdir.cleanup()
    return rows


def speculative_row(ckpt, path, fraction, tokens, budget, window, over):
    """Gate-first at `fraction` three ways: in DRAM (LlamaSkipMLP), from the
    gate-less file with exact selection only, and speculated one attention
    block early (`over` x k fetched): the tokens must agree; the guess's
    recall and the extra bytes it read per token."""
    sparsity = 1.0 - fraction
    modules = [sparse_mlp.LlamaSkipMLP.from_dense(g, u, d, sparsity)
               for g, u, d in ckpt.mlp_layers()]
    dram_tokens = greedy(Decoder(ckpt, ModuleMlp(modules)), tokens)
    budget_bytes = flash_budget(path, max(budget, fraction * over))
    exact = sparse_mlp.FlashModelCache(path, budget_bytes, window=window, queue_depth=8,
                                       gates=list(ckpt.w1), sparsity=sparsity)
    t0 = time.perf_counter()
    exact_tokens = greedy(Decoder(ckpt, lambda l, h: exact.step(l, None, h)), tokens)
    exact_seconds = time.perf_counter() - t0
    spec = SpeculativeFlashMlp(path, budget_bytes, window, ckpt, sparsity, over)
    t0 = time.perf_counter()
    spec_tokens = greedy(Decoder(ckpt, spec), tokens)
    spec_seconds = time.perf_counter() - t0
    exact_io, spec_io = exact.io_stats(), spec.model.io_stats()
    exact_kb = exact_io["bytes_read"] / tokens / 1024
    spec_kb = spec_io["bytes_read"] / tokens / 1024
    # The share of the decode's wall time the steps waited for reads.
    return {"spec_same": spec_tokens == dram_tokens and exact_tokens == dram_tokens,
            "spec_recall": sum(spec.recalls) / len(spec.recalls),
            "spec_kb": spec_kb, "spec_extra_kb": spec_kb - exact_kb,
            "exact_stall": exact_io["wait_seconds"] / exact_seconds,
            "spec_stall": spec_io["wait_seconds"] / spec_seconds}


class ModuleMlp:
    """Every layer's MLP through a LlamaSkipMLP (sharing the checkpoint's
    tensors); `mask_of(l, h)` (optional) gives the mask, else the module's
    own rule (gate-first, or its predictor)."""

    def __init__(self, modules, mask_of=None):
        self.modules = modules
        self.mask_of = mask_of
        self.kept = []

    def __call__(self, l, h):
        mask = None if self.mask_of is None else self.mask_of(l, h)
        y = self.modules[l](h, mask)
        cache = self.modules[l].weight_cache
        self.kept.append(cache.num_active / cache.intermediate_size)
        return y


def capture_pairs(ckpt, sequence, k):
    """Per layer, the MLP inputs along a dense teacher-forced run over
    `sequence` and their oracle sets (top k by |silu(gate h) * (up h)|)."""
    inputs = [[] for _ in range(ckpt.layers)]

    def mlp(l, h):
        inputs[l].append(h.clone())
        return dense_mlp(ckpt)(l, h)

    teacher_forced_log_probs(Decoder(ckpt, mlp), sequence)
    xs = [torch.stack(v) for v in inputs]
    targets = [sparse_mlp.predictors.oracle_mask(x, ckpt.w1[l], ckpt.w3[l], k)
               for l, x in enumerate(xs)]
    return xs, targets


def compare(checkpoint=DEFAULT_CHECKPOINT, sparsities=(0.3, 0.5, 0.7), tokens=64, seed=0,
            rank=32, calibration=512, steps=400):
    """Dense, oracle top-k, gate-first, a learned low-rank predictor and
    random masks of the same size, per sparsity: one dict per row, and per
    sparsity the learned predictors' held-out recall and precision per
    layer (the oracle set as the target). The predictors are trained on
    text sampled from the model itself (`calibration` tokens, another
    seed), nothing downloaded."""
    torch.manual_seed(seed)
    ckpt = Checkpoint(checkpoint)
    dense = Decoder(ckpt, dense_mlp(ckpt))
    dense_tokens = greedy(dense, tokens)
    sequence = sample(dense, tokens, seed)
    dense.mlp_seconds = 0.0
    dense_log_probs = teacher_forced_log_probs(dense, sequence)
    rows = [{"sparsity": 0.0, "masks": "dense", "agree": 1.0, "kl": 0.0, "active": 1.0,
             "mlp_us": dense.mlp_seconds / tokens * 1e6, "predictor_share": 0.0}]
    calib = sample(dense, calibration, seed + 1)
    held = calib[len(calib) * 3 // 4:]
    recalls = {}
    layers = ckpt.mlp_layers()
    for sparsity in sparsities:
        k = sparse_mlp.predictors.keep_count(sparsity, ckpt.hidden)
        xs, targets = capture_pairs(ckpt, calib[:len(calib) * 3 // 4], k)
        hx, htargets = capture_pairs(ckpt, held, k)
        predictors, recall = [], []
        for l in range(ckpt.layers):
            p, _ = sparse_mlp.predictors.train_low_rank(xs[l], targets[l], rank, steps=steps,
                                                        seed=seed, sparsity=sparsity)
            predictors.append(p)
            recall.append(sparse_mlp.predictors.evaluate(p, hx[l], htargets[l]))
        recalls[sparsity] = recall
        gen = torch.Generator().manual_seed(seed)

        def random_mask(l, h):
            mask = torch.zeros(ckpt.hidden, dtype=torch.bool)
            mask[torch.randperm(ckpt.hidden, generator=gen)[:k]] = True
            return mask

        def oracle(l, h):
            return sparse_mlp.predictors.oracle_mask(h[None], ckpt.w1[l], ckpt.w3[l], k)[0]

        def modules(predictor=None):
            return [sparse_mlp.LlamaSkipMLP.from_dense(
                g, u, d, sparsity, predictor=None if predictor is None else predictor[l],
                num_threads=1) for l, (g, u, d) in enumerate(layers)]

        kinds = {"oracle": ModuleMlp(modules(), oracle),
                 "gate-first": ModuleMlp(modules()),
                 "learned": ModuleMlp(modules(predictors)),
                 "random": ModuleMlp(modules(), random_mask)}
        for name, mlp in kinds.items():
            decoder = Decoder(ckpt, mlp)
            on_greedy = teacher_forced_log_probs(decoder, [BOS] + dense_tokens).argmax(-1)
            decoder.mlp_seconds = 0.0
            log_probs = teacher_forced_log_probs(decoder, sequence)
            mlp_us = decoder.mlp_seconds / tokens * 1e6
            kl = max(0.0, float(F.kl_div(log_probs, dense_log_probs, log_target=True,
                                         reduction="none").sum(-1).mean()))
            share = 0.0
            if name == "learned":  # the predictors alone, on the same inputs
                start = time.perf_counter()
                for l in range(ckpt.layers):
                    for h in hx[l][:tokens]:
                        predictors[l](h)
                share = (time.perf_counter() - start) / min(tokens, len(hx[0])) * 1e6 / mlp_us
            rows.append({"sparsity": sparsity, "masks": name, "kl": kl,
                         "agree": float((on_greedy == torch.tensor(dense_tokens)).float().mean()),
                         "active": sum(mlp.kept) / len(mlp.kept), "mlp_us": mlp_us,
                         "predictor_share": share})
    return rows, recalls


class WeightsMlp:
    """Every layer's MLP on weights of another type: bfloat16 (the native
    forward on bfloat16 copies) or a quantized format (quantize_mlp, the
    native quantized forward), dense or gate-first at `sparsity` (top-k by
    |silu(gate h)| on the same weights' gate)."""

    def __init__(self, ckpt, weights, group, sparsity, quantize_x=False):
        self.c = ckpt
        self.quantize_x = quantize_x
        self.k = None if sparsity == 0 else sparse_mlp.predictors.keep_count(sparsity,
                                                                             ckpt.hidden)
        self.kept = []
        self.layers = []
        for g, u, d in ckpt.mlp_layers():
            if weights == "float32":
                self.layers.append((g, u, d.t().contiguous(), g))
            elif weights == "bfloat16":
                g16, u16 = g.bfloat16(), u.bfloat16()
                self.layers.append((g16, u16, d.t().contiguous().bfloat16(), g16.float()))
            else:
                q = sparse_mlp.quantize_mlp(g, u, d, weights, group=group)
                self.layers.append((q.gate, q.up, q.down, q.gate.dequantize()))
        self.quantized = weights not in ("float32", "bfloat16")

    def __call__(self, l, h):
        gate, up, down, gate_f32 = self.layers[l]
        idx = None
        if self.k is not None:
            act = F.silu(gate_f32 @ h)
            idx = torch.topk(act.abs(), self.k).indices.sort().values
        self.kept.append(1.0 if idx is None else len(idx) / self.c.hidden)
        if self.quantized:
            return sparse_mlp.mlp_forward(h, gate, up, down, indices=idx, num_threads=1,
                                          quantize_x=self.quantize_x)
        return sparse_mlp.mlp_forward(h, gate, up, down, indices=idx, down_neuron_major=True,
                                      num_threads=1)


def compare_weights(checkpoint=DEFAULT_CHECKPOINT, tokens=64, seed=0,
                    formats=(("bfloat16", 0), ("int8", 32), ("int8", 0), ("int8", 32, True),
                             ("q4", 32), ("q4", 64), ("q4", 32, True)),
                    sparsities=(0.0, 0.5)):
    """KL and greedy agreement against the float32 model for MLP weights in
    other types, dense and gate-first: one dict per (weights, sparsity),
    float32 gate-first rows included to tell the sparsity's share from the
    weights'. A format (weights, group, True) also rounds each MLP's input
    to int8 per block of 32 (quantize_x). The MLP bytes per layer are
    reported beside them."""
    torch.manual_seed(seed)
    ckpt = Checkpoint(checkpoint)
    dense = Decoder(ckpt, dense_mlp(ckpt))
    dense_tokens = greedy(dense, tokens)
    sequence = sample(dense, tokens, seed)
    dense_log_probs = teacher_forced_log_probs(dense, sequence)
    h, i = ckpt.dim, ckpt.hidden
    rows = []
    for weights, group, *x8 in (("float32", 0),) + tuple(formats):
        quantize_x = bool(x8 and x8[0])
        if weights == "float32":
            layer_bytes = 3 * h * i * 4
        elif weights == "bfloat16":
            layer_bytes = 3 * h * i * 2
        else:
            g, u, d = ckpt.mlp_layers()[0]
            layer_bytes = sparse_mlp.quantize_mlp(g, u, d, weights, group=group).nbytes
        for sparsity in sparsities:
            if weights == "float32" and sparsity == 0:
                continue  # the reference itself
            mlp = WeightsMlp(ckpt, weights, group, sparsity, quantize_x)
            decoder = Decoder(ckpt, mlp)
            on_greedy = teacher_forced_log_probs(decoder, [BOS] + dense_tokens).argmax(-1)
            log_probs = teacher_forced_log_probs(decoder, sequence)
            kl = max(0.0, float(F.kl_div(log_probs, dense_log_probs, log_target=True,
                                         reduction="none").sum(-1).mean()))
            rows.append({"weights": weights + ("+x8" if quantize_x else ""), "group": group or h,
                         "sparsity": sparsity,
                         "kl": kl, "layer_bytes": layer_bytes,
                         "agree": float((on_greedy == torch.tensor(dense_tokens)).float().mean()),
                         "active": sum(mlp.kept) / len(mlp.kept)})
    return rows


def print_compare_weights(rows, ckpt, tokens):
    print(f"\nMLP weights against the float32 model ({tokens} tokens; gate-first selects on "
          f"the same weights' gate):")
    print(f"{'weights':>9} {'group':>6} {'sparsity':>8} {'agree':>7} {'kl':>9} {'active':>7} "
          f"{'bytes/layer':>12}")
    for r in rows:
        print(f"{r['weights']:>9} {r['group']:6d} {r['sparsity']:8.2f} {r['agree']:7.3f} "
              f"{r['kl']:9.5f} {r['active']:7.3f} {r['layer_bytes']:12d}")


def print_compare(rows, recalls, ckpt, tokens):
    print(f"{ckpt.dim}-dim model, MLP hidden {ckpt.hidden}, {ckpt.layers} layers; "
          f"{tokens} tokens; per token: agree (greedy), KL (teacher-forced)")
    print(f"{'sparsity':>8} {'masks':>10} {'agree':>7} {'kl':>9} {'active':>7} {'mlp_us':>8} "
          f"{'pred%':>6}")
    for r in rows:
        print(f"{r['sparsity']:8.2f} {r['masks']:>10} {r['agree']:7.3f} {r['kl']:9.5f} "
              f"{r['active']:7.3f} {r['mlp_us']:8.1f} {100 * r['predictor_share']:6.1f}")
    for sparsity, per_layer in recalls.items():
        print(f"learned predictor at sparsity {sparsity}, held-out recall / precision per layer: "
              + ", ".join(f"{rc:.2f}/{pr:.2f}" for rc, pr in per_layer))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--fractions", default="1.0,0.7,0.5,0.3",
                        help="active fractions, comma-separated")
    parser.add_argument("--tokens", type=int, default=64, help="tokens decoded per run")
    parser.add_argument("--mask", choices=("topk", "threshold"), default="topk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flash", action="store_true",
                        help="also decode with the MLPs served from a bundle file")
    parser.add_argument("--budget", type=float, default=0.6,
                        help="--flash: slots per layer, x its neurons (at least the fraction)")
    parser.add_argument("--window", type=int, default=2, help="--flash: the residency window")
    parser.add_argument("--over", type=float, default=1.5,
                        help="--flash: speculative gate-first fetches over x k neurons")
    parser.add_argument("--compare", action="store_true",
                        help="compare oracle, gate-first, learned and random masks at "
                             "--sparsities instead")
    parser.add_argument("--sparsities", default="0.3,0.5,0.7")
    parser.add_argument("--rank", type=int, default=32, help="--compare: predictor rank")
    args = parser.parse_args(argv)
    if args.compare:
        torch.set_num_threads(1)
        rows, recalls = compare(args.checkpoint,
                                [float(v) for v in args.sparsities.split(",")], args.tokens,
                                args.seed, args.rank)
        print_compare(rows, recalls, Checkpoint(args.checkpoint), args.tokens)
        print_compare_weights(compare_weights(args.checkpoint, args.tokens, args.seed),
                              Checkpoint(args.checkpoint), args.tokens)
        return 0
    fractions = [float(f) for f in args.fractions.split(",")]
    torch.set_num_threads(1)
    rows = run(args.checkpoint, fractions, args.tokens, args.mask, args.seed, args.flash,
               args.budget, args.window, args.over)
    ckpt = Checkpoint(args.checkpoint)
    print(f"{os.path.basename(args.checkpoint)}: dim {ckpt.dim}, MLP hidden {ckpt.hidden}, "
          f"{ckpt.layers} layers, vocab {ckpt.vocab}; masks: oracle {args.mask}; "
          f"{args.tokens} tokens")
    flash_header = f" {'flash':>6} {'loads/t':>8} {'KB/t':>7}" if args.flash else ""
    print(f"{'a':>6} {'agree':>7} {'prefix':>7} {'kl':>10} {'active':>7} {'mlp_us':>8}"
          + flash_header)
    for r in rows:
        a = r["fraction"] if isinstance(r["fraction"], str) else f"{r['fraction']:.2f}"
        flash = ""
        if "flash_same" in r:
            flash = (f" {'same' if r['flash_same'] else 'DIFFER':>6} {r['flash_loads']:8.1f} "
                     f"{r['flash_kb']:7.1f}")
        print(f"{a:>6} {r['agree']:7.3f} {r['prefix']:7d} {r['kl']:10.5f} {r['active']:7.3f} "
              f"{r['mlp_us']:8.1f}" + flash)
    spec = [r for r in rows if "spec_same" in r]
    if spec:
        print(f"\ngate-first from the gate-less file, guessed one attention block early "
              f"({args.over} x k fetched), against gate-first in DRAM:")
        print(f"{'a':>6} {'tokens':>7} {'recall':>7} {'KB/t':>8} {'extra KB/t':>11} "
              f"{'stall exact':>12} {'stall spec':>11}")
        for r in spec:
            print(f"{r['fraction']:6.2f} {'same' if r['spec_same'] else 'DIFFER':>7} "
                  f"{r['spec_recall']:7.3f} {r['spec_kb']:8.1f} {r['spec_extra_kb']:11.1f} "
                  f"{100 * r['exact_stall']:11.1f}% {100 * r['spec_stall']:10.1f}%")
    if any(not r.get("flash_same", True) or not r.get("spec_same", True) for r in rows):
        print("error: served from the bundle file, the model decoded other tokens than in memory "
              "on the same masks", file=sys.stderr)
        return 1
    exact = [r for r in rows[1:] if r["fraction"] == 1.0]
    if exact and exact[0]["tokens"] != rows[0]["tokens"]:
        print("error: with every neuron active the sparse model did not reproduce the dense "
              "tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
