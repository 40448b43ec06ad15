"""sparse_mlp against what a PyTorch user does otherwise, in one run.

    bazel run //bench:torch_compare                 # llama-3.2-3b, float32
    bazel run //bench:torch_compare -- --help

Per step of a mask sequence (active fraction --active, --churn of the active
set replaced per step), medians of:
  update          WeightCache.update(mask)
  index_select    rebuilding the active weights with index_select (gate and up
                  rows, down columns), what the cache replaces
  dense forward   the full MLP for one token (decode)
  sparse forward  update + the MLP on the cache's zero-copy views
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from sparse_mlp import WeightCache

PRESETS = {
    "llama-3.2-1b": (2048, 8192),
    "llama-3.2-3b": (3072, 8192),
    "qwen2-1.5b": (1536, 8960),
    "llama-2-7b": (4096, 11008),
    "mistral-7b": (4096, 14336),
    "llama-3-8b": (4096, 14336),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def churned(mask, churn, gen):
    """mask with round(churn * A) active neurons swapped for inactive ones."""
    on, off = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    k = min(int(round(churn * on.numel())), on.numel(), off.numel())
    out = mask.clone()
    out[on[torch.randperm(on.numel(), generator=gen)[:k]]] = False
    out[off[torch.randperm(off.numel(), generator=gen)[:k]]] = True
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def mlp(x, gate, up, down):
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3.2-3b", choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--active", type=float, default=0.5)
    parser.add_argument("--churn", type=float, default=0.10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", default="split", choices=("split", "interleaved", "fused"),
                        help="packed layout of the cache (fused: strided views, fastest updates)")
    parser.add_argument("--copy_sources", action="store_true",
                        help="let the cache copy gate/up (huge-page backed) instead of reading them in place")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    hidden, inter = PRESETS[args.model]
    dtype = DTYPES[args.dtype]
    gen = torch.Generator().manual_seed(2026)
    gate = torch.randn(inter, hidden, generator=gen).to(dtype)
    up = torch.randn(inter, hidden, generator=gen).to(dtype)
    down = torch.randn(hidden, inter, generator=gen).to(dtype)
    x = torch.randn(1, hidden, generator=gen).to(dtype)

    mask = torch.zeros(inter, dtype=torch.bool)
    mask[torch.randperm(inter, generator=gen)[:int(args.active * inter)]] = True
    masks = [mask]
    for _ in range(args.steps + 1):
        masks.append(churned(masks[-1], args.churn, gen))

    cache = WeightCache(masks[0], gate, up, down, num_threads=args.threads,
                        copy_sources=args.copy_sources, layout=args.layout)
    cache.reserve(max(int(m.sum()) for m in masks))
    cache.update(masks[1])  # warm-up step
    t_update, t_select, t_dense, t_sparse = [], [], [], []
    for step, m in enumerate(masks[2:]):
        t, _ = timed(lambda: cache.update(m))
        t_update.append(t)

        def rebuild(m=m):
            idx = m.nonzero().squeeze(1)
            return (gate.index_select(0, idx), up.index_select(0, idx),
                    down.index_select(1, idx))
        t, _ = timed(rebuild)
        t_select.append(t)

        t, dense = timed(lambda: mlp(x, gate, up, down))
        t_dense.append(t)

        # The next step's mask on the cache, then the forward on its views.
        nxt = masks[2 + (step + 1) % (len(masks) - 2)]

        def sparse(nxt=nxt):
            cache.update(nxt)
            return mlp(x, cache.gate(), cache.up(), cache.down_hidden_major())
        t, out = timed(sparse)
        t_sparse.append(t)
        cache.update(m)  # back on the sequence
        reference = mlp(x * 1, gate, up, down * nxt.to(dtype))
        assert torch.allclose(out.float(), reference.float(), rtol=1e-2, atol=1e-2 * hidden ** 0.5), \
            "sparse forward disagrees with the masked dense MLP"

    med = {name: statistics.median(v) * 1e3 for name, v in
           (("update", t_update), ("index_select", t_select), ("dense", t_dense),
            ("sparse", t_sparse))}
    print(f"sparse_mlp vs PyTorch: {args.model} (H={hidden}, I={inter}), {args.dtype}, "
          f"active {args.active:.2f}, churn {args.churn:.2f}, {args.threads} threads, "
          f"{args.steps} steps, {args.layout} layout (medians)")
    print(f"  cache update                     {med['update']:9.3f} ms")
    print(f"  index_select rebuild             {med['index_select']:9.3f} ms   "
          f"-> update is {med['index_select'] / med['update']:.1f}x faster")
    print(f"  dense MLP forward (1 token)      {med['dense']:9.3f} ms")
    print(f"  update + sparse forward          {med['sparse']:9.3f} ms   "
          f"-> {med['sparse'] / med['dense']:.2f}x the dense forward")


if __name__ == "__main__":
    main()
