"""Quantized weights: rows of int8 or 4-bit integers with a float16 scale
per group of weights (the formats of the C++ ``quant/`` component), and the
MLP forward over them.

A quantized row is planar and self-contained: its quants (H int8, or H / 2
bytes of 4-bit pairs), then its H / group float16 scales; weight i is
``q_i * scale[i // group]``. ``"int8"``: symmetric, scale max|w| / 127,
group a multiple of 32 dividing H or 0 (the whole row). ``"q4"``: q in
[-8, 7], group 32 or 64, the scale searched to minimise the group's squared
error. Quantizing refuses NaN or infinite weights and groups whose scale
does not fit float16 (ValueError naming the row and weight or group).
"""

import numpy as np

from sparse_mlp import _sparse_mlp
from sparse_mlp._convert import is_torch, out_matrix, result, tokens

try:  # torch is optional: NumPy arrays work alone.
    import torch
except ImportError:  # pragma: no cover - torch is installed where tests run
    torch = None

FORMATS = ("int8", "q4")


def _check_format(fmt, group):
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise TypeError(f"group must be a non-negative int, got {group!r}")


def _float_rows(w, name):
    """``w`` ([R, C], torch or NumPy, any float type) as C-contiguous float32
    NumPy (a converted copy: quantizing reads each weight once)."""
    if is_torch(w):
        if w.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU, got device {w.device}")
        w = w.detach().float().contiguous().numpy()
    elif isinstance(w, np.ndarray):
        if w.dtype.kind != "f":
            raise TypeError(f"{name} must be floating point, got {w.dtype}")
        w = np.ascontiguousarray(w, dtype=np.float32)
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(w.shape)}")
    return w


class QuantizedTensor:
    """A matrix quantized along its rows' last dimension.

    ``rows``: ``[R, row_bytes]`` uint8 (torch when quantized from torch, else
    NumPy), one quantized row per row of the source (per neuron for a down
    projection from :func:`quantize_mlp`); ``data`` and ``scales`` are
    zero-copy views of it (``[R, quant_bytes]`` uint8 and ``[R, groups]``
    float16). ``shape`` is the matrix's shape as given (``[H, I]`` for a down
    projection kept as ``nn.Linear`` keeps it, its rows the neurons'
    columns: ``transposed``). ``dequantize()`` returns float32 in that
    shape."""

    def __init__(self, rows, fmt, group, hidden, shape, transposed=False):
        self.rows = rows
        self.fmt = fmt
        self.group = group  # as given: 0 = the whole row
        self.hidden = hidden  # weights per quantized row
        self.shape = tuple(shape)
        self.transposed = transposed
        quant_bytes = hidden if fmt == "int8" else hidden // 2
        self.data = rows[:, :quant_bytes]
        self.scales = (rows[:, quant_bytes:].view(torch.float16) if is_torch(rows)
                       else rows[:, quant_bytes:].view(np.float16))

    @property
    def nbytes(self):
        return int(self.rows.shape[0]) * int(self.rows.shape[1])

    def numpy_rows(self):
        """The rows as a NumPy array (a view, never a copy)."""
        return self.rows.numpy() if is_torch(self.rows) else self.rows

    def dequantize(self):
        """The weights q x scale, float32, in ``shape``."""
        out = np.empty((self.rows.shape[0], self.hidden), dtype=np.float32)
        # Strided rows (a cache's fused layout) are read through a copy.
        _sparse_mlp.dequantize_rows(np.ascontiguousarray(self.numpy_rows()), out, self.fmt,
                                    self.group)
        if self.transposed:
            out = np.ascontiguousarray(out.T)
        return torch.from_numpy(out) if is_torch(self.rows) else out

    def __repr__(self):
        return (f"QuantizedTensor({self.fmt}, group={self.group or self.hidden}, "
                f"shape={list(self.shape)}, {self.nbytes} bytes)")


def _quantize_rows(w, fmt, group, num_threads, name):
    try:
        row_bytes = _sparse_mlp.quant_row_bytes(fmt, group, w.shape[1])
        out = np.empty((w.shape[0], row_bytes), dtype=np.uint8)
        _sparse_mlp.quantize_rows(w, out, fmt, group, num_threads=num_threads)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return out


