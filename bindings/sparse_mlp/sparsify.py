"""A whole model's MLPs made sparse in one call, and undone in one.

    model = sparse_mlp.sparsify(model, sparsity=0.5)        # gate-first
    model = sparse_mlp.sparsify(model, sparsity=0.5, predictor=predictors)
    model = sparse_mlp.sparsify(model, sparsity=0.5, store="mlp.spmlb",
                                budget_bytes=2 << 30)       # served from an SSD
    sparse_mlp.densify(model)

A gated MLP is any submodule with ``nn.Linear`` children ``gate_proj`` /
``up_proj`` / ``down_proj`` (Hugging Face Llama, Mistral, Qwen) or ``w1`` /
``w3`` / ``w2`` (Meta LLaMA, llama2.c); no ``transformers`` import is
needed. Each is replaced by a :class:`sparse_mlp.LlamaSkipMLP` sharing its
weight tensors (no copy), all layers' caches carved from one
:class:`sparse_mlp.ModelCache`.
"""

import os

import torch

from sparse_mlp import store as bundle_store
from sparse_mlp.flash import FlashModelCache
from sparse_mlp.mlp import LlamaSkipMLP
from sparse_mlp._convert import keep_count
from sparse_mlp._models import find_mlps, layer_triple
from sparse_mlp.model import ModelCache
from sparse_mlp.predictors import LowRankPredictor
from sparse_mlp.quant import FORMATS, quantize_mlp

_SPARSIFIED = "_sparse_mlp_model_cache"


def _predictor_list(predictor, count):
    if predictor is None:
        return [None] * count
    if isinstance(predictor, dict):
        bad = [k for k in predictor if not isinstance(k, int) or not 0 <= k < count]
        if bad:
            raise ValueError(f"predictor keys must be layer indices in [0, {count}), got {bad[0]}")
        return [predictor.get(l) for l in range(count)]
    if isinstance(predictor, (list, tuple)):
        if len(predictor) != count:
            raise ValueError(f"predictor must have one entry per MLP layer ({count}), "
                             f"got {len(predictor)}")
        return list(predictor)
    raise TypeError(f"predictor must be None, a list of LowRankPredictor (one per layer) or "
                    f"a dict {{layer: LowRankPredictor}}, got {type(predictor).__name__}")


class FlashServedMLP(torch.nn.Module):
    """A gated MLP served by the flash tier (:func:`sparsify` with
    ``store=``): gate-first, the gate in DRAM, up and down read from the
    bundle file as neurons enter; ``forward(x)`` for ``[..., H]``."""

    # find_mlps (sparse_mlp._models) skips modules that already replace a
    # dense MLP.
    replaces_mlp = True

    def __init__(self, cache, layer, hidden_size):
        super().__init__()
        self._tier = cache
        self.layer = layer
        self.hidden_size = hidden_size

    def forward(self, x):
        flat = x.detach().reshape(-1, self.hidden_size)
        return self._tier.step(self.layer, None, flat.contiguous()).reshape(x.shape)


def _decoder_norm(parent):
    """The MLP input's norm of a decoder layer holding the MLP (Hugging
    Face's ``post_attention_layernorm``, Meta / llama2.c's ``ffn_norm``),
    or None."""
    for name in ("post_attention_layernorm", "ffn_norm"):
        norm = getattr(parent, name, None)
        if isinstance(norm, torch.nn.Module):
            return norm
    return None


