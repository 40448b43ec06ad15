"""Tensor-parallel sparse MLPs on torch.distributed, launched as PyTorch
users launch: each rank holds only its neuron slice of every layer and
caches it; the partial outputs are summed by one all-reduce per layer.

    python3 -m torch.distributed.run --nproc_per_node=2 --redirects 1 --tee 1 \
        examples/tensor_parallel.py
    torchrun --nproc_per_node=2 examples/tensor_parallel.py --layers 28   # newer torch

(`--redirects 1 --tee 1`: Debian's torch 1.13 launcher fails on Python 3.11
with its default "0", an IntFlag change; 1 sends each rank's stdout to the
console, prefixed.)

Each rank builds its own slice of a llama-3.2-3b-shaped model (random
bfloat16 weights, seeded, so every rank agrees on the model without ever
holding all of it) and decodes --tokens tokens with masks of --active
neurons that change by --churn per token. Rank 0 prints, per token and
layer, the local step, the all-reduce of the [1, H] float32 partial and
the all-reduce's share, and the collective's latency alone.
"""

import argparse
import time

import torch
import torch.distributed as dist

import sparse_mlp.distributed as tp


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--intermediate", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--active", type=float, default=0.5)
    parser.add_argument("--churn", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1, help="threads per rank")
    parser.add_argument("--timeout", type=int, default=60, help="collective timeout, seconds")
    args = parser.parse_args(argv)
    tp.init_process_group("gloo", timeout_s=args.timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    h, i = args.hidden, args.intermediate
    begin, end = tp.neuron_range(i, rank, world)
    n = end - begin
    layers = []
    for l in range(args.layers):
        gen = torch.Generator().manual_seed(1000 * l + rank)  # this rank's slice only
        layers.append(tuple((torch.randn(*s, generator=gen) * 0.02).to(torch.bfloat16)
                            for s in ((n, h), (n, h), (h, n))))
    model = tp.TensorParallelModelCache(layers, sliced=True, sparsity=1 - args.active,
                                        num_threads=args.threads)
    gen = torch.Generator().manual_seed(7)  # the same inputs and masks on every rank
    masks = [torch.rand(i, generator=gen) < args.active for _ in range(args.layers)]
    warm = 4
    for t in range(warm + args.tokens):
        if t == warm:
            dist.barrier()
            model.timings.update(step_seconds=0.0, allreduce_seconds=0.0, steps=0)
            start = time.perf_counter()
        x = torch.randn(1, h, generator=gen)
        for l in range(args.layers):
            flip = torch.rand(i, generator=gen) < args.churn / 2
            masks[l] = masks[l] ^ (flip & (torch.rand(i, generator=gen) < 1.0))
            x = x + model.step(l, masks[l], x) * 0.1
    wall = time.perf_counter() - start
    # The collective alone: [1, H] float32, back to back.
    probe = torch.zeros(1, h)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(200):
        dist.all_reduce(probe)
    latency = (time.perf_counter() - t0) / 200
    tm = model.timings
    per = tm["steps"]
    summary = torch.tensor([tm["step_seconds"] / per, tm["allreduce_seconds"] / per, latency,
                            wall / args.tokens])
    gathered = [torch.zeros(4, dtype=torch.float64) for _ in range(world)]
    dist.all_gather(gathered, summary.double())
    if rank == 0:
        print(f"{world} ranks (gloo, loopback), {args.layers} layers of {h} x {i} bfloat16, "
              f"active {args.active}, churn {args.churn}, {args.threads} thread(s) per rank, "
              f"{args.tokens} tokens")
        print(f"{'rank':>4} {'neurons':>9} {'step ms':>8} {'allred ms':>9} {'share':>6} "
              f"{'lat ms':>7} {'ms/token':>9}")
        for r, g in enumerate(gathered):
            step, red, lat, tok = (float(v) for v in g)
            b, e = tp.neuron_range(i, r, world)
            print(f"{r:>4} {e - b:>9} {step * 1e3:8.3f} {red * 1e3:9.3f} "
                  f"{red / (step + red):6.1%} {lat * 1e3:7.3f} {tok * 1e3:9.2f}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