def quantize(weight, fmt="int8", *, group=32, num_threads=1):
    """``weight`` ``[R, C]`` quantized in groups of ``group`` along each row
    (C is the reduction dimension of a gate or up projection). Returns a
    :class:`QuantizedTensor`; torch in, torch rows out."""
    _check_format(fmt, group)
    w = _float_rows(weight, "weight")
    rows = _quantize_rows(w, fmt, group, num_threads, "weight")
    if is_torch(weight):
        rows = torch.from_numpy(rows)
    return QuantizedTensor(rows, fmt, group, w.shape[1], w.shape)


class QuantizedMLP:
    """A gated MLP's three projections quantized for the forward: ``gate``
    and ``up`` by rows (``[I, H]``), ``down`` per neuron along H (its
    ``[H, I]`` columns, as ``nn.Linear`` keeps it; ``transposed``)."""

    def __init__(self, gate, up, down):
        self.gate, self.up, self.down = gate, up, down
        self.fmt, self.group = up.fmt, up.group
        self.hidden_size = up.hidden
        self.intermediate_size = up.rows.shape[0]

    @property
    def nbytes(self):
        return sum(t.nbytes for t in (self.gate, self.up, self.down) if t is not None)

    def __repr__(self):
        return (f"QuantizedMLP({self.fmt}, group={self.group or self.hidden_size}, "
                f"H={self.hidden_size}, I={self.intermediate_size}, {self.nbytes} bytes)")


def quantize_mlp(gate, up, down, fmt="int8", *, group=32, num_threads=1, linear=False):
    """Quantizes a gated MLP: ``gate`` and ``up`` ``[I, H]`` (``gate`` may be
    None), ``down`` ``[H, I]`` (``nn.Linear``), each neuron's down column
    quantized along H (what the caches, the store and the indexed forward
    read). ``linear=True`` quantizes down along its rows (I) instead, as
    ``nn.Linear`` keeps it: for the dense forward in that layout only
    (``group`` must then divide I too). Returns a :class:`QuantizedMLP`."""
    _check_format(fmt, group)
    u = _float_rows(up, "up")
    i, h = u.shape
    d = _float_rows(down, "down")
    if d.shape != (h, i):
        raise ValueError(f"down must be [H, I] = [{h}, {i}] for up {list(u.shape)}, "
                         f"got {list(d.shape)}")
    parts = {"up": (u, up)}
    if gate is not None:
        g = _float_rows(gate, "gate")
        if g.shape != u.shape:
            raise ValueError(f"gate must have up's shape {list(u.shape)}, got {list(g.shape)}")
        parts["gate"] = (g, gate)
    as_torch = is_torch(up)
    out = {}
    for name, (w, _) in parts.items():
        rows = _quantize_rows(w, fmt, group, num_threads, name)
        out[name] = QuantizedTensor(torch.from_numpy(rows) if as_torch else rows, fmt, group, h,
                                    w.shape)
    if linear:
        rows = _quantize_rows(d, fmt, group, num_threads, "down")
        down_q = QuantizedTensor(torch.from_numpy(rows) if as_torch else rows, fmt, group, i,
                                 d.shape)
        return QuantizedMLP(out.get("gate"), out["up"], down_q)
    rows = _quantize_rows(np.ascontiguousarray(d.T), fmt, group, num_threads, "down")
    down_q = QuantizedTensor(torch.from_numpy(rows) if as_torch else rows, fmt, group, h, d.shape,
                             transposed=True)
    return QuantizedMLP(out.get("gate"), out["up"], down_q)