def _sparsify_from_store(model, found, triples, sparsity, path, budget_bytes, window, over,
                         threads):
    """sparsify's store= form: each MLP served by one FlashModelCache from a
    gate-less bundle file (written from the model if `path` does not
    exist), its gate kept in DRAM, the guess of each layer's neurons
    started by a forward pre-hook on the decoder layer (before its
    attention), up and down released."""
    hidden = triples[0][1].shape[1]
    if budget_bytes is None:
        raise ValueError("store= needs budget_bytes (the tier's DRAM budget)")
    if not os.path.exists(path):
        bundle_store.write(path, [(None, u.detach(), d.detach()) for _, u, d in triples])
    info = bundle_store.info(path)
    if info["gated"]:
        raise ValueError(f"{path} holds gate rows; gate-first from a file needs a gate-less one "
                         f"(store.write with gate None), the gates stay in DRAM")
    if info["num_layers"] != len(triples) or info["hidden_size"] != hidden or \
            info["intermediate_size"] != triples[0][1].shape[0]:
        raise ValueError(
            f"{path} has {info['num_layers']} layers of [{info['intermediate_size']}, "
            f"{info['hidden_size']}]; the model has {len(triples)} of "
            f"{list(triples[0][1].shape)}")
    gates = [g.detach() for g, _, _ in triples]
    cache = FlashModelCache(path, budget_bytes, window=window, num_threads=threads, gates=gates,
                            sparsity=sparsity)
    hooks = []
    for l, (parent, attr, original) in enumerate(found):
        norm = _decoder_norm(parent)
        if norm is None or over <= 0:
            continue

        def guess(_module, args, l=l, norm=norm):
            if args and isinstance(args[0], torch.Tensor):
                with torch.no_grad():
                    h = norm(args[0]).detach().reshape(-1, hidden)
                cache.speculate(l, h.contiguous(), over=over)

        hooks.append(parent.register_forward_pre_hook(guess))
    modules = []
    for l, (parent, attr, original) in enumerate(found):
        m = FlashServedMLP(cache, l, hidden)
        m._original = original
        m._store_path = path
        modules.append(m)
    for (parent, attr, original), m in zip(found, modules):
        # The file holds up and down now: release them (densify reads them back).
        for name in _released_names(original):
            linear = getattr(original, name)
            linear.weight = torch.nn.Parameter(torch.empty(0, dtype=linear.weight.dtype),
                                               requires_grad=False)
        setattr(parent, attr, m)
    object.__setattr__(model, _SPARSIFIED, cache)
    object.__setattr__(model, "_sparse_mlp_hooks", hooks)
    return model


def _released_names(module):
    """The up and down projections' attribute names of an MLP module."""
    return ("up_proj", "down_proj") if hasattr(module, "up_proj") else ("w3", "w2")


