"""Python face of the C++ WeightCache (``_sparse_mlp``)."""

import numpy as np

from sparse_mlp import _sparse_mlp
from sparse_mlp._convert import is_torch, mask_array, out_matrix, result, tokens, weight
# The mask rules every path of the package follows, under the names users
# have always imported them by (sparse_mlp.cache.MASK_RULES, .check_mask).
from sparse_mlp._convert import MASK_RULES, check_mask  # noqa: F401
from sparse_mlp.quant import QuantizedTensor, native_rows

try:  # torch is optional: NumPy arrays work alone.
    import torch
except ImportError:  # pragma: no cover - torch is installed where tests run
    torch = None


class WeightCache:
    """The packed active weights of one gated MLP layer.

    Args:
      mask: bool/uint8 ``[I]`` initial mask (torch or NumPy).
      gate_weight, up_weight: ``[I, H]``; gate_weight may be None (up/down
        only: OPT / ReLU-style MLPs).
      down_weight: ``[H, I]`` (``nn.Linear`` layout), or ``[I, H]`` with
        ``down_neuron_major=True``.
      num_threads: threads for the copies of each update.
      tolerance: skip updates that change fewer neurons than this (0: every
        update exact); see ``lag`` and ``catch_up``.
      layout: ``"split"`` (separate gate/up/down buffers), ``"interleaved"``
        (``gate_up_interleaved()`` gives ``[A, 2H]`` for one fused matmul) or
        ``"fused"`` (one ``[A, 3H]`` array, gate | up | down per neuron: the
        fastest updates; views are strided, ``gate_up_interleaved()`` too).
      copy_sources: copy gate/up into the cache. By default they are read in
        place (no duplicate of the weights) and must then not be modified
        while the cache lives; the cache holds references to them. down is
        always transposed into the cache unless given neuron-major.
      concat_gate_up: also keep the seed API's ``[2A, H]`` concatenation
        (active gate rows, then active up rows) as a zero-copy view,
        :meth:`concatenated_gate_up`, kept right by every update at O(changed
        rows) while the active count stays the same (a replaced neuron keeps
        its slot) plus one O(A x H) move of the up block when it changes.
        Costs ``2 x capacity x H`` more elements; needs a gate.
      repack_fraction: repack (lay every row out afresh, in order) when at
        least this fraction of the new active set changes; in (0, 1]. The
        default 1.0 repacks only when every slot changes anyway: a repack
        writes all A rows where the differential plan writes only the
        changed ones, which has not paid earlier on the machines measured.

    Quantized weights: ``gate_weight`` (or None), ``up_weight`` and
    ``down_weight`` as :class:`sparse_mlp.QuantizedTensor` of one format
    (``sparse_mlp.quantize_mlp(gate, up, down, "int8")``'s parts; down per
    neuron). A slot then holds a neuron's quantized rows and their scales,
    moved as bytes (bit-identical to a rebuild); the rows are read in place
    like float sources; ``forward`` and ``step`` take float32 ``x``; the
    views are :class:`QuantizedTensor` over the packed rows (``down_rows()``
    per neuron; no ``down_hidden_major`` or concatenation); ``dtype`` is
    the format's name.

    Weights are float32, bfloat16 or float16, C-contiguous, on the CPU; they
    are taken without copying (torch through DLPack; NumPy through the buffer
    protocol, so read-only and memory-mapped arrays work, and a borrowed
    memory-mapped file is read in place, its pages faulted in as rows are
    loaded). Anything else raises TypeError/ValueError naming the argument,
    as do bad masks (see ``MASK_RULES``) and integers out of range
    (``num_threads`` in [1, 1024], ``tolerance`` >= 0); the cache is
    unchanged after any failed call.

    Threads: calls that change the cache (updates, ``reserve``,
    ``catch_up``, the setters) release the GIL and are serialized per cache,
    so several Python threads may share one cache safely (they take turns)
    and different caches update in parallel.

    Views (``gate()``, ``up()``, ``down()``, ``down_hidden_major()``,
    ``gate_up_interleaved()``) are zero-copy tensors into the cache. They
    keep the memory they point into alive, so they stay safe to read after
    any update and after the cache is deleted. Their *contents* follow the
    cache only until its capacity grows or its active count changes: an
    update rewrites rows in place (a view taken before it then shows the new
    rows, in slots that may hold other neurons, and keeps its old row
    count); a growth moves the cache to new memory (older views keep the
    old rows). Take views after each update.

    Views are the cache's live packed rows, and torch tensors cannot be
    made read-only: writing into one (``cache.up().mul_(2)``) changes the
    cache's rows until that neuron is next loaded, silently. Treat views as
    read-only; :meth:`verify` checks the cache against its sources. (NumPy
    views are read-only.)
    """

    def __init__(self, mask, gate_weight, up_weight, down_weight, *, num_threads=1,
                 tolerance=0, layout="split", copy_sources=False,
                 down_neuron_major=False, repack_fraction=1.0, concat_gate_up=False,
                 hidden_size=None):
        self._quant = None
        if isinstance(up_weight, QuantizedTensor):
            g, u, d, fmt, group, hidden = native_rows(gate_weight, up_weight, down_weight,
                                                      down_neuron_major=down_neuron_major)
            if hidden_size is not None and hidden_size != hidden:
                raise ValueError(f"hidden_size {hidden_size} differs from the quantized rows' "
                                 f"{hidden} weights")
            if concat_gate_up:
                raise ValueError("concat_gate_up needs float rows; these are quantized")
            self._torch = is_torch(up_weight.rows)
            self._quant = (fmt, group, hidden)
            self._sources = (gate_weight, up_weight, down_weight)
            self._native = _sparse_mlp.WeightCache(
                mask_array(mask), hidden, g, u, d, num_threads=num_threads,
                tolerance=tolerance, layout=layout, copy_sources=copy_sources,
                repack_fraction=float(repack_fraction), quant_type=fmt, quant_group=group)
            if copy_sources:
                self._sources = None
            return
        up = weight(up_weight, "up_weight")
        if up is None:
            raise TypeError("up_weight is required")
        if hidden_size is None:
            if len(up.shape) != 2:
                raise ValueError(f"up_weight must be 2-D, got shape {tuple(up.shape)}")
            hidden_size = up.shape[1]
        self._torch = is_torch(up_weight)
        # Borrowed sources stay referenced here as well as by the native
        # DLPack handles, so they cannot be freed under the cache.
        self._sources = (gate_weight, up_weight, down_weight)
        self._native = _sparse_mlp.WeightCache(
            mask_array(mask), hidden_size, weight(gate_weight, "gate_weight"), up,
            weight(down_weight, "down_weight"), num_threads=num_threads,
            tolerance=tolerance, layout=layout, copy_sources=copy_sources,
            down_neuron_major=down_neuron_major, repack_fraction=float(repack_fraction),
            concat_gate_up=bool(concat_gate_up))
        if copy_sources:
            self._sources = None

    @classmethod
    def _of_layer(cls, native, use_torch, quant=None):
        """A layer of a :class:`sparse_mlp.ModelCache` (its native handle;
        the model keeps the sources); ``quant``: (fmt, group, hidden) of
        quantized rows."""
        self = cls.__new__(cls)
        self._native = native
        self._torch = use_torch
        self._sources = None
        self._quant = quant
        return self

    # -- updates -----------------------------------------------------------

    def update(self, mask):
        """Makes the cache match ``mask``: ``[I]``, or ``[tokens, I]`` for the
        union over a batch of tokens. Only neurons that enter or leave move."""
        self._native.update(mask_array(mask))

    def update_indices(self, indices):
        """Like :meth:`update`, from the sorted, duplicate-free indices of the
        active neurons (e.g. a top-k predictor's output; torch or NumPy
        integers). Unsorted, duplicated, negative or out-of-range indices
        raise ValueError naming the first bad position."""
        if is_torch(indices):
            if indices.device.type != "cpu":
                raise ValueError(f"indices must be on the CPU, got device {indices.device}")
            indices = indices.detach().numpy()
        if not isinstance(indices, np.ndarray):
            raise TypeError(
                f"indices must be a torch.Tensor or numpy.ndarray, got {type(indices).__name__}")
        if indices.ndim != 1:
            raise ValueError(f"indices must be 1-D, got {indices.ndim} dimensions")
        if not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"indices must be integers, got {indices.dtype}")
        if indices.size and (indices.min() < 0 or indices.max() > np.iinfo(np.uint32).max):
            bad = int(np.argmax((indices < 0) | (indices > np.iinfo(np.uint32).max)))
            raise ValueError(f"neuron index {indices[bad]} at position {bad} is out of range")
        self._native.update_indices(np.ascontiguousarray(indices, dtype=np.uint32))

    def _scores(self, scores):
        """[I] or [tokens, I] float32 / bfloat16 scores as a 2-D view (never a
        copy: a non-contiguous tensor is refused natively)."""
        if is_torch(scores):
            if scores.device.type != "cpu":
                raise ValueError(f"scores must be on the CPU, got device {scores.device}")
            scores = scores.detach()
        elif not isinstance(scores, np.ndarray):
            raise TypeError(
                f"scores must be a torch.Tensor or numpy.ndarray, got {type(scores).__name__}")
        if scores.ndim not in (1, 2):
            raise ValueError(f"scores must be [I] or [tokens, I], got shape {tuple(scores.shape)}")
        return scores.reshape(1, -1) if scores.ndim == 1 else scores

    def update_topk(self, scores, k):
        """Updates to the ``k`` highest scores (per token for ``[tokens, I]``
        scores, then the union), selected natively in O(I) per token (no
        sort, no bool mask in between). Ties go to the lower neuron index;
        NaN scores raise ValueError; ``k`` in [0, I]."""
        self._native.update_topk(self._scores(scores), k)

    def update_threshold(self, scores, threshold):
        """Updates to the neurons whose score is strictly above ``threshold``
        (the union over tokens for ``[tokens, I]``)."""
        self._native.update_threshold(self._scores(scores), float(threshold))

    def verify(self):
        """Checks every packed row against the sources the cache reads (the
        caller's arrays when borrowed, the cache's copies otherwise) and the
        slot map against the applied mask; raises RuntimeError naming the
        first slot, neuron and matrix that differ. O(A x H)."""
        self._native.verify()

    def catch_up(self):
        """Applies the last requested mask exactly, ignoring the tolerance."""
        self._native.catch_up()

    def reserve(self, active):
        """Pre-sizes the cache for ``active`` neurons so updates never allocate."""
        self._native.reserve(active)

    # -- the forward -------------------------------------------------------

    def forward(self, x, activation="silu", out=None):
        """``down(act(gate x) * (up x))`` over the cache's active neurons,
        computed natively on the packed rows (mlp/ kernels, GIL released).

        ``x``: ``[H]`` or ``[tokens, H]``, float32 or the weights' type,
        C-contiguous, CPU; the result has x's shape and type (a new tensor,
        or ``out`` when given: x's shape and type, written in place).
        ``activation``: "silu" (LLaMA), "gelu_tanh" or "relu". Gate-less
        caches compute ``down(act(up x))``."""
        x2, fresh = tokens(x, self.hidden_size)
        target = fresh if out is None else out_matrix(out, x2)
        self._native.forward(x2, target, activation=activation)
        return result(target, x) if out is None else out

    def step(self, mask, x, activation="silu", out=None):
        """The fused layer step: ``update(mask)`` and ``forward(x)`` in one
        pass, each entering neuron's rows read once, used for the compute
        and stored into the cache on the way. Afterwards the cache is as
        after ``update(mask)``; returns the forward over the neurons it now
        holds. Arguments as in :meth:`update` and :meth:`forward`."""
        m = mask_array(mask)
        x2, fresh = tokens(x, self.hidden_size)
        target = fresh if out is None else out_matrix(out, x2)
        self._native.step(m, x2, target, activation=activation)
        return result(target, x) if out is None else out

    # -- views -------------------------------------------------------------

    def _wrap(self, view):
        t = torch.from_dlpack(view) if self._torch else np.from_dlpack(view)
        if self._quant is None:
            return t
        fmt, group, hidden = self._quant
        return QuantizedTensor(t, fmt, group, hidden, (t.shape[0], hidden))

    def _float_only(self, what):
        if self._quant is not None:
            raise ValueError(f"{what} needs float rows; this cache holds {self._quant[0]} rows "
                             f"(use gate(), up(), down_rows())")

    def gate(self):
        """``[A, H]`` active gate rows (zero-copy; do not write into it)."""
        return self._wrap(self._native.gate())

    def up(self):
        """``[A, H]`` active up rows (zero-copy; do not write into it)."""
        return self._wrap(self._native.up())

    def down_rows(self):
        """``[A, H]`` active down columns stored as rows (zero-copy; do not
        write into it). The same name as the C++ ``down_rows()``."""
        return self._wrap(self._native.down_rows())

    def down_hidden_major(self):
        """``[H, A]`` active down columns, strides ``(1, H)`` (``(1, 3H)`` or
        ``(1, 2H)`` with layout="fused"; zero-copy; do not write into it)."""
        self._float_only("down_hidden_major()")
        return self._wrap(self._native.down_hidden_major())

    def gate_up_interleaved(self):
        """``[A, 2H]``: gate row then up row per neuron (layout="interleaved"
        or "fused"; zero-copy; do not write into it)."""
        self._float_only("gate_up_interleaved()")
        return self._wrap(self._native.gate_up_interleaved())

    def concatenated_gate_up(self):
        """``[2A, H]`` kept concatenation (``concat_gate_up=True``; zero-copy,
        contiguous; do not write into it). After an update that keeps A it
        shows the new rows; after one that changes A take a new view."""
        self._float_only("concatenated_gate_up()")
        return self._wrap(self._native.concatenated_gate_up())

    def concat_gate_up(self):
        """A new ``[2A, H]`` tensor: active gate rows, then active up rows in the
        same neuron order. A copy, O(A x H): prefer the views."""
        self._float_only("concat_gate_up()")
        a, h = self._native.num_active, self._native.hidden_size
        if self._torch:
            dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                     "float16": torch.float16}[self._native.dtype]
            out = torch.empty((2 * a, h), dtype=dtype)
        else:
            out = np.empty((2 * a, h), dtype=np.dtype(self._native.dtype))
        self._native.copy_concatenated_gate_up(out)
        return out

    def active_indices(self):
        """Neuron index of each slot (a copy: ``int64 [A]``)."""
        indices = self._native.active_indices()
        return torch.from_numpy(indices) if self._torch else indices

    # -- state -------------------------------------------------------------

    num_active = property(lambda self: self._native.num_active,
                          doc="Active neurons A.")
    capacity = property(lambda self: self._native.capacity,
                        doc="Slots allocated (grows 1.5x as needed).")
    hidden_size = property(lambda self: self._native.hidden_size)
    intermediate_size = property(lambda self: self._native.intermediate_size)
    has_gate = property(lambda self: self._native.has_gate)
    dtype = property(lambda self: self._native.dtype, doc="Element type name.")
    lag = property(lambda self: self._native.lag,
                   doc="Neurons by which the cache differs from the last requested mask.")
    memory_bytes = property(lambda self: self._native.memory_bytes,
                            doc="Bytes the cache itself holds.")
    last_update = property(lambda self: self._native.last_update(),
                           doc="What the last update did (rows, bytes, repack, skip).")

    @property
    def quantize_x(self):
        """Quantized rows: round x to int8 per block of 32 in ``forward`` and
        ``step`` (integer products where the CPU has AVX-512 VNNI; see
        :func:`sparse_mlp.quant.mlp_forward_quantized`). Default False."""
        return self._native.quantize_x

    @quantize_x.setter
    def quantize_x(self, value):
        self._native.quantize_x = bool(value)

    @property
    def num_threads(self):
        return self._native.num_threads

    @num_threads.setter
    def num_threads(self, value):
        self._native.num_threads = value

    @property
    def tolerance(self):
        return self._native.tolerance

    @tolerance.setter
    def tolerance(self, value):
        self._native.tolerance = value


