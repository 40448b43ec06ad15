"""Tensor-parallel sparse MLPs over ``torch.distributed``: rank r of R owns
neurons ``[r I / R, (r + 1) I / R)`` of every layer (its rows of gate and
up, its columns of down), keeps its own cache over its slice of each mask,
computes its partial y, and the ranks add their partials with one
all-reduce of ``[tokens, H]`` float32 per layer.

    import sparse_mlp.distributed as tp
    tp.init_process_group(timeout_s=60)          # gloo; torchrun's environment
    model = tp.TensorParallelModelCache(layers)  # whole weights: this rank slices
    y = model.step(l, mask, x)                   # whole or sliced mask; y summed over ranks

Launch as PyTorch users do: ``torchrun --nproc_per_node=2 script.py`` (torch
1.13: ``python3 -m torch.distributed.run --nproc_per_node=2 script.py``).

Why by neurons: a neuron's three rows are all it needs, so a rank's slice
is a whole smaller MLP; a mask splits into per-rank masks with no
communication; each rank reads (from DRAM or its own SSD) only its share;
and the one collective, a sum of ``[tokens, H]`` partials, is independent
of the sparsity. Precision: each rank sums its neurons in float32 (the
forward's contract) and the all-reduce adds the R partials in float32, so
the result differs from the single-process one only in the order of
float32 additions: within 2^-24 x (count + H + R) x the sum of the terms'
magnitudes (the forward's bound, with R more terms).

Masks computed here (no mask given): gate-first and predictors run on each
rank's slice. By default each rank keeps its own top ``round((1 - sparsity)
x n_r)`` of its ``n_r`` neurons (``topk="per-rank"``: no collective, but not
the single-process rule's global top-k; the kept count is the same up to
rounding). Gate-first with ``topk="exact"`` keeps exactly the neurons one
process would (the global top k per token, ties to the lower index): each
rank sends its own top min(k, n_r) candidates (magnitude and neuron) in one
all-gather, every rank finds the global k-th candidate of each token, and
keeps its neurons that rank above it; the step then reuses the gate
activations it computed. The all-gather moves 16 k T bytes per rank per
layer. Given masks are exact: the same neurons as one process.

Failures: the process group's ``timeout`` bounds every collective; a rank
that fails (an exception, a dead process) makes its peers' next all-reduce
raise RuntimeError naming this rank, the layer and the cause instead of
hanging.
"""

import datetime
import time

import numpy as np
import torch
import torch.distributed as dist

from sparse_mlp import _sparse_mlp
from sparse_mlp import store
from sparse_mlp._convert import keep_count, mask_array, tokens
from sparse_mlp._models import layer_triple
from sparse_mlp.model import ModelCache


