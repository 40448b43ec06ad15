"""Python face of the C++ ModelCache: every MLP layer of a model in one pool."""

from sparse_mlp import _sparse_mlp

from sparse_mlp._convert import is_torch, mask_array, weight
from sparse_mlp._models import layer_triple
from sparse_mlp.cache import WeightCache
from sparse_mlp.flash import FlashModelCache
from sparse_mlp.quant import QuantizedMLP, QuantizedTensor, native_rows

class ModelCache:
    """The active-weight caches of all MLP layers of a model, in one pool.

    Args:
      layers: one entry per layer: a ``(gate, up, down)`` triple (``gate``,
        ``up``: ``[I, H]``; ``down``: ``[H, I]``, or ``[I, H]`` with
        ``down_neuron_major=True``; gate may be None) or an ``nn.Module``
        MLP with ``gate_proj``/``up_proj``/``down_proj`` (Hugging Face
        LLaMA, Mistral, Qwen) or ``w1``/``w3``/``w2`` (Meta LLaMA,
        llama2.c), or a :class:`sparse_mlp.QuantizedMLP` (or a triple of
        :class:`sparse_mlp.QuantizedTensor`; see :class:`WeightCache`).
        Every layer has one shape and dtype (or quantized format).
      active_fraction: the active fraction each layer's capacity is
        reserved for at construction (in (0, 1]); a layer that needs more
        grows, inside the same pool.
      masks: None (no neuron active) or one ``[I]`` mask per layer.
      num_threads, tolerance, layout, copy_sources, down_neuron_major,
        repack_fraction, quantize_x: as for :class:`WeightCache`, for every
        layer.

    Sources are borrowed by default: the model's weights are read in place
    (a memory-mapped checkpoint stays mapped, not copied) and the caches
    hold only the packed rows (plus a transposed down for each layer when
    ``down`` is ``[H, I]``; pass it neuron-major to avoid that). The caller
    must not modify them while the ModelCache lives; it keeps references to
    them.

    ``model.layer(l)`` (or ``model[l]``) is layer ``l``'s
    :class:`WeightCache`: its views, ``forward``, ``step`` (the fused layer
    step) and every update form. :meth:`update_many` applies several layers'
    masks as one batch. Errors (a layer index out of range, a wrong mask
    shape or type) raise ValueError/TypeError naming the value; nothing
    changes after them. Thread-safety as for :class:`WeightCache`, per
    layer; views keep the whole model's memory alive.
    """

    def __init__(self, layers, *, active_fraction=0.5, masks=None, num_threads=1,
                 tolerance=0, layout="split", copy_sources=False, down_neuron_major=False,
                 repack_fraction=1.0, quantize_x=False):
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__"):
            raise TypeError(f"layers must be a sequence, got {type(layers).__name__}")
        triples = [(layer.gate, layer.up, layer.down) if isinstance(layer, QuantizedMLP)
                   else layer_triple(layer, i) for i, layer in enumerate(layers)]
        if not triples:
            raise ValueError("a model needs at least one layer, got 0")
        quant = None
        kwargs = {}
        if isinstance(triples[0][1], QuantizedTensor):
            imported = []
            for i, t in enumerate(triples):
                if not isinstance(t[1], QuantizedTensor):
                    raise TypeError(f"layer {i} up_weight must be a QuantizedTensor like layer "
                                    f"0's, got {type(t[1]).__name__}")
                *rows, fmt, group, hidden = native_rows(*t, down_neuron_major=down_neuron_major,
                                                        prefix=f"layer {i}: ")
                if i and (fmt, group, hidden) != quant:
                    raise ValueError(f"layer {i} is {fmt} group {group} over {hidden}; layer 0 "
                                     f"is {quant[0]} group {quant[1]} over {quant[2]}")
                quant = (fmt, group, hidden)
                imported.append(tuple(rows))
            self._torch = is_torch(triples[0][1].rows)
            kwargs = dict(quant_type=quant[0], quant_group=quant[1], hidden_size=quant[2])
        else:
            self._torch = is_torch(triples[0][1])
            imported = [tuple(weight(w, f"layer {i} {name}")
                              for w, name in zip(t, ("gate_weight", "up_weight", "down_weight")))
                        for i, t in enumerate(triples)]
        self._sources = None if copy_sources else triples
        native_masks = None if masks is None else [mask_array(m) for m in masks]
        self._native = _sparse_mlp.ModelCache(
            imported, masks=native_masks, expected_active_fraction=float(active_fraction),
            num_threads=num_threads, tolerance=tolerance, layout=layout,
            copy_sources=copy_sources, down_neuron_major=down_neuron_major,
            repack_fraction=float(repack_fraction), **kwargs)
        self._layers = [WeightCache._of_layer(self._native.layer(l), self._torch, quant)
                        for l in range(self._native.num_layers)]
        for layer in self._layers:
            layer.quantize_x = quantize_x

    @staticmethod
    def from_file(path, *, budget_bytes, window=1, num_threads=1, **reader):
        """The model's MLPs served from a bundle file (``sparse_mlp.store``)
        under a DRAM budget: a :class:`sparse_mlp.flash.FlashModelCache`, with
        ``step``, ``update``, ``update_many``, ``footprint``, ``layer_stats``
        and ``model[l]`` as here, plus ``prefetch`` and ``io_stats``.
        ``reader``: ``engine``, ``queue_depth``, ``io_threads``, ``verify``,
        ``direct_io``, ``chunk_neurons``, ``io_lanes``."""
        return FlashModelCache(path, budget_bytes, window=window, num_threads=num_threads,
                               **reader)

    def __len__(self):
        return len(self._layers)

    def layer(self, index):
        """Layer ``index``'s :class:`WeightCache` (the same object every time)."""
        self._native.layer(index)  # range and type check, with the message
        return self._layers[index]

    __getitem__ = layer

    def update(self, index, mask):
        """Layer ``index`` to ``mask`` (``[I]``, or ``[tokens, I]`` for the union)."""
        self.layer(index).update(mask)

    def update_many(self, masks):
        """Several layers at once: ``masks`` is a dict ``{layer: mask}``, a
        sequence of ``(layer, mask)`` pairs, or a list of one ``[I]`` mask per
        layer. All the copies run as one parallel batch (one thread wake-up
        and an even split over the threads, not one per layer). A layer named
        twice, out of range, or a bad mask raises before any layer changes."""
        if isinstance(masks, dict):
            pairs = list(masks.items())
        elif len(masks) == len(self._layers) and not all(
                isinstance(m, (tuple, list)) for m in masks):
            pairs = list(enumerate(masks))
        else:
            pairs = list(masks)
        checked = []
        for k, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"updates[{k}]: expected a (layer, mask) pair")
            layer, mask = pair
            mask = mask_array(mask)
            if mask.ndim != 1:
                raise ValueError(
                    f"updates[{k}]: update_many takes [I] masks, got shape {tuple(mask.shape)}")
            checked.append((layer, mask))
        self._native.update_many(checked)

    def step(self, index, mask, x, activation="silu", out=None):
        """Layer ``index``'s fused layer step (:meth:`WeightCache.step`)."""
        return self.layer(index).step(mask, x, activation=activation, out=out)

    def forward(self, index, x, activation="silu", out=None):
        """Layer ``index``'s forward on its active neurons."""
        return self.layer(index).forward(x, activation=activation, out=out)

    def footprint(self):
        """Bytes: ``weight_bytes`` (the layers' weights), ``cache_bytes``
        (what the caches hold), ``packed_bytes`` (their packed rows),
        ``pool_capacity``, ``pool_in_use``, ``pool_blocks``."""
        return self._native.footprint()

    def layer_stats(self, index):
        """Layer ``index``: ``active``, ``capacity``, ``lag``, ``memory_bytes``,
        ``churn`` (rows loaded per update over the active count) and
        ``totals`` (sums over its updates)."""
        return self._native.layer_stats(index)

    def totals(self):
        """Sums over every layer's updates: ``updates``, ``skipped``,
        ``changed_neurons``, ``rows_loaded``, ``rows_moved``,
        ``bytes_copied``, ``repacks``, ``growths``."""
        return self._native.totals()

    num_layers = property(lambda self: len(self._layers))