class WeightCacheOptimized(WeightCache):
    """The seed design's API, on the differential cache.

    ``WeightCacheOptimized(mask, hidden_size, gate_weight, up_weight,
    down_weight)`` with ``gate/up: [I, H]``, ``down: [H, I]`` and a bool mask
    of length I. Keyword arguments are those of :class:`WeightCache`;
    ``concat_gate_up`` defaults to True here, so that
    :meth:`get_concat_weight` is a zero-copy view.
    """

    def __init__(self, mask, hidden_size, gate_weight, up_weight, down_weight, **kwargs):
        # hidden_size is checked by the native module (an int in range).
        kwargs.setdefault("concat_gate_up", gate_weight is not None)
        super().__init__(mask, gate_weight, up_weight, down_weight,
                         hidden_size=hidden_size, **kwargs)
        self._concat = kwargs["concat_gate_up"]

    def update_active_weights(self, mask):
        """``mask``: ``[I]``, or ``[tokens, I]`` meaning the union over tokens."""
        self.update(mask)

    def get_concat_weight(self):
        """``[2A, H]``: active gate rows then active up rows. Zero-copy (a view
        of the kept concatenation, O(changed rows) per update while A stays
        the same, one O(A x H) move of the up block when A changes); a new
        tensor (an O(A x H) copy per call) with ``concat_gate_up=False``.
        Take it after each update, like the other views."""
        return self.concatenated_gate_up() if self._concat else self.concat_gate_up()

    def get_active_down_weight(self):
        """``[H, A]`` zero-copy view, columns in the same neuron order (do
        not write into it)."""
        return self.down_hidden_major()

    def get_num_active(self):
        return self.num_active
