"""sparse_mlp against what a PyTorch user runs otherwise, in one process.

    bazel run //bench:torch_compare                 # llama-3.2-3b, float32 and bfloat16
    bazel run //bench:torch_compare -- --help

For each dtype and active fraction, one token per step, masks changing by
--churn of the active set per step (constant A), every method following
the same mask sequence, interleaved step by step (the order rotating),
medians over --steps:
  (i)    dense torch MLP: F.linear(silu(F.linear(x, gate)) * F.linear(x, up), down)
  (ii)   index_select rebuild of the active gate/up rows and down columns,
         then the torch matmuls on them
  (iii)  the seed API's per-token sequence: update_active_weights(mask),
         get_concat_weight() (zero-copy, kept by the cache),
         get_active_down_weight(), then the torch matmuls
  (iv)   LlamaSkipMLP on the native forward (the fused layer step)
  (v)    sparse_mlp.mlp_forward direct-index on the full weights (no cache)
  native the layer step through the bare binding (preallocated output): the
         reference for how little the module adds
and, without the matmuls, the seed calls alone against the rebuild and
against the same calls with the concatenation copied on every call
(concat_gate_up=False: O(A x H)), for constant A and for A varying by up to
+-5% per step. Goals are judged at the end (met / MISSED).
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from sparse_mlp import _sparse_mlp
from sparse_mlp import LlamaSkipMLP, WeightCacheOptimized, mlp_forward

PRESETS = {
    "llama-3.2-1b": (2048, 8192),
    "llama-3.2-3b": (3072, 8192),
    "qwen2-1.5b": (1536, 8960),
    "llama-2-7b": (4096, 11008),
    "mistral-7b": (4096, 14336),
    "llama-3-8b": (4096, 14336),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def churned(mask, churn, gen, vary=0.0):
    """mask with round(churn * A) active neurons swapped for inactive ones;
    with vary > 0, A also changes by up to +-vary (uniformly)."""
    on, off = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    k = min(int(round(churn * on.numel())), on.numel(), off.numel())
    out = mask.clone()
    out[on[torch.randperm(on.numel(), generator=gen)[:k]]] = False
    out[off[torch.randperm(off.numel(), generator=gen)[:k]]] = True
    if vary > 0:
        delta = int(round((float(torch.rand(1, generator=gen)) * 2 - 1) * vary * on.numel()))
        pool = (out if delta < 0 else ~out).nonzero().squeeze(1)
        pick = pool[torch.randperm(pool.numel(), generator=gen)[:abs(delta)]]
        out[pick] = delta > 0
    return out


def torch_mlp(x, gate, up, down):
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def seed_mlp(x, concat, down_t, active):
    gu = F.linear(x, concat)
    return F.linear(F.silu(gu[:, :active]) * gu[:, active:], down_t)


class Timer:
    """Medians of interleaved named calls."""

    def __init__(self):
        self.samples = {}

    def run(self, name, fn):
        start = time.perf_counter()
        result = fn()
        self.samples.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def median_ms(self, name):
        return statistics.median(self.samples[name]) * 1e3


def blas_in_use():
    """The BLAS-related fields of torch's build configuration."""
    config = torch.__config__.show()
    fields = [f.strip() for f in config.replace("\n", ",").split(",")]
    keep = []
    for key in ("BLAS_INFO=", "LAPACK_INFO=", "USE_MKLDNN=", "USE_OPENMP="):
        keep += [f[f.index(key):] for f in fields if key in f][:1]
    return ", ".join(keep) + " (generic: the system libblas, which tools/setup.sh makes " \
        "OpenBLAS's OpenMP build)" if keep else "unknown"


