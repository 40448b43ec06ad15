"""The native MLP forward (``mlp_forward``) and a LLaMA MLP that computes
only the active neurons through the cache (``LlamaSkipMLP``)."""

import numpy as np
import torch
import torch.nn.functional as F

from sparse_mlp import _sparse_mlp
from sparse_mlp._convert import (check_mask, is_torch, keep_count, out_matrix, result, tokens,
                                 weight)
from sparse_mlp.cache import WeightCache
from sparse_mlp.predictors import LowRankPredictor, gate_first_mask
from sparse_mlp.quant import QuantizedMLP, QuantizedTensor, mlp_forward_quantized, quantize_mlp


def _indices(indices, num_neurons):
    """Sorted neuron indices as a C-contiguous uint32 NumPy array (checked
    for sign and type here, for order, duplicates and range natively)."""
    if is_torch(indices):
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
                down_neuron_major=False, num_threads=None, out=None, accumulate=False,
                quantize_x=False):
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
    ``num_threads``: default ``torch.get_num_threads()``.

    Quantized weights (``sparse_mlp.quantize_mlp``'s ``gate``, ``up`` and
    ``down``, each a :class:`sparse_mlp.QuantizedTensor`) run the quantized
    kernels; x is then float32 (``quantize_x=True``: rounded to int8 per
    block of 32 and multiplied in integers where the CPU can; see
    :func:`sparse_mlp.quant.mlp_forward_quantized`). A down quantized along I
    (``quantize_mlp(..., linear=True)``) runs the ``nn.Linear``-layout
    forward, dense only."""
    if isinstance(up, QuantizedTensor):
        if not (isinstance(down, QuantizedTensor)
                and (gate is None or isinstance(gate, QuantizedTensor))):
            raise TypeError("quantized weights come together: gate, up and down from "
                            "sparse_mlp.quantize_mlp")
        threads = torch.get_num_threads() if num_threads is None else num_threads
        return mlp_forward_quantized(x, QuantizedMLP(gate, up, down), indices=indices,
                                     activation=activation, num_threads=threads, out=out,
                                     accumulate=accumulate, quantize_x=quantize_x)
    if quantize_x:
        raise ValueError("quantize_x applies to quantized weights (sparse_mlp.quantize_mlp)")
    up_w = weight(up, "up")
    if up_w is None:
        raise TypeError("up must be a torch.Tensor or numpy.ndarray, got None")
    x2, fresh = tokens(x, up_w.shape[-1])
    target = fresh if out is None else out_matrix(out, x2)
    if accumulate and out is None:
        raise ValueError("accumulate=True adds to out: pass out")
    idx = None if indices is None else _indices(indices, up_w.shape[0])
    threads = torch.get_num_threads() if num_threads is None else num_threads
    _sparse_mlp.mlp_forward(x2, weight(gate, "gate"), up_w, weight(down, "down"), idx, target,
                            activation=activation, down_neuron_major=down_neuron_major,
                            num_threads=threads, accumulate=accumulate)
    return result(target, x) if out is None else out


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
    """``down(silu(gate(x)) * up(x))`` over the neurons that matter.

    Build it empty like the seed (``LlamaSkipMLP(hidden_size,
    intermediate_size, sparsity, use_optimized_cache=True)``) and load
    weights, or from an existing dense MLP with :meth:`from_dense`, or a
    whole model at once with :func:`sparse_mlp.sparsify`.

    Which neurons, per call of ``forward(x, mask=None)``:

    - ``mask`` given: bool or uint8 ``[I]`` or ``[tokens, I]`` (the union;
      ``sparse_mlp.cache.MASK_RULES``);
    - else a ``predictor``: a :class:`sparse_mlp.predictors.LowRankPredictor`
      (scores = B (A x) natively, each token's top k, into the cache's step)
      or any callable ``predictor(x) -> mask``;
    - else the training-free default, **gate-first** (CATS): act(gate x)
      for every neuron, each token's top k = round((1 - sparsity) x I) by
      |act(gate x)| (ties to the lower index; the union over tokens), or
      those above ``gate_threshold`` (see :meth:`calibrate_gate_threshold`),
      then up and down over those neurons only, reusing act(gate x). Natively
      in one call; the cache then holds up and down rows only. With
      ``direct=True`` no cache: the kept neurons' up and down rows are read
      in place (down transposed once into a neuron-major copy), the faster
      form with every weight in DRAM (docs/performance.md).

    With ``use_optimized_cache=True`` the neurons drive a :class:`WeightCache`
    through its fused layer step (the update and the native forward in one
    pass; no torch matmul on this path, float16 and bfloat16 computed
    natively); with ``False`` the same neurons are gathered with
    ``index_select`` each call and multiplied in torch (the reference path;
    float16 in float32 where torch < 2.1 has no CPU float16 matmul). Both
    give the dense MLP's output with the other neurons zeroed; with every
    neuron kept (``sparsity=0`` or an all-true mask), the dense output.
    ``x``: ``[H]`` or ``[tokens, H]`` (any leading shape is flattened), in
    the weights' type or float32.

    The module's weights are the source of truth and are never replaced:
    :meth:`from_dense` shares the caller's tensors, the cache reads gate and
    up in place, and on the first cached forward it transposes down once
    into a neuron-major ``[I, H]`` copy of its own (parallel SIMD transpose;
    none when ``down_proj.weight`` is already a transposed view of a
    neuron-major tensor, which it then reads in place). Memory: the weights,
    plus that copy of down, plus the packed active rows. The cache does not
    follow later edits of the weights: call :meth:`reset_cache` after
    changing them, and the next forward rebuilds it from them.
    ``sparsity`` (fraction of neurons inactive, in [0, 1)) sets the
    gate-first and predictor k and pre-sizes the cache.

    Quantized weights: :meth:`from_dense` with ``weights="int8"`` or
    ``"q4"`` (or with :class:`sparse_mlp.QuantizedTensor` projections)
    keeps only the quantized rows (``module.quantized``, a
    :class:`sparse_mlp.QuantizedMLP`; no float projections), and every path
    above runs on them natively: gate-first selects by the quantized gate,
    the cache holds quantized rows. x of another type is computed in
    float32 and the result returned in x's type. The reference path
    (``use_optimized_cache=False``) multiplies the dequantized weights in
    torch (dequantized once, kept). ``quantize_x=True`` (an attribute too)
    rounds x to int8 per block of 32 on the native paths, which then sum
    the gate and up products in integers where the CPU has AVX-512 VNNI
    (:func:`sparse_mlp.quant.mlp_forward_quantized`).
    """

    # find_mlps (sparse_mlp._models) skips modules that already replace a
    # dense MLP.
    replaces_mlp = True

    def __init__(self, hidden_size, intermediate_size, sparsity=0.5,
                 use_optimized_cache=True, *, predictor=None, num_threads=None,
                 dtype=torch.float32, gate_threshold=None, direct=False):
        super().__init__()
        self._setup(hidden_size, intermediate_size, sparsity, use_optimized_cache, predictor,
                    num_threads, gate_threshold, direct)
        self.gate_proj = torch.nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.up_proj = torch.nn.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype)
        self.down_proj = torch.nn.Linear(intermediate_size, hidden_size, bias=False, dtype=dtype)
        for p in self.parameters():
            p.requires_grad_(False)

    def _setup(self, hidden_size, intermediate_size, sparsity, use_optimized_cache, predictor,
               num_threads, gate_threshold, direct):
        self.k = keep_count(sparsity, intermediate_size)
        if predictor is not None and not callable(predictor):
            raise TypeError(f"predictor must be callable (x -> mask), got "
                            f"{type(predictor).__name__}")
        if isinstance(predictor, LowRankPredictor) and (
                predictor.hidden_size != hidden_size
                or predictor.intermediate_size != intermediate_size):
            raise ValueError(
                f"predictor scores {predictor.intermediate_size} neurons from "
                f"{predictor.hidden_size} inputs; this MLP has {intermediate_size} from "
                f"{hidden_size}")
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.sparsity = sparsity
        self.use_optimized_cache = use_optimized_cache
        self.predictor = predictor
        self.gate_threshold = gate_threshold
        self.direct = direct
        self._down_rows = None
        self.num_threads = num_threads or torch.get_num_threads()
        self.quantized = None  # a QuantizedMLP: the module's weights, quantized
        self.quantize_x = False  # x rounded to int8 on the quantized paths
        self._dequantized = None  # the reference path's float weights of it
        self._cache = None
        self._gate_first = None
        # Look-ahead (set by sparsify): the next layer's module, whose
        # predictor reads this layer's input; and the mask it left here.
        self._ahead = None
        self._pending = None

    @classmethod
    def from_dense(cls, gate_proj, up_proj, down_proj, sparsity=0.5,
                   use_optimized_cache=True, *, weights=None, group=32, quantize_x=False,
                   **kwargs):
        """From ``nn.Linear`` layers (or weight tensors) of a dense MLP; shares
        their weights (no copy: ``module.down_proj.weight`` is the caller's
        tensor, and edits to it are seen after :meth:`reset_cache`).

        ``weights="int8"`` or ``"q4"`` quantizes them (groups of ``group``
        along H; see :func:`sparse_mlp.quantize_mlp`) and keeps only the
        quantized rows; :class:`sparse_mlp.QuantizedTensor` projections
        (``quantize_mlp``'s parts) are taken as they are."""
        def weight(w):
            return w.weight if isinstance(w, torch.nn.Linear) else w
        gate, up, down = weight(gate_proj), weight(up_proj), weight(down_proj)
        if weights is not None or isinstance(up, QuantizedTensor):
            module = cls._from_quantized(gate, up, down, sparsity, use_optimized_cache, weights,
                                         group, **kwargs)
            module.quantize_x = bool(quantize_x)
            return module
        if quantize_x:
            raise ValueError("quantize_x applies to quantized weights (weights='int8' or 'q4')")
        module = cls(up.shape[1], up.shape[0], sparsity, use_optimized_cache,
                     dtype=up.dtype, **kwargs)
        module.gate_proj.weight = torch.nn.Parameter(gate.detach(), requires_grad=False)
        module.up_proj.weight = torch.nn.Parameter(up.detach(), requires_grad=False)
        module.down_proj.weight = torch.nn.Parameter(down.detach(), requires_grad=False)
        return module

    @classmethod
    def _from_quantized(cls, gate, up, down, sparsity, use_optimized_cache, fmt, group,
                        predictor=None, num_threads=None, gate_threshold=None, direct=False):
        if isinstance(up, QuantizedTensor):
            if fmt is not None and fmt != up.fmt:
                raise ValueError(f"weights={fmt!r} but the projections are quantized as "
                                 f"{up.fmt!r}")
            if gate is None or not isinstance(down, QuantizedTensor) or not down.transposed:
                raise TypeError("quantized projections come together: gate, up and down of "
                                "sparse_mlp.quantize_mlp (down per neuron)")
            q = QuantizedMLP(gate, up, down)
        else:
            if not (is_torch(gate) and is_torch(up) and is_torch(down)):
                raise TypeError("weights= quantizes torch tensors or nn.Linear layers")
            q = quantize_mlp(gate.detach(), up.detach(), down.detach(), fmt, group=group,
                             num_threads=num_threads or torch.get_num_threads())
        module = cls.__new__(cls)
        torch.nn.Module.__init__(module)
        module._setup(q.hidden_size, q.intermediate_size, sparsity, use_optimized_cache,
                      predictor, num_threads, gate_threshold, direct)
        module.quantized = q
        return module

    def _float_weights(self):
        """(gate, up, down) float weights: the module's, or the quantized
        rows dequantized once (the reference path's)."""
        if self.quantized is None:
            return self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
        if self._dequantized is None:
            q = self.quantized
            self._dequantized = tuple(torch.as_tensor(t.dequantize())
                                      for t in (q.gate, q.up, q.down))
        return self._dequantized

    @property
    def mask_source(self):
        """"mask" (none: masks are given), "gate-first", "low-rank" or "callable"."""
        if self.predictor is None:
            return "gate-first"
        return "low-rank" if isinstance(self.predictor, LowRankPredictor) else "callable"

    def reset_cache(self):
        """Drops the cache; the next forward rebuilds it from the weights."""
        self._cache = None
        self._gate_first = None
        self._down_rows = None
        self._dequantized = None

    @property
    def weight_cache(self):
        """The :class:`WeightCache` (None before the first cached forward)."""
        return self._cache

    def calibrate_gate_threshold(self, x):
        """Sets ``gate_threshold`` to the quantile of |act(gate x)| over the
        tokens of ``x`` (``[tokens, H]``) that keeps the fraction
        1 - sparsity on average: gate-first by threshold instead of a fixed
        k per token (CATS). Returns the threshold."""
        x2 = x.reshape(-1, self.hidden_size).float()
        act = F.silu(F.linear(x2, self._float_weights()[0].float())).abs().flatten()
        self.gate_threshold = float(torch.quantile(act, self.sparsity)) if self.sparsity > 0 \
            else -1.0
        return self.gate_threshold

    def _selection(self):
        if self.gate_threshold is not None:
            return {"threshold": self.gate_threshold}
        return {"k": self.k}

    def _mask(self, x, mask):
        if mask is None:
            mask = self.predictor(x)
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        check_mask(mask)
        if mask.shape[-1] != self.intermediate_size:
            raise ValueError(
                f"mask must be [{self.intermediate_size}] or [tokens, {self.intermediate_size}],"
                f" got {tuple(mask.shape)}")
        return mask

    def _build_cache(self, initial, gate=True):
        if self.quantized is not None:
            q = self.quantized
            self._cache = WeightCache(initial, q.gate if gate else None, q.up, q.down,
                                      num_threads=self.num_threads)
            self._cache.quantize_x = self.quantize_x
            self._cache.reserve(self.k)
            return
        down = self.down_proj.weight.detach()
        neuron_major = down.t().is_contiguous() and not down.is_contiguous()
        self._cache = WeightCache(initial, self.gate_proj.weight if gate else None,
                                  self.up_proj.weight, down.t() if neuron_major else down,
                                  down_neuron_major=neuron_major,
                                  num_threads=self.num_threads)
        self._cache.reserve(self.k)

    def _flat(self, x):
        # Inference only: the native paths take no autograd graph (DLPack
        # refuses tensors that require grad).
        x = x.detach()
        flat = x.reshape(-1, self.hidden_size) if x.dim() != 2 else x
        return flat if flat.is_contiguous() else flat.contiguous()  # an input, read once

    def forward(self, x, mask=None):
        flat = self._flat(x)
        if self.quantized is not None:
            if flat.dtype != torch.float32:  # the quantized kernels take float32 x
                return self.forward(x.float(), mask).to(x.dtype)
            for native in (self._cache, self._gate_first):  # the attribute as it is now
                if native is not None:
                    native.quantize_x = self.quantize_x
        if self._ahead is not None:
            # The next layer's mask from this layer's input (look-ahead).
            self._ahead._pending = self._ahead.predictor(flat)
        if mask is None and self._pending is not None:
            mask, self._pending = self._pending, None
        if mask is None and self.predictor is None:
            out = self._gate_first_forward(flat)
        elif (mask is None and self.use_optimized_cache
              and isinstance(self.predictor, LowRankPredictor)):
            out = self._low_rank_forward(flat)
        else:
            out = self._masked_forward(flat, self._mask(flat, mask))
        return out.reshape(x.shape)

    def _gate_first_forward(self, flat):
        if not self.use_optimized_cache:
            gate, up_w, down_w = self._float_weights()
            if self.gate_threshold is not None:
                act = F.silu(F.linear(flat.float(), gate.float()))
                keep = act.abs() > self.gate_threshold
            else:
                keep, act = gate_first_mask(flat, gate, self.k)
            active = keep.any(dim=0).nonzero().squeeze(1)
            h = act[:, active] * F.linear(flat.float(), up_w.index_select(0, active).float())
            h = h.to(up_w.dtype)
            down = down_w.index_select(1, active)
            if down.dtype == torch.float16 and not _HALF_MATMUL:
                return F.linear(h.float(), down.float()).to(flat.dtype)
            return F.linear(h, down).to(flat.dtype)
        if self._gate_first is None:
            self._gate_first = self._native_gate_first()
        out = torch.empty_like(flat)
        if self.direct and self.quantized is not None:
            q = self.quantized
            self._gate_first.forward(q.up.numpy_rows(), q.down.numpy_rows(), flat, out,
                                     num_threads=self.num_threads, **self._selection())
            return out
        if self.direct:
            if self._down_rows is None:  # neuron-major down, transposed once
                self._down_rows = self.down_proj.weight.detach().t().contiguous()
            self._gate_first.forward(self.up_proj.weight.detach(), self._down_rows, flat, out,
                                     num_threads=self.num_threads, **self._selection())
            return out
        if self._cache is None or self._cache.has_gate:
            self._build_cache(torch.zeros(self.intermediate_size, dtype=torch.bool), gate=False)
        self._gate_first.step(self._cache._native, flat, out, **self._selection())
        return out

    def _native_gate_first(self):
        if self.quantized is None:
            return _sparse_mlp.GateFirst(self.gate_proj.weight.detach())
        g = self.quantized.gate
        native = _sparse_mlp.GateFirst(g.numpy_rows(), quant_type=g.fmt, quant_group=g.group,
                                       hidden_size=g.hidden)
        native.quantize_x = self.quantize_x
        return native

    def _low_rank_forward(self, flat):
        if self._cache is None or not self._cache.has_gate:
            self._build_cache(torch.zeros(self.intermediate_size, dtype=torch.bool))
        out = torch.empty_like(flat)
        p = self.predictor
        self.predictor.native().step(self._cache._native, flat, out, **p._selection())
        return out

    def _masked_forward(self, flat, mask):
        if self.use_optimized_cache:
            if self._cache is None or not self._cache.has_gate:
                self._build_cache(mask if mask.dim() == 1 else (mask != 0).any(dim=0))
                return self._cache.forward(flat)
            return self._cache.step(mask, flat)
        active = (mask if mask.dim() == 1 else (mask != 0).any(dim=0)).nonzero().squeeze(1)
        gate_w, up_w, down_w = self._float_weights()
        gate = gate_w.index_select(0, active)
        up = up_w.index_select(0, active)
        down = down_w.index_select(1, active)
        return _gated_mlp(flat, gate, up, down)
