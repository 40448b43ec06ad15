"""Where a model keeps its MLPs: the module layouts sparse_mlp recognises
(Hugging Face LLaMA / Mistral / Qwen and llama2.c), a layer's (gate, up,
down) weights, and the gated MLPs of a torch model. Imports nothing of
sparse_mlp."""

try:  # torch is optional: (gate, up, down) triples work without it.
    import torch
except ImportError:  # pragma: no cover - torch is installed where tests run
    torch = None

# Attribute names of a gated MLP module's three projections, by convention:
# Hugging Face LLaMA / Mistral / Qwen, and Meta's LLaMA / llama2.c.
MODULE_NAMES = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))


def layer_triple(layer, index):
    """(gate, up, down) weights of one layer: a (gate, up, down) sequence
    (gate may be None) or an ``nn.Module`` with gate_proj/up_proj/down_proj
    or w1/w3/w2 linear layers (their ``.weight``, read in place)."""
    if isinstance(layer, (tuple, list)):
        if len(layer) != 3:
            raise TypeError(f"layer {index}: expected (gate, up, down), got {len(layer)} items")
        return tuple(layer)
    for names in MODULE_NAMES:
        if all(hasattr(layer, n) for n in names):
            return tuple(getattr(layer, n).weight for n in names)
    raise TypeError(
        f"layer {index}: expected a (gate, up, down) triple or an nn.Module with "
        f"gate_proj/up_proj/down_proj or w1/w3/w2, got {type(layer).__name__}")


def find_mlps(model):
    """``[(parent, attribute, module)]`` of the model's gated MLPs, in
    module order (the decoder's layer order)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = []
    for _, parent in model.named_modules():
        for attr, child in parent.named_children():
            if getattr(child, "replaces_mlp", False):  # already served by sparse_mlp
                continue
            for names in MODULE_NAMES:
                if all(isinstance(getattr(child, n, None), torch.nn.Linear) for n in names):
                    found.append((parent, attr, child))
                    break
    return found
