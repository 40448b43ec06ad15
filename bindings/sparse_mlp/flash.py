"""Python face of the flash tier: a model's MLPs served from a bundle file
(``sparse_mlp.store``) under a DRAM budget, loading only entering neurons."""

from sparse_mlp import _sparse_mlp
from sparse_mlp._convert import keep_count, mask_array, out_matrix, result, tokens, weight
from sparse_mlp.quant import QuantizedTensor


class FlashModelCache:
    """Every MLP layer of a model, its weights on an SSD, within a DRAM budget.

    Made by ``ModelCache.from_file(path, budget_bytes=...)``. Each layer keeps
    a fixed number of slots (the budget, less the reader's buffers and
    bookkeeping, split over the layers); a step loads the mask's entering
    neurons from the file (O_DIRECT, so nothing else of the file is
    resident) while it computes on the ones already resident, then on each
    group of loaded neurons as it lands. A neuron stays resident while it was
    active in any of the last ``window`` tokens, as far as the slots allow
    (the least recently active leave first). Results depend only on the
    masks and the thread count.

    A mask larger than a layer's slots raises ValueError naming both sizes; a
    failed or corrupted read raises OSError naming the layer, neuron and
    offset, and leaves every resident slot exact (the next step reloads what
    it needs). Threads sharing one cache take turns.
    """

    def __init__(self, path, budget_bytes, *, window=1, num_threads=1, engine="auto",
                 queue_depth=32, io_threads=4, verify=True, direct_io="auto",
                 chunk_neurons=64, io_lanes=1, gates=None, sparsity=0.5, gate_threshold=None,
                 quantize_x=False):
        self._native = _sparse_mlp.FlashModelCache(
            str(path), budget_bytes, window=window, num_threads=num_threads, engine=engine,
            queue_depth=queue_depth, io_threads=io_threads, verify=verify, direct_io=direct_io,
            chunk_neurons=chunk_neurons, io_lanes=io_lanes)
        self.path = str(path)
        # Quantized files and gates: x rounded to int8 per block of 32 (see
        # sparse_mlp.quant.mlp_forward_quantized).
        self._native.quantize_x = bool(quantize_x)
        self._gates = None
        if gates is not None:
            if isinstance(gates, (str, bytes)) or not hasattr(gates, "__len__"):
                raise TypeError(f"gates must be a sequence of [I, H] tensors, got "
                                f"{type(gates).__name__}")
            if gates and isinstance(gates[0], QuantizedTensor):
                # Quantized gates (sparse_mlp.quantize): selection reads their
                # rows; x is float32 then.
                q = gates[0]
                for l, g in enumerate(gates):
                    if not isinstance(g, QuantizedTensor) or (g.fmt, g.group) != (q.fmt, q.group):
                        raise TypeError(f"gates[{l}] must be a QuantizedTensor of gates[0]'s "
                                        f"format {q.fmt} group {q.group}")
                self._gates = list(gates)
                self._native.set_gates([g.numpy_rows() for g in gates], quant_type=q.fmt,
                                       quant_group=q.group)
            else:
                self._gates = [weight(g, f"gates[{l}]") for l, g in enumerate(gates)]
                self._native.set_gates(self._gates)
            self._selection = ({"threshold": float(gate_threshold)}
                               if gate_threshold is not None
                               else {"k": keep_count(sparsity, self._native.intermediate_size)})
        self._layers = [FlashLayer(self, l) for l in range(self._native.num_layers)]

    def __len__(self):
        return len(self._layers)

    def layer(self, index):
        """Layer ``index``'s handle (``step``, ``update``, ``resident_neurons``)."""
        self._native.layer_stats(index)  # range and type check, with the message
        return self._layers[index]

    __getitem__ = layer

    def step(self, index, mask, x, activation="silu", out=None, accumulate=False):
        """Layer ``index``: load ``mask``'s entering neurons and return the
        MLP of ``x`` (``[H]`` or ``[tokens, H]``) over ``mask``'s neurons
        (``[I]``, or ``[tokens, I]`` for the union). ``mask=None`` with
        ``gates`` given at construction: gate-first (act(gate x) from the
        gate in DRAM, each token's top k = round((1 - sparsity) x I) by
        |act|, or those above ``gate_threshold``; only their up and down
        are loaded: the file must be gate-less). ``gates`` may be
        :class:`sparse_mlp.QuantizedTensor` (``sparse_mlp.quantize(gate)``):
        selection then reads a half (int8) or a quarter (q4) of a bfloat16
        gate's bytes, x is float32."""
        x2, fresh = tokens(x, self._native.hidden_size)
        target = fresh if out is None else out_matrix(out, x2)
        if accumulate and out is None:
            raise ValueError("accumulate=True needs out")
        if mask is None:
            if self._gates is None:
                raise ValueError("step needs a mask, or gates=[...] at construction for "
                                 "gate-first")
            if activation != "silu":
                raise ValueError("gate-first here computes silu MLPs")
            self._native.step_gate_first(index, x2, target, accumulate=accumulate,
                                         **self._selection)
            return result(target, x) if out is None else out
        m = mask_array(mask)
        self._native.step(index, m, x2, target, activation=activation, accumulate=accumulate)
        return result(target, x) if out is None else out

    def update(self, index, mask):
        """Layer ``index``: make ``mask``'s neurons resident (loads, no compute)."""
        self._native.update(index, mask_array(mask))

    def update_many(self, masks):
        """``update`` for several layers: a dict ``{layer: mask}``, ``(layer,
        mask)`` pairs, or one mask per layer."""
        if isinstance(masks, dict):
            pairs = masks.items()
        elif len(masks) == len(self._layers) and not all(
                isinstance(m, (tuple, list)) for m in masks):
            pairs = enumerate(masks)
        else:
            pairs = masks
        for layer, mask in pairs:
            self.update(layer, mask)

    def speculate(self, index, x_early, over=1.5):
        """Speculative gate-first (``gates`` given): from ``x_early``, layer
        ``index``'s input before its attention (normalised as its MLP input
        will be), select round(over x k) neurons by |act(gate x_early)| and
        start their reads; returns at once with how many it asked for
        (clipped to the layer's slots). The exact ``step(index, None, x)``
        after the attention selects by the usual rule and reads only what
        this did not fetch; fetched neurons it does not select stay resident
        like any others. Results do not depend on the speculation; a failed
        speculative read is read again if the step needs it."""
        if self._gates is None:
            raise ValueError("speculate needs gates=[...] at construction")
        if not over > 0:
            raise ValueError(f"over must be positive, got {over!r}")
        x2, _ = tokens(x_early, self._native.hidden_size, "x_early")
        base = self._selection.get("k", keep_count(0.5, self._native.intermediate_size))
        count = min(self._native.intermediate_size, max(1, round(over * base)))
        return self._native.speculate_gate_first(index, x2, count)

    def speculation(self, index):
        """Layer ``index``'s last speculative set (int64, ascending)."""
        return self._native.speculation(index)

    def gate_first_selection(self, index):
        """The neurons layer ``index``'s last gate-first step selected."""
        return self._native.gate_first_selection(index)

    def prefetch(self, index, mask):
        """Start loading layer ``index``'s ``mask`` now and return at once (a
        predictor that looks ahead); its ``step`` with the same mask then
        finds the reads in flight or done."""
        self._native.prefetch(index, mask_array(mask))

    def pin(self, index, mask):
        """Keep the neurons ``mask`` marks (``[I]`` bool; e.g. the most often
        active over a calibration run) resident in layer ``index`` once
        loaded, whatever the window; replaces earlier pins. A later step's
        mask must fit beside the pinned neurons outside it (ValueError
        otherwise). ``bazel run //bench:flash -- --variants=pinning`` compares
        pinning with the window alone."""
        self._native.pin(index, mask_array(mask))

    def resident_neurons(self, index):
        """The resident neurons of layer ``index``, ascending (int64 array)."""
        return self._native.resident_neurons(index)

    def verify(self, index):
        """Compares every resident slot of layer ``index`` with the file
        (OSError naming the first that differs)."""
        self._native.verify(index)

    def footprint(self):
        """Bytes: ``budget_bytes``, ``slot_bytes`` (all slots, touched as
        loaded), ``resident_bytes``, ``reader_bytes``, ``bookkeeping_bytes``,
        ``total_bytes`` (<= the budget)."""
        return self._native.footprint()

    def layer_stats(self, index):
        """Layer ``index``: ``steps``, ``hits``, ``loads``, ``evictions``,
        ``expirations``, ``failed_loads``, ``resident``, ``capacity``."""
        return self._native.layer_stats(index)

    def io_stats(self):
        """``bytes_read``, ``requests``, ``bundles``, ``mean_request_bytes``,
        ``staged_bundles``, ``errors``; and the steps' ``plan_seconds``,
        ``compute_seconds``, ``wait_seconds`` (waiting on reads)."""
        return self._native.io_stats()

    def totals(self):
        """Sums over the layers of ``layer_stats``' counters."""
        keys = ("steps", "hits", "loads", "evictions", "expirations", "failed_loads", "resident")
        out = dict.fromkeys(keys, 0)
        for l in range(len(self._layers)):
            s = self._native.layer_stats(l)
            for k in keys:
                out[k] += s[k]
        return out

    num_layers = property(lambda self: len(self._layers))
    capacity = property(lambda self: self._native.capacity)
    window = property(lambda self: self._native.window)
    hidden_size = property(lambda self: self._native.hidden_size)
    intermediate_size = property(lambda self: self._native.intermediate_size)
    dtype = property(lambda self: self._native.dtype)


class FlashLayer:
    """One layer of a :class:`FlashModelCache` (``model[l]``)."""

    def __init__(self, model, index):
        self._model, self.index = model, index

    def step(self, mask, x, activation="silu", out=None, accumulate=False):
        return self._model.step(self.index, mask, x, activation=activation, out=out,
                                accumulate=accumulate)

    def update(self, mask):
        self._model.update(self.index, mask)

    def prefetch(self, mask):
        self._model.prefetch(self.index, mask)

    def resident_neurons(self):
        return self._model.resident_neurons(self.index)

    def verify(self):
        self._model.verify(self.index)

    def stats(self):
        return self._model.layer_stats(self.index)
