"""A whole model's MLPs made sparse in one call, and undone in one.

    model = sparse_mlp.sparsify(model, sparsity=0.5)        # gate-first
    model = sparse_mlp.sparsify(model, sparsity=0.5, predictor=predictors)
    sparse_mlp.densify(model)

A gated MLP is any submodule with ``nn.Linear`` children ``gate_proj`` /
``up_proj`` / ``down_proj`` (Hugging Face Llama, Mistral, Qwen) or ``w1`` /
``w3`` / ``w2`` (Meta LLaMA, llama2.c); no ``transformers`` import is
needed. Each is replaced by a :class:`sparse_mlp.LlamaSkipMLP` sharing its
weight tensors (no copy), all layers' caches carved from one
:class:`sparse_mlp.ModelCache`.
"""

import torch

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


def sparsify(model, sparsity=0.5, predictor=None, *, num_threads=None,
             use_optimized_cache=None, weights=None, group=32, quantize_x=False):
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
    for _, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            if isinstance(child, LlamaSkipMLP) and hasattr(child, "_original"):
                setattr(parent, attr, child._original)
    object.__delattr__(model, _SPARSIFIED)
    return model