def mlp_forward_quantized(x, mlp, *, indices=None, activation="silu", num_threads=1, out=None,
                          accumulate=False, quantize_x=False):
    """``down(act(gate x) * (up x))`` over a :class:`QuantizedMLP` with the
    native kernels, dense or over sorted neuron ``indices`` (uint32-able,
    read in place). ``x`` float32 ``[H]`` or ``[tokens, H]``. A down
    quantized along I (``quantize_mlp(..., linear=True)``) runs the dense
    ``nn.Linear``-layout forward (no indices). ``quantize_x=True`` rounds x
    to int8 per block of 32 (llama.cpp's q8_0) and sums the products in
    integers where the CPU has AVX-512 VNNI: faster, with the rounding of x
    added to the results (H a multiple of 32)."""
    if not isinstance(mlp, QuantizedMLP):
        raise TypeError(f"mlp must be a QuantizedMLP, got {type(mlp).__name__}")
    x2, fresh = tokens(x, mlp.hidden_size)
    target = fresh if out is None else out_matrix(out, x2)
    if accumulate and out is None:
        raise ValueError("accumulate=True adds to out: pass out")
    idx = None
    if indices is not None:
        idx = indices.detach().cpu().numpy() if is_torch(indices) else np.asarray(indices)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise TypeError(f"indices must be a 1-D integer array, got {idx.dtype} "
                            f"{tuple(idx.shape)}")
        if idx.size and (idx.min() < 0 or idx.max() >= mlp.intermediate_size):
            raise ValueError(f"indices must be in [0, {mlp.intermediate_size})")
        idx = np.ascontiguousarray(idx, dtype=np.uint32)
    gate = None if mlp.gate is None else mlp.gate.numpy_rows()
    if not mlp.down.transposed:
        if idx is not None:
            raise ValueError("indices need each neuron's down column quantized along H "
                             "(quantize_mlp without linear=True)")
        _sparse_mlp.mlp_forward_quant_linear(
            x2, gate, mlp.up.numpy_rows(), mlp.down.numpy_rows(), target, type=mlp.fmt,
            group=mlp.group, hidden=mlp.hidden_size, activation=activation,
            num_threads=num_threads, accumulate=accumulate, quantize_x=bool(quantize_x))
        return result(target, x) if out is None else out
    _sparse_mlp.mlp_forward_quant(x2, gate, mlp.up.numpy_rows(), mlp.down.numpy_rows(), idx,
                                  target, type=mlp.fmt, group=mlp.group, hidden=mlp.hidden_size,
                                  activation=activation, num_threads=num_threads,
                                  accumulate=accumulate, quantize_x=bool(quantize_x))
    return result(target, x) if out is None else out


def native_rows(gate, up, down, *, down_neuron_major=False, prefix=""):
    """A quantized layer in the native caches' form: ``(gate rows or None,
    up rows, neuron-major down rows, fmt, group, hidden)``, the rows uint8
    NumPy views (never copies). ``gate`` (or None) and ``up``
    :class:`QuantizedTensor` ``[I, H]``; ``down`` quantized per neuron
    (from :func:`quantize_mlp`, or ``quantize(down.T)`` with
    ``down_neuron_major=True``). One format and group for all three;
    TypeError / ValueError naming the argument otherwise."""
    parts = {"gate_weight": gate, "up_weight": up, "down_weight": down}
    if isinstance(down, QuantizedTensor) and not (down.transposed or down_neuron_major):
        raise ValueError(
            f"{prefix}down_weight is quantized along I (nn.Linear's rows); the cache needs each "
            f"neuron's down column quantized along H: use quantize_mlp(...).down, or "
            f"quantize(down.T) with down_neuron_major=True")
    for name, t in parts.items():
        if t is None and name == "gate_weight":
            continue
        if not isinstance(t, QuantizedTensor):
            raise TypeError(f"{prefix}{name} must be a QuantizedTensor like up_weight, got "
                            f"{type(t).__name__}")
        if (t.fmt, t.group, t.hidden) != (up.fmt, up.group, up.hidden):
            raise ValueError(
                f"{prefix}{name} is {t.fmt} group {t.group} over {t.hidden} weights per row; "
                f"up_weight is {up.fmt} group {up.group} over {up.hidden}: one format for all")
        if t.transposed and name != "down_weight":
            raise ValueError(f"{prefix}{name} must be quantized by rows [I, H], not transposed")
    neurons, hidden = up.rows.shape[0], up.hidden
    if gate is not None and tuple(gate.shape) != tuple(up.shape):
        raise ValueError(f"{prefix}gate_weight must have up_weight's shape {list(up.shape)}, "
                         f"got {list(gate.shape)}")
    if down.rows.shape[0] != neurons:
        raise ValueError(f"{prefix}down_weight must hold {neurons} neuron rows like up_weight, "
                         f"got {down.rows.shape[0]}")
    g = None if gate is None else gate.numpy_rows()
    return g, up.numpy_rows(), down.numpy_rows(), up.fmt, up.group, hidden