def neuron_range(intermediate_size, rank, world_size):
    """``(begin, end)``: the neurons rank ``rank`` of ``world_size`` owns."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if world_size > intermediate_size:
        raise ValueError(f"{world_size} ranks need at least as many neurons, got "
                         f"{intermediate_size}")
    return (rank * intermediate_size // world_size, (rank + 1) * intermediate_size // world_size)


def init_process_group(backend="gloo", *, timeout_s=60, **kwargs):
    """``torch.distributed.init_process_group`` with a bounded timeout
    (every collective fails after ``timeout_s`` seconds rather than hang),
    from torchrun's environment (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``,
    ``WORLD_SIZE``) unless ``init_method`` / ``rank`` / ``world_size`` are
    given. gloo on CPUs; NCCL later on GPUs."""
    kwargs.setdefault("init_method", "env://")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


class TensorParallelModelCache:
    """This rank's slice of every MLP layer, and the steps that sum over ranks.

    Args:
      layers: one entry per layer, as :class:`sparse_mlp.ModelCache` takes
        them (``(gate, up, down)`` triples or MLP modules), holding the whole
        layer (``sliced=False``: this rank takes its rows, zero-copy for gate
        and up, a neuron-major copy of its columns of down) or only this
        rank's slice (``sliced=True``: gate/up ``[n_r, H]``, down ``[H, n_r]``,
        slices in rank order).
      group: the process group (default: the world).
      sparsity: for steps without a mask (gate-first, or ``predictors``).
      predictors: None, or one :class:`sparse_mlp.LowRankPredictor` per
        layer over the whole layer (this rank uses its rows of B).
      masks: "given" (every step passes a mask) or "gate-first" (steps
        without a mask use gate-first on the slice; the caches then hold up
        and down only).
      active_fraction, num_threads, and ``**cache_args``: as for ModelCache.

    ``step(l, mask, x)``: ``mask`` is ``[I]`` / ``[tokens, I]`` over the
    whole layer or ``[n_r]`` / ``[tokens, n_r]`` over this rank's slice;
    returns y (x's shape, float32 unless ``out`` is given) summed over all
    ranks. Every rank must call ``step`` for the same layers in the same
    order (a collective). ``timings`` accumulates ``step_seconds`` (the
    local step) and ``allreduce_seconds``.
    """

    def __init__(self, layers, *, group=None, sliced=False, sparsity=0.5, predictors=None,
                 masks="given", topk="per-rank", active_fraction=None, num_threads=1,
                 **cache_args):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call "
                               "sparse_mlp.distributed.init_process_group() first")
        if masks not in ("given", "gate-first"):
            raise ValueError(f"masks must be 'given' or 'gate-first', got {masks!r}")
        if topk not in ("per-rank", "exact"):
            raise ValueError(f"topk must be 'per-rank' or 'exact', got {topk!r}")
        if topk == "exact" and masks != "gate-first":
            raise ValueError("topk='exact' is for masks='gate-first'")
        if masks == "gate-first" and predictors is not None:
            raise ValueError("masks='gate-first' and predictors exclude each other")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        triples = [layer_triple(layer, i) for i, layer in enumerate(layers)]
        if not triples:
            raise ValueError("a model needs at least one layer, got 0")
        local_size = triples[0][1].shape[0]
        if sliced:
            sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world_size)]
            dist.all_gather(sizes, torch.tensor([local_size]), group=group)
            sizes = [int(s) for s in sizes]
            self.begin = sum(sizes[:self.rank])
            self.intermediate_size = sum(sizes)
            self.end = self.begin + local_size
        else:
            self.intermediate_size = local_size
            self.begin, self.end = neuron_range(local_size, self.rank, self.world_size)
            sizes = [e - b for b, e in (neuron_range(local_size, r, self.world_size)
                                        for r in range(self.world_size))]
        self._max_local = max(sizes)
        self.topk = topk
        self.num_threads = num_threads
        self.last_mask = None  # gate-first: this rank's kept neurons, last step
        self.local_size = self.end - self.begin
        self.hidden_size = triples[0][1].shape[1]
        self.sparsity = sparsity
        self.k_local = keep_count(sparsity, self.local_size)
        self.k_global = keep_count(sparsity, self.intermediate_size)
        b, e = self.begin, self.end
        local = []
        self._gates = []
        for gate, up, down in triples:
            if not sliced:
                gate = None if gate is None else gate[b:e]
                up = up[b:e]
                down = down[:, b:e]
            # down's columns as neuron-major rows: the cache reads them in place.
            down_rows = down.t().contiguous()
            self._gates.append(gate)
            local.append((None if masks == "gate-first" else gate, up, down_rows))
        fraction = active_fraction if active_fraction is not None else max(1e-3, 1.0 - sparsity)
        self.local = ModelCache(local, active_fraction=fraction, num_threads=num_threads,
                                down_neuron_major=True, **cache_args)
        self._masks = masks
        self._gate_first = ([_sparse_mlp.GateFirst(g.detach()) for g in self._gates]
                            if masks == "gate-first" else None)
        self._predictors = None
        if predictors is not None:
            if len(predictors) != len(triples):
                raise ValueError(f"predictors must have one entry per layer ({len(triples)}), "
                                 f"got {len(predictors)}")
            self._predictors = [
                _sparse_mlp.LowRankPredictor(p.a, p.b[b:e].contiguous()) for p in predictors]
        self.timings = {"step_seconds": 0.0, "allreduce_seconds": 0.0, "steps": 0}

    @classmethod
    def from_file(cls, path, *, budget_bytes, group=None, **flash_args):
        """This rank's slice served from its own bundle file (written with
        ``sparse_mlp.store.write(..., neurons=neuron_range(I, rank, R))``)
        under ``budget_bytes`` of DRAM (the flash tier): each machine holds
        and reads only its share. Steps take given masks."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call "
                               "sparse_mlp.distributed.init_process_group() first")
        info = store.info(path)
        self = cls.__new__(cls)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.begin = info["neuron_begin"]
        self.local_size = info["intermediate_size"]
        self.end = self.begin + self.local_size
        self.intermediate_size = info["model_intermediate_size"]
        self.hidden_size = info["hidden_size"]
        expected = neuron_range(self.intermediate_size, self.rank, self.world_size)
        if expected != (self.begin, self.end):
            raise ValueError(f"{path} holds neurons [{self.begin}, {self.end}) but rank "
                             f"{self.rank} of {self.world_size} owns {list(expected)}")
        self.local = ModelCache.from_file(path, budget_bytes=budget_bytes, **flash_args)
        self._masks, self._gate_first, self._predictors = "given", None, None
        self.sparsity = None
        self.timings = {"step_seconds": 0.0, "allreduce_seconds": 0.0, "steps": 0}
        return self

    def __len__(self):
        return len(self.local)

    def _exact_gate_first(self, index, xf, partial):
        """Gate-first with the global top-k (see the module's docstring)."""
        gf = self._gate_first[index]
        tokens = xf.shape[0]
        act = np.empty((tokens, self.local_size), dtype=np.float32)
        gf.activations(xf, act, num_threads=self.num_threads)
        mag = torch.from_numpy(act).abs()
        if torch.isnan(mag).any():
            raise ValueError(f"layer {index}: a gate activation is NaN")
        k = self.k_global
        kc = min(k, self.local_size)
        width = min(k, self._max_local)
        order = torch.sort(mag, dim=1, descending=True, stable=True).indices[:, :kc]
        # Candidates as float64 pairs (magnitude, neuron): float32 values and
        # indices < 2^53 are exact in float64; padding ranks last.
        mine = torch.full((tokens, 2 * width), -1.0, dtype=torch.float64)
        mine[:, :kc] = torch.gather(mag, 1, order).double()
        mine[:, width:] = float(self.intermediate_size)
        mine[:, width:width + kc] = (order + self.begin).double()
        everyone = [torch.empty_like(mine) for _ in range(self.world_size)]
        try:
            dist.all_gather(everyone, mine, group=self.group)
        except RuntimeError as e:
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: the top-k all-gather of layer {index} "
                f"failed (a peer failed, or the process group's timeout passed): {e}") from e
        values = torch.cat([c[:, :width] for c in everyone], dim=1)
        neurons = torch.cat([c[:, width:] for c in everyone], dim=1)
        # Order by (magnitude descending, neuron ascending): sort by neuron,
        # then stably by magnitude.
        by_neuron = torch.sort(neurons, dim=1, stable=True).indices
        values, neurons = values.gather(1, by_neuron), neurons.gather(1, by_neuron)
        by_value = torch.sort(values, dim=1, descending=True, stable=True).indices
        kth_value = values.gather(1, by_value[:, k - 1:k])
        kth_neuron = neurons.gather(1, by_value[:, k - 1:k])
        ids = torch.arange(self.begin, self.end, dtype=torch.float64)[None, :]
        magd = mag.double()
        keep = (magd > kth_value) | ((magd == kth_value) & (ids <= kth_neuron))
        mask = keep.any(dim=0).numpy()
        gf.step_selected(self.local[index]._native, xf, partial, mask.astype(np.uint8), act)
        self.last_mask = mask

    def local_mask(self, mask):
        """``mask`` (whole layer or this rank's slice) as this rank's slice."""
        m = mask_array(mask)
        if m.shape[-1] == self.intermediate_size:
            return np.ascontiguousarray(m[..., self.begin:self.end])
        if m.shape[-1] == self.local_size:
            return m
        raise ValueError(f"mask must cover the layer's {self.intermediate_size} neurons or this "
                         f"rank's {self.local_size}, got shape {tuple(m.shape)}")

    def step(self, index, mask, x, out=None):
        """Layer ``index`` over ``mask`` (None: gate-first or the predictor
        on this rank's slice), summed over the ranks."""
        x2, _ = tokens(x, self.hidden_size)
        partial = torch.empty(x2.shape, dtype=torch.float32)
        xf = x2 if x2.dtype == torch.float32 else x2.float()
        start = time.perf_counter()
        if mask is not None:
            self.local.step(index, self.local_mask(mask), xf, out=partial)
        elif self._gate_first is not None and self.topk == "exact":
            self._exact_gate_first(index, xf, partial)
        elif self._gate_first is not None:
            gf = self._gate_first[index]
            gf.step(self.local[index]._native, xf, partial, k=self.k_local)
            self.last_mask = gf.mask().astype(bool)
        elif self._predictors is not None:
            self._predictors[index].step(self.local[index]._native, xf, partial, k=self.k_local)
        else:
            raise ValueError("step needs a mask (this cache was built with masks='given' and no "
                             "predictors)")
        middle = time.perf_counter()
        try:
            dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=self.group)
        except RuntimeError as e:
            raise RuntimeError(
                f"rank {self.rank} of {self.world_size}: the all-reduce of layer {index} failed "
                f"(a peer failed, or the process group's timeout passed): {e}") from e
        end = time.perf_counter()
        self.timings["step_seconds"] += middle - start
        self.timings["allreduce_seconds"] += end - middle
        self.timings["steps"] += 1
        result = partial.reshape(x.shape)
        if out is not None:
            out.copy_(result)
            return out
        return result