def run_case(args, hidden, inter, dtype, active, gen):
    scale = 1.0 / hidden ** 0.5
    gate = (torch.randn(inter, hidden, generator=gen) * scale).to(dtype)
    up = (torch.randn(inter, hidden, generator=gen) * scale).to(dtype)
    down = (torch.randn(hidden, inter, generator=gen) * scale).to(dtype)
    down_rows = down.t().contiguous()
    x = torch.randn(1, hidden, generator=gen).to(dtype)
    mask = torch.zeros(inter, dtype=torch.bool)
    mask[torch.randperm(inter, generator=gen)[:int(active * inter)]] = True
    steps = args.steps
    masks = [mask]
    for _ in range(steps + 1):
        masks.append(churned(masks[-1], args.churn, gen))
    varying = [mask]
    for _ in range(steps + 1):
        varying.append(churned(varying[-1], args.churn, gen, vary=0.05))

    threads = args.threads
    seed = WeightCacheOptimized(masks[0], hidden, gate, up, down, num_threads=threads)
    seed_calls = WeightCacheOptimized(masks[0], hidden, gate, up, down, num_threads=threads)
    seed_copy = WeightCacheOptimized(masks[0], hidden, gate, up, down, num_threads=threads,
                                     concat_gate_up=False)
    seed_vary = WeightCacheOptimized(varying[0], hidden, gate, up, down, num_threads=threads)
    seed_vary_copy = WeightCacheOptimized(varying[0], hidden, gate, up, down,
                                          num_threads=threads, concat_gate_up=False)
    module = LlamaSkipMLP.from_dense(gate, up, down, sparsity=1 - active, num_threads=threads)
    module(x, masks[0])  # builds its cache
    native = WeightCacheOptimized(masks[0], hidden, gate, up, down, num_threads=threads)
    out = torch.empty_like(x)
    for c in (seed, seed_calls, seed_copy, seed_vary, seed_vary_copy, native):
        c.reserve(min(inter, int(1.1 * max(int(m.sum()) for m in masks + varying))))
    timer = Timer()

    def rebuild(m):
        idx = m.nonzero().squeeze(1)
        return gate.index_select(0, idx), up.index_select(0, idx), down.index_select(1, idx)

    for step in range(1, steps + 2):
        m, mv = masks[step], varying[step]
        m_np = m.numpy()
        idx = m.nonzero().squeeze(1)
        ops = [
            ("(i) dense torch", lambda: torch_mlp(x, gate, up, down)),
            ("(ii) index_select + torch", lambda: torch_mlp(x, *rebuild(m))),
            ("(iii) seed API + torch", lambda: (
                seed.update_active_weights(m),
                seed_mlp(x, seed.get_concat_weight(), seed.get_active_down_weight(),
                         seed.get_num_active()))),
            ("(iv) LlamaSkipMLP native", lambda: module(x, m)),
            ("(v) mlp_forward direct", lambda: mlp_forward(
                x, gate, up, down_rows, indices=idx, down_neuron_major=True,
                num_threads=threads)),
            ("native step (binding)", lambda: native._native.step(m_np, x, out)),
            ("rebuild only", lambda: rebuild(m)),
            ("seed calls, concat kept", lambda: (
                seed_calls.update_active_weights(m), seed_calls.get_concat_weight(),
                seed_calls.get_active_down_weight())),
            ("seed calls, concat copied", lambda: (
                seed_copy.update_active_weights(m), seed_copy.get_concat_weight(),
                seed_copy.get_active_down_weight())),
            ("seed calls, A +-5%, kept", lambda: (
                seed_vary.update_active_weights(mv), seed_vary.get_concat_weight(),
                seed_vary.get_active_down_weight())),
            ("seed calls, A +-5%, copied", lambda: (
                seed_vary_copy.update_active_weights(mv), seed_vary_copy.get_concat_weight(),
                seed_vary_copy.get_active_down_weight())),
        ]
        results = {}
        for k in range(len(ops)):
            name, fn = ops[(k + step) % len(ops)]
            results[name] = timer.run(name, fn)
        if step == 1:  # warm-up step: check, then drop its samples
            expected = torch_mlp(x.float(), gate.float(), up.float(), down.float() * m.float())
            for name in ("(iii) seed API + torch", "(iv) LlamaSkipMLP native",
                         "(v) mlp_forward direct"):
                got = results[name] if name != "(iii) seed API + torch" else results[name][1]
                err = float((got.float() - expected).norm() / expected.norm())
                assert err < (1e-4 if dtype == torch.float32 else 3e-2), (name, err)
            timer.samples = {}
    return timer


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3.2-3b", choices=sorted(PRESETS))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--active", default="0.5,0.3")
    parser.add_argument("--churn", type=float, default=0.10)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    hidden, inter = PRESETS[args.model]
    gen = torch.Generator().manual_seed(2026)
    print(f"sparse_mlp vs PyTorch {torch.__version__}: {args.model} (H={hidden}, I={inter}), "
          f"1 token, churn {args.churn:.2f}, {args.threads} threads, medians of {args.steps} "
          f"steps")
    print(f"torch BLAS: {blas_in_use()}")
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}")
    goals = []
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        for active in (float(a) for a in args.active.split(",")):
            timer = run_case(args, hidden, inter, dtype, active, gen)
            dense = timer.median_ms("(i) dense torch")
            print(f"\n{dtype_name}, active {active:.2f}:")
            for name in ("(i) dense torch", "(ii) index_select + torch", "(iii) seed API + torch",
                         "(iv) LlamaSkipMLP native", "(v) mlp_forward direct",
                         "native step (binding)", "rebuild only", "seed calls, concat kept",
                         "seed calls, concat copied", "seed calls, A +-5%, kept",
                         "seed calls, A +-5%, copied"):
                t = timer.median_ms(name)
                print(f"  {name:28s} {t:9.3f} ms   {dense / t:6.2f}x faster than (i)")
            med = timer.median_ms
            if active == 0.5:
                goals.append((f"{dtype_name} a=0.5: (iv) >= 3x faster than (i)",
                              dense / med("(iv) LlamaSkipMLP native"), 3.0, True))
                goals.append((f"{dtype_name} a=0.5: (iv) <= 1.2x the native step",
                              med("(iv) LlamaSkipMLP native") / med("native step (binding)"),
                              1.2, False))
            goals.append((f"{dtype_name} a={active}: (iii) >= 10x faster than (ii)",
                          med("(ii) index_select + torch") / med("(iii) seed API + torch"),
                          10.0, True))
            goals.append((f"{dtype_name} a={active}: seed calls >= 10x faster than the rebuild",
                          med("rebuild only") / med("seed calls, concat kept"), 10.0, True))
            goals.append((f"{dtype_name} a={active}: seed calls >= 5x faster than with the "
                          f"concatenation copied", med("seed calls, concat copied") /
                          med("seed calls, concat kept"), 5.0, True))
    print("\ngoals, judged on this run:")
    for what, value, limit, at_least in goals:
        met = value >= limit if at_least else value <= limit
        print(f"  {what}: {value:.2f} {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