def sparsify(model, sparsity=0.5, predictor=None, *, num_threads=None,
             use_optimized_cache=None, weights=None, group=32, quantize_x=False, store=None,
             budget_bytes=None, window=4, over=1.5):
    """Replaces every gated MLP of ``model`` by a :class:`LlamaSkipMLP`
    (in place; returns ``model``).

    ``sparsity``: the fraction of neurons each token leaves out, in [0, 1).
    ``predictor``: None for the training-free gate-first rule in every
    layer; or one :class:`LowRankPredictor` per layer (a list, or a dict
    ``{layer: predictor}``, layers without one falling back to gate-first),
    as :func:`sparse_mlp.predictors.train_predictors` returns them. A
    predictor with ``look_ahead=True`` runs one layer early, on the previous
    layer's input. ``use_optimized_cache``: None follows
    ``model.config.use_optimized_weight_cache`` when the model has one
    (True otherwise); False computes through torch (the reference path).
    ``weights``: None (the model's own type) or ``"int8"`` / ``"q4"``: each
    layer's MLP is quantized (groups of ``group`` along H,
    :func:`sparse_mlp.quantize_mlp`) and served from the quantized rows
    (gate-first selects by the quantized gate); the original modules, kept
    for :func:`densify`, still hold the float weights. ``quantize_x=True``
    rounds each MLP's input to int8 per block of 32 as well (integer
    products where the CPU has AVX-512 VNNI).

    ``store=PATH`` serves the MLPs from an SSD instead: a gate-less bundle
    file (written from the model's up and down weights when PATH does not
    exist; or one written with ``sparse_mlp.store.write(PATH, [(None, up,
    down), ...])``), read by one :class:`sparse_mlp.FlashModelCache` within
    ``budget_bytes`` of DRAM (``window`` tokens of residency), gate-first
    with the gates in DRAM. The MLPs' up and down weights are released
    from memory (``densify`` reads them back from the file). Where a
    decoder layer has ``post_attention_layernorm`` (Hugging Face) or
    ``ffn_norm`` (Meta, llama2.c), a forward pre-hook guesses the layer's
    neurons from its input before the attention and starts their reads
    (``over`` x k; 0 turns it off); the MLP's step then reads only the
    misses. Outputs are those of gate-first in DRAM.

    The layers share one :class:`ModelCache` (``model`` keeps it; gate-first
    layers cache up and down rows, predictor layers gate, up and down), and
    read the original weight tensors in place. Raises ValueError when the
    model has no recognisable MLP, is already sparsified, or a predictor's
    shape does not match its layer; TypeError for arguments of the wrong
    kind. The model is unchanged after any error."""
    found = find_mlps(model)
    if getattr(model, _SPARSIFIED, None) is not None:
        raise ValueError("model is already sparsified: call sparse_mlp.densify(model) first")
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no gated MLP (a module with nn.Linear gate_proj/"
            f"up_proj/down_proj or w1/w3/w2)")
    triples = [layer_triple(m, l) for l, (_, _, m) in enumerate(found)]  # (gate, up, down)
    intermediate = triples[0][1].shape[0]
    keep_count(sparsity, intermediate)  # validates sparsity
    if store is not None:
        if predictor is not None or weights is not None:
            raise ValueError("store= serves gate-first from the file: no predictor or weights=")
        return _sparsify_from_store(model, found, triples, sparsity, str(store), budget_bytes,
                                    window, over, num_threads or torch.get_num_threads())
    predictors = _predictor_list(predictor, len(found))
    for l, (p, (_, up, _)) in enumerate(zip(predictors, triples)):
        if p is None:
            continue
        if not isinstance(p, LowRankPredictor):
            raise TypeError(f"predictor for layer {l} must be a LowRankPredictor, got "
                            f"{type(p).__name__}")
        neurons, hidden = up.shape
        if (p.hidden_size, p.intermediate_size) != (hidden, neurons):
            raise ValueError(
                f"predictor for layer {l} maps {p.hidden_size} -> {p.intermediate_size}, but the "
                f"layer's MLP is {hidden} -> {neurons}")
    config = getattr(model, "config", None)
    if use_optimized_cache is None:
        use_optimized_cache = bool(getattr(config, "use_optimized_weight_cache", True))
    act = getattr(config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"LlamaSkipMLP computes silu MLPs; config.hidden_act is {act!r}")
    threads = num_threads or torch.get_num_threads()
    if quantize_x and weights is None:
        raise ValueError("quantize_x applies to quantized weights: pass weights='int8' or 'q4'")
    if weights is not None:
        if weights not in FORMATS:
            raise ValueError(f"weights must be None or one of {FORMATS}, got {weights!r}")
        quantized = []
        for l, (g, u, d) in enumerate(triples):
            try:
                q = quantize_mlp(g.detach(), u.detach(), d.detach(), weights, group=group,
                                 num_threads=threads)
            except ValueError as e:
                raise ValueError(f"layer {l}: {e}") from None
            quantized.append((q.gate, q.up, q.down))
        triples = quantized
    cache = None
    if use_optimized_cache:
        # Gate-first layers cache up and down only (their gate is read
        # densely each step); predictor layers cache all three.
        cache = ModelCache([(None if p is None else g, u, d)
                            for p, (g, u, d) in zip(predictors, triples)],
                           active_fraction=max(1e-3, 1.0 - sparsity), num_threads=threads)
    modules = []
    for l, ((parent, attr, original), (g, u, d), p) in enumerate(
            zip(found, triples, predictors)):
        m = LlamaSkipMLP.from_dense(g, u, d, sparsity, use_optimized_cache, predictor=p,
                                    num_threads=threads,
                                    **({"quantize_x": True} if quantize_x else {}))
        if cache is not None:
            m._cache = cache[l]
        m._original = original
        modules.append(m)
    for l in range(len(modules) - 1):
        nxt = predictors[l + 1]
        if nxt is not None and nxt.look_ahead:
            modules[l]._ahead = modules[l + 1]
    for (parent, attr, _), m in zip(found, modules):
        setattr(parent, attr, m)
    object.__setattr__(model, _SPARSIFIED, cache if cache is not None else False)
    return model


def densify(model):
    """Puts the original MLP modules back (undoes :func:`sparsify`); returns
    ``model``. ValueError when the model was not sparsified."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if getattr(model, _SPARSIFIED, None) is None:
        raise ValueError("model was not sparsified by sparse_mlp.sparsify")
    for hook in getattr(model, "_sparse_mlp_hooks", ()):
        hook.remove()
    for _, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, FlashServedMLP):
                _restore_from_store(child)
                setattr(parent, attr, child._original)
            elif isinstance(child, LlamaSkipMLP) and hasattr(child, "_original"):
                setattr(parent, attr, child._original)
    object.__delattr__(model, _SPARSIFIED)
    if hasattr(model, "_sparse_mlp_hooks"):
        object.__delattr__(model, "_sparse_mlp_hooks")
    return model


def _restore_from_store(served):
    """The released up and down weights of `served`'s original MLP, read
    back from its bundle file."""
    reader = bundle_store.Reader(served._store_path)
    neurons = reader.layout["intermediate_size"]
    rows = reader.read(served.layer, range(neurons))  # [I, 2, H]: up, down's columns
    up_name, down_name = _released_names(served._original)
    up = getattr(served._original, up_name)
    down = getattr(served._original, down_name)
    up.weight = torch.nn.Parameter(rows[:, 0, :].clone(), requires_grad=False)
    down.weight = torch.nn.Parameter(rows[:, 1, :].t().contiguous(), requires_grad=False)
