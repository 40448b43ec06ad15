"""Masks a user can get: the training-free gate-first rule and learned
low-rank predictors (scores = B (A x)), computed natively; training them in
torch from captured (layer input, neuron activity) pairs; recall and
precision against the oracle set.

    from sparse_mlp.predictors import LowRankPredictor, train_low_rank

The oracle set of a token at sparsity s is the top k = round((1 - s) x I)
neurons by |act(gate x) x (up x)| (what each neuron contributes); the
gate-first rule keeps the top k by |act(gate x)| (CATS) and is exact in
what it keeps: the neurons it keeps are computed exactly.
"""

import numpy as np
import torch
import torch.nn.functional as F

from sparse_mlp import _sparse_mlp
from sparse_mlp._convert import keep_count, tokens
from sparse_mlp._models import find_mlps, layer_triple

_ACTIVATIONS = {"silu": F.silu, "relu": F.relu,
                "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


def topk_mask(scores, k):
    """[tokens, I] bool: each row's k largest scores, ties to the lower
    index (a stable descending sort), as the native selection does."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask


def gate_first_mask(x, gate, k, activation="silu"):
    """The gate-first rule in torch (the reference): per token the top k by
    |act(gate x)|, ties to the lower index. x ``[tokens, H]``; returns the
    ``[tokens, I]`` mask and act(gate x)."""
    act = _ACTIVATIONS[activation](F.linear(x.float(), gate.float()))
    return topk_mask(act.abs(), k), act


def oracle_mask(x, gate, up, k, activation="silu"):
    """The oracle set: per token the top k by |act(gate x) x (up x)|."""
    x = x.float()
    contribution = _ACTIVATIONS[activation](F.linear(x, gate.float())) * F.linear(x, up.float())
    return topk_mask(contribution.abs(), k)


def recall_precision(predicted, target):
    """(recall, precision) of boolean masks of one shape, over all entries:
    recall = |predicted & target| / |target|."""
    hit = (predicted & target).sum().item()
    return (hit / max(1, target.sum().item()), hit / max(1, predicted.sum().item()))


class LowRankPredictor(torch.nn.Module):
    """scores = B (A x): A ``[r, H]``, B ``[I, r]`` (buffers, so a model's
    ``state_dict`` saves them), computed natively in the weights' type
    (float32, bfloat16 or float16; the rank-r intermediate in float32,
    rounded to bfloat16 for bfloat16 weights).

    ``__call__(x)`` is the predicted mask (bool ``[I]``, the union over x's
    tokens) at ``sparsity``: each token's top k = round((1 - sparsity) x I)
    scores, or the scores above ``threshold`` when one is set.
    ``look_ahead=True`` marks a predictor trained on the previous layer's
    input (Deja Vu): :func:`sparse_mlp.sparsify` then runs it one layer
    early. ``scores`` and ``select`` release the GIL; ``num_threads``
    defaults to ``torch.get_num_threads()``.
    """

    def __init__(self, a, b, *, sparsity=0.5, threshold=None, look_ahead=False,
                 num_threads=None):
        super().__init__()
        for name, t in (("A", a), ("B", b)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
        if a.shape[0] == 0:
            raise ValueError(f"rank must be at least 1, got A of shape {tuple(a.shape)}")
        if b.shape[1] != a.shape[0]:
            raise ValueError(f"B must be [I, {a.shape[0]}] for A {tuple(a.shape)}, "
                             f"got {tuple(b.shape)}")
        self.register_buffer("a", a.detach().contiguous())
        self.register_buffer("b", b.detach().contiguous())
        self.k = keep_count(sparsity, b.shape[0])
        self.sparsity = sparsity
        self.threshold = threshold
        self.look_ahead = look_ahead
        self.num_threads = num_threads
        self._native = None

    @property
    def rank(self):
        return self.a.shape[0]

    @property
    def hidden_size(self):
        return self.a.shape[1]

    @property
    def intermediate_size(self):
        return self.b.shape[0]

    def native(self):
        """The native predictor over the current buffers (rebuilt when they
        were replaced, e.g. by ``load_state_dict`` or ``.to(dtype)``)."""
        key = (self.a.data_ptr(), self.b.data_ptr(), self.a.dtype)
        if self._native is None or self._native[0] != key:
            self._native = (key, _sparse_mlp.LowRankPredictor(self.a, self.b))
        return self._native[1]

    def _threads(self):
        return self.num_threads or torch.get_num_threads()

    def _selection(self):
        return {"threshold": self.threshold} if self.threshold is not None else {"k": self.k}

    def scores(self, x):
        """B (A x) as float32 ``[tokens, I]`` (x ``[H]`` or ``[tokens, H]``)."""
        x2, _ = tokens(x, self.hidden_size)
        out = np.empty((x2.shape[0], self.intermediate_size), dtype=np.float32)
        self.native().scores(x2, out, num_threads=self._threads())
        return torch.from_numpy(out)

    def forward(self, x):
        x2, _ = tokens(x.reshape(-1, self.hidden_size), self.hidden_size)
        mask = self.native().select(x2, num_threads=self._threads(), **self._selection())
        return torch.from_numpy(mask).bool()

    def extra_repr(self):
        return (f"rank={self.rank}, hidden={self.hidden_size}, neurons={self.intermediate_size}, "
                f"keep={self.k}, look_ahead={self.look_ahead}")


def train_low_rank(inputs, targets, rank, *, steps=400, lr=3e-3, recall_weight=4.0,
                   batch_size=256, weight_decay=0.0, seed=0, sparsity=0.5, look_ahead=False,
                   dtype=torch.float32):
    """Trains scores = B (A x) to predict ``targets`` from ``inputs``.

    inputs: ``[N, H]`` layer inputs; targets: ``[N, I]`` bool, the neurons
    that mattered (the oracle set: :func:`oracle_mask`). The loss is binary
    cross-entropy with positives weighted by ``recall_weight`` (a missed
    neuron costs more than a spare one: the step then computes a few
    neurons too many rather than dropping one that matters). A starts from
    the top-r right singular vectors of the inputs (the directions they
    vary in), B from zero. Adam, ``steps`` minibatches of ``batch_size``,
    seeded by ``seed`` (deterministic on one machine and thread count).

    Returns ``(predictor, history)``: a :class:`LowRankPredictor` in
    ``dtype`` with ``sparsity`` and ``look_ahead`` set, and the loss per
    step (``history[0]`` before any update)."""
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    if inputs.dim() != 2 or targets.dim() != 2 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"inputs [N, H] and targets [N, I] must have one N, got "
                         f"{tuple(inputs.shape)} and {tuple(targets.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("training needs at least one sample, got 0")
    gen = torch.Generator().manual_seed(seed)
    x = inputs.detach().float()
    y = targets.detach().float()
    n, hidden = x.shape
    # Scale-free inputs: A absorbs the scale, so one learning rate fits all layers.
    scale = x.pow(2).mean().sqrt().clamp_min(1e-12)
    _, _, v = torch.linalg.svd(x / scale, full_matrices=False)
    a0 = torch.zeros(rank, hidden)
    a0[:min(rank, v.shape[0])] = v[:rank]
    a = torch.nn.Parameter(a0 / scale)
    b = torch.nn.Parameter(torch.zeros(y.shape[1], rank))
    opt = torch.optim.Adam([a, b], lr=lr, weight_decay=weight_decay)
    pos = torch.tensor(float(recall_weight))

    def loss_of(xb, yb):
        # Exactly what runs natively: no bias (top-k is taken per token).
        logits = F.linear(F.linear(xb, a), b)
        return F.binary_cross_entropy_with_logits(logits, yb, pos_weight=pos)

    history = []
    with torch.no_grad():
        history.append(float(loss_of(x, y)))
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        opt.zero_grad()
        loss = loss_of(x[idx], y[idx])
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        history.append(float(loss_of(x, y)))
    predictor = LowRankPredictor(a.detach().to(dtype), b.detach().to(dtype), sparsity=sparsity,
                                 look_ahead=look_ahead)
    return predictor, history


def _logits(output):
    """A model's logits, from a tensor or an output object / tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


@torch.no_grad()
def sample_tokens(model, length, *, bos=1, seed=0, temperature=1.0):
    """Calibration text sampled from the model itself (nothing to
    download): ``length`` tokens after ``bos``, each drawn from the model's
    next-token distribution at ``temperature``; ``model(ids [1, T])`` must
    return ``[1, T, vocab]`` logits (a tensor, or an object with
    ``.logits``). Returns a ``[1, length + 1]`` LongTensor."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[bos]], dtype=torch.long)
    for _ in range(length):
        logits = _logits(model(ids))[0, -1].float() / temperature
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids


@torch.no_grad()
def capture_mlp_inputs(model, tokens):
    """Each gated MLP's input ``[tokens, H]`` (float32) on one forward of
    ``model(tokens)``, in layer order (forward hooks; removed after)."""
    found = find_mlps(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no gated MLP to capture")
    seen = [None] * len(found)
    hooks = []
    for l, (_, _, module) in enumerate(found):
        def hook(_module, args, _out, l=l):
            seen[l] = args[0].detach().reshape(-1, args[0].shape[-1]).float().clone()
        hooks.append(module.register_forward_hook(hook))
    try:
        model(tokens)
    finally:
        for h in hooks:
            h.remove()
    return seen, [m for _, _, m in found]


def evaluate(predictor, inputs, targets):
    """(recall, precision) of the native predictor's per-token masks against
    ``targets`` ``[N, I]`` bool (each token selected on its own)."""
    scores = predictor.scores(inputs.to(predictor.a.dtype).contiguous())
    if predictor.threshold is not None:
        predicted = scores > predictor.threshold
    else:
        predicted = topk_mask(scores, predictor.k)
    return recall_precision(predicted, targets)


def train_predictors(model, tokens, *, sparsity=0.5, rank=128, look_ahead=False,
                     holdout=0.25, **train_args):
    """Low-rank predictors for every gated MLP of a dense ``model``.

    ``tokens``: ``[1, T]`` calibration token ids (e.g. :func:`sample_tokens`).
    One forward captures each MLP's inputs; each layer's target is its
    oracle set at ``sparsity`` (:func:`oracle_mask`); with ``look_ahead``
    layer l's predictor (l >= 1) learns from layer l - 1's input. The last
    ``holdout`` fraction of the positions is kept out of training and used
    for the reported recall and precision. ``rank`` is capped at H.
    ``train_args`` go to :func:`train_low_rank`.

    Returns ``(predictors, stats)``: one :class:`LowRankPredictor` per
    layer (in the weights' dtype), and per layer a dict with ``recall``,
    ``precision`` (held-out, native predictor), ``loss_first``,
    ``loss_last``."""
    inputs, modules = capture_mlp_inputs(model, tokens)
    n = inputs[0].shape[0]
    split = max(1, int(round(n * (1.0 - holdout))))
    if split >= n:
        raise ValueError(f"{n} calibration positions leave none for the held-out evaluation")
    predictors, stats = [], []
    for l, module in enumerate(modules):
        gate, up, _ = layer_triple(module, l)
        k = keep_count(sparsity, up.shape[0])
        target = oracle_mask(inputs[l], gate, up, k)
        source = inputs[l - 1] if look_ahead and l > 0 else inputs[l]
        r = min(rank, source.shape[1])
        predictor, history = train_low_rank(source[:split], target[:split], r, sparsity=sparsity,
                                            look_ahead=look_ahead and l > 0, dtype=up.dtype,
                                            **train_args)
        recall, precision = evaluate(predictor, source[split:], target[split:])
        predictors.append(predictor)
        stats.append({"layer": l, "rank": r, "recall": recall, "precision": precision,
                      "loss_first": history[0], "loss_last": history[-1]})
    return predictors, stats
