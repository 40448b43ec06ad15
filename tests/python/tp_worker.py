"""One rank of the tensor-parallel tests (tests/python/test_distributed.py
starts two): builds the seeded model, steps every layer over the seeded
mask sequence through sparse_mlp.distributed, and saves its outputs.

    tp_worker.py RANK WORLD PORT MODE OUT_DIR
MODE: whole | sliced | gate-first | gate-first-exact | file | fail (rank 1 raises after its
first step)."""

import os
import sys

import numpy as np
import torch

import sparse_mlp
import sparse_mlp.distributed as tp

LAYERS, HIDDEN, NEURONS, STEPS = 3, 48, 101, 6


def model(dtype=torch.float32):
    gen = torch.Generator().manual_seed(7)
    return [tuple((torch.randn(*shape, generator=gen) / 7).to(dtype)
                  for shape in ((NEURONS, HIDDEN), (NEURONS, HIDDEN), (HIDDEN, NEURONS)))
            for _ in range(LAYERS)]


def masks_and_inputs():
    gen = torch.Generator().manual_seed(8)
    for step in range(STEPS):
        tokens = 1 + step % 3
        masks = [torch.rand(tokens, NEURONS, generator=gen) < 0.1 + 0.15 * (step % 4)
                 for _ in range(LAYERS)]
        yield masks, torch.randn(tokens, HIDDEN, generator=gen)


def main(rank, world, port, mode, out_dir):
    tp.init_process_group("gloo", timeout_s=20, init_method=f"tcp://127.0.0.1:{port}",
                          rank=rank, world_size=world)
    layers = model(torch.bfloat16 if mode == "sliced" else torch.float32)
    if mode == "sliced":
        b, e = tp.neuron_range(NEURONS, rank, world)
        layers = [(g[b:e], u[b:e], d[:, b:e].contiguous()) for g, u, d in layers]
        cache = tp.TensorParallelModelCache(layers, sliced=True)
    elif mode == "file":
        path = os.path.join(out_dir, f"rank{rank}.spmlb")
        sparse_mlp.store.write(path, layers, neurons=tp.neuron_range(NEURONS, rank, world),
                               alignment=512)
        cache = tp.TensorParallelModelCache.from_file(path, budget_bytes=1 << 24, window=2,
                                                      direct_io="never")
    elif mode == "gate-first":
        cache = tp.TensorParallelModelCache(layers, masks="gate-first", sparsity=0.5)
    elif mode == "gate-first-exact":
        cache = tp.TensorParallelModelCache(layers, masks="gate-first", sparsity=0.5,
                                            topk="exact")
    else:
        cache = tp.TensorParallelModelCache(layers)
        # Bad arguments raise ValueError naming them (the exit code tells).
        for bad, needle in ((dict(masks="oracle"), "masks must be"),
                            (dict(topk="global"), "topk must be"),
                            (dict(topk="exact"), "is for masks='gate-first'")):
            try:
                tp.TensorParallelModelCache(layers, **bad)
            except ValueError as e:
                assert needle in str(e), e
            else:
                raise AssertionError(f"{bad} was accepted")
        try:
            cache.local_mask(torch.ones(7, dtype=torch.bool))
        except ValueError as e:
            assert f"{NEURONS} neurons" in str(e), e
        else:
            raise AssertionError("a mask of 7 neurons was accepted")
    outputs, kept = [], []
    for step, (masks, x) in enumerate(masks_and_inputs()):
        for l in range(LAYERS):
            if mode == "fail" and rank == 1 and (step, l) == (0, 1):
                raise RuntimeError("rank 1 fails on purpose")
            mask = None if mode.startswith("gate-first") else (
                masks[l] if rank == 0 else cache.local_mask(masks[l]))  # whole / sliced
            outputs.append(cache.step(l, mask, x).numpy())
            if mask is None:
                kept.append(cache.last_mask)
    np.savez(os.path.join(out_dir, f"rank{rank}.npz"), *outputs,
             begin=cache.begin, end=cache.end, kept=np.array(kept))
    # Both ranks done before either tears its connections down.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
