"""The native MLP forward (``mlp_forward``) and a LLaMA MLP that computes
only the active neurons through the cache (``LlamaSkipMLP``)."""

import numpy as np
import torch
import torch.nn.functional as F

from sparse_mlp import _sparse_mlp
from sparse_mlp.cache import (WeightCache, _is_torch, _out_matrix, _result, _tokens,
                              _weight, check_mask)


def _indices(indices, num_neurons):
    """Sorted neuron indices as a C-contiguous uint32 NumPy array (checked
    for sign and type here, for order, duplicates and range natively)."""
    if _is_torch(indices):
        indices = indices.detach().cpu().numpy()
    indices = np.asarray(indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got {indices.dtype}")
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {indices.shape}")
    if indices.size and (indices.min() < 0 or indices.max() >= num_neurons):
        bad = indices.min() if indices.min() < 0 else indices.max()
        raise ValueError(f"indices must be in [0, {num_neurons}), got {int(bad)}")
    return np.ascontiguousarray(indices, dtype=np.uint32)


def mlp_forward(x, gate, up, down, *, indices=None, activation="silu",
                down_neuron_major=False, num_threads=None, out=None, accumulate=False):
    """``down(act(gate x) * (up x))`` with the native kernels (GIL released).

    ``gate``/``up``: ``[I, H]`` (``gate`` None: a gate-less MLP,
    ``down(act(up x))``); ``down``: ``[H, I]`` as in ``nn.Linear``, or
    ``[I, H]`` with ``down_neuron_major=True``. ``indices`` (sorted,
    distinct neuron indices) computes over those neurons only, reading
    their rows in place (direct-index: needs the neuron-major down); None
    computes over all of them. ``x``: ``[H]`` or ``[tokens, H]``, float32 or
    the weights' type; the result has x's shape and type (``out``: written
    in place; ``accumulate=True`` adds to it, a residual add). Weights are
    taken without copying (torch or NumPy, C-contiguous, CPU).
    ``num_threads``: default ``torch.get_num_threads()``."""
    up_w = _weight(up, "up")
    if up_w is None:
        raise TypeError("up must be a torch.Tensor or numpy.ndarray, got None")
    x2, fresh = _tokens(x, up_w.shape[-1])
    target = fresh if out is None else _out_matrix(out, x2)
    if accumulate and out is None:
        raise ValueError("accumulate=True adds to out: pass out")
    idx = None if indices is None else _indices(indices, up_w.shape[0])
    threads = torch.get_num_threads() if num_threads is None else num_threads
    _sparse_mlp.mlp_forward(x2, _weight(gate, "gate"), up_w, _weight(down, "down"), idx, target,
                            activation=activation, down_neuron_major=down_neuron_major,
                            num_threads=threads, accumulate=accumulate)
    return _result(target, x) if out is None else out


def _half_matmul_supported():
    try:
        F.linear(torch.zeros(1, 1, dtype=torch.float16), torch.zeros(1, 1, dtype=torch.float16))
        return True
    except RuntimeError:  # torch < 2.1 has no float16 GEMM on the CPU
        return False


_HALF_MATMUL = _half_matmul_supported()


def _gated_mlp(x, gate, up, down):
    """The reference path's down(silu(gate(x)) * up(x)) in torch, weights
    [A, H], [A, H], [H, A]. In float32 for float16 where torch lacks CPU
    float16 kernels (result rounded back to float16)."""
    if gate.dtype == torch.float16 and not _HALF_MATMUL:
        out = _gated_mlp(x.float(), gate.float(), up.float(), down.float())
        return out.to(torch.float16)
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


class LlamaSkipMLP(torch.nn.Module):
    """``down(silu(gate(x)) * up(x))`` over the active neurons of a mask.

    Build it empty like the seed (``LlamaSkipMLP(hidden_size,
    intermediate_size, sparsity, use_optimized_cache=True)``) and load
    weights, or from an existing dense MLP with :meth:`from_dense`.

    ``forward(x, mask=None)``: ``mask`` is bool or uint8 ``[I]`` or
    ``[tokens, I]`` (the union is used; the rules of
    ``sparse_mlp.cache.MASK_RULES``, the same on both paths below), or
    omitted when a ``predictor`` callable was given (``predictor(x) ->
    mask``). With ``use_optimized_cache=True`` the mask
    drives a :class:`WeightCache` through its fused layer step
    (:meth:`WeightCache.step`: the update and the native forward in one pass;
    no torch matmul on this path, float16 and bfloat16 computed natively);
    with ``False`` the active rows are gathered with ``index_select`` each
    call and multiplied in torch (the reference path; float16 in float32
    where torch < 2.1 has no CPU float16 matmul). Both give the dense MLP's
    output with the inactive neurons zeroed; with an all-true mask, the dense
    output. ``x``: ``[H]`` or ``[tokens, H]`` (any leading shape is
    flattened), in the weights' type or float32.

    The module's weights are the source of truth and are never replaced:
    :meth:`from_dense` shares the caller's tensors, the cache reads gate and
    up in place, and on the first cached forward it transposes down once
    into a neuron-major ``[I, H]`` copy of its own (parallel SIMD transpose;
    none when ``down_proj.weight`` is already a transposed view of a
    neuron-major tensor, which it then reads in place). Memory: the weights,
    plus that copy of down, plus the packed active rows. The cache does not
    follow later edits of the weights: call :meth:`reset_cache` after
    changing them, and the next forward rebuilds it from them.
    ``sparsity`` (fraction of neurons expected inactive) only pre-sizes the
    cache.
    """

    def __init__(self, hidden_size, intermediate_size, sparsity=0.5,
                 use_optimized_cache=True, *, predictor=None, num_threads=None,
                 dtype=torch.float32):
        super().__init__()
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.sparsity = sparsity
        self.use_optimized_cache = use_optimized_cache
        self.predictor = predictor
        self.num_threads = num_threads or torch.get_num_threads()
        self.gate_proj = torch.nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.up_proj = torch.nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.down_proj = torch.nn.Linear(intermediate_size, hidden_size, bias=False, dtype=dtype)
        for p in self.parameters():
            p.requires_grad_(False)
        self._cache = None

    @classmethod
    def from_dense(cls, gate_proj, up_proj, down_proj, sparsity=0.5,
                   use_optimized_cache=True, **kwargs):
        """From ``nn.Linear`` layers (or weight tensors) of a dense MLP; shares
        their weights (no copy: ``module.down_proj.weight`` is the caller's
        tensor, and edits to it are seen after :meth:`reset_cache`)."""
        def weight(w):
            return w.weight if isinstance(w, torch.nn.Linear) else w
        gate, up, down = weight(gate_proj), weight(up_proj), weight(down_proj)
        module = cls(up.shape[1], up.shape[0], sparsity, use_optimized_cache,
                     dtype=up.dtype, **kwargs)
        module.gate_proj.weight = torch.nn.Parameter(gate.detach(), requires_grad=False)
        module.up_proj.weight = torch.nn.Parameter(up.detach(), requires_grad=False)
        module.down_proj.weight = torch.nn.Parameter(down.detach(), requires_grad=False)
        return module

    def reset_cache(self):
        """Drops the cache; the next forward rebuilds it from the weights."""
        self._cache = None

    @property
    def weight_cache(self):
        """The :class:`WeightCache` (None before the first cached forward)."""
        return self._cache

    def _mask(self, x, mask):
        if mask is None:
            if self.predictor is None:
                raise ValueError("forward needs a mask, or a predictor given at construction")
            mask = self.predictor(x)
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        check_mask(mask)
        if mask.shape[-1] != self.intermediate_size:
            raise ValueError(
                f"mask must be [{self.intermediate_size}] or [tokens, {self.intermediate_size}],"
                f" got {tuple(mask.shape)}")
        return mask

    def _build_cache(self, initial):
        down = self.down_proj.weight.detach()
        neuron_major = down.t().is_contiguous() and not down.is_contiguous()
        self._cache = WeightCache(initial, self.gate_proj.weight, self.up_proj.weight,
                                  down.t() if neuron_major else down,
                                  down_neuron_major=neuron_major,
                                  num_threads=self.num_threads)
        self._cache.reserve(round((1.0 - self.sparsity) * self.intermediate_size))

    def forward(self, x, mask=None):
        mask = self._mask(x, mask)
        if self.use_optimized_cache:
            flat = x.reshape(-1, self.hidden_size) if x.dim() > 2 else x
            if not flat.is_contiguous():
                flat = flat.contiguous()  # an input, read once: not a weight
            if self._cache is None:
                self._build_cache(mask if mask.dim() == 1 else (mask != 0).any(dim=0))
                out = self._cache.forward(flat)
            else:
                out = self._cache.step(mask, flat)
            return out.reshape(x.shape)
        else:
            active = (mask if mask.dim() == 1 else (mask != 0).any(dim=0)).nonzero().squeeze(1)
            gate = self.gate_proj.weight.index_select(0, active)
            up = self.up_proj.weight.index_select(0, active)
            down = self.down_proj.weight.index_select(1, active)
        return _gated_mlp(x, gate, up, down)
