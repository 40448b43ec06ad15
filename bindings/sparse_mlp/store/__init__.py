"""sparse_mlp.store: MLP weights in a neuron-bundle file, the slow tier.

A bundle file holds, per layer and neuron, the neuron's gate row, up row and
down column side by side, so loading a neuron is one read
(docs/store_format.md). Write one from in-memory layers, a llama2.c
checkpoint or Hugging Face safetensors; read bundles back asynchronously
(io_uring or a pread pool, O_DIRECT, checksums checked on arrival)::

    import sparse_mlp.store as store
    store.write("mlp.spmlb", [layer.mlp for layer in model.model.layers])
    store.convert("model.safetensors", "mlp.spmlb", dtype="bfloat16")
    print(store.info("mlp.spmlb"))
    bundles = store.Reader("mlp.spmlb").read(layer=3, neurons=[5, 6, 900])

Command line: ``python3 -m sparse_mlp.store convert IN OUT`` and
``python3 -m sparse_mlp.store info FILE``.

File problems (missing, truncated, corrupted, a newer format) raise OSError
naming the file and what is wrong; bad arguments raise ValueError /
TypeError.
"""

import numpy as np

from sparse_mlp import _sparse_mlp
from sparse_mlp._convert import is_torch, weight
from sparse_mlp._models import layer_triple
from sparse_mlp.quant import FORMATS as QUANTIZED, QuantizedMLP, quantize_mlp
from sparse_mlp.store.formats import llama2c_layers, safetensors_layers

try:
    import torch
except ImportError:  # the writer and reader work on NumPy arrays too
    torch = None

__all__ = ["write", "convert", "info", "Reader", "io_engines", "DEFAULT_ALIGNMENT"]

DEFAULT_ALIGNMENT = 4096
_NUMPY_DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16"}


def _dtype_name(t):
    if is_torch(t):
        return {torch.float32: "float32", torch.bfloat16: "bfloat16",
                torch.float16: "float16"}.get(t.dtype)
    return _NUMPY_DTYPES.get(t.dtype)


def _convert(t, dtype):
    """t in `dtype` (a name), contiguous; a copy only when it must change."""
    if t is None or dtype is None or _dtype_name(t) == dtype:
        return t
    if not is_torch(t):
        t = torch.from_numpy(np.ascontiguousarray(t))
    return t.to({"float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[dtype]).contiguous()


# Quantized bundles are 5-10 KiB: 4 KiB padding would waste up to half of
# each, so their files align to 512 bytes (docs/store_format.md).
QUANTIZED_ALIGNMENT = 512


def write(path, layers, *, dtype=None, alignment=None, down_neuron_major=False,
          neurons=None, num_threads=1, progress=False, group=32):
    """Writes `layers` to a bundle file at `path` (atomically: a partial file
    is renamed on success and removed on failure).

    Args:
      layers: a sequence (or an iterable with ``len``) of (gate, up, down)
        triples (torch tensors or NumPy arrays; gate may be None; down
        ``[H, I]`` as ``nn.Linear`` keeps it, or ``[I, H]`` with
        ``down_neuron_major=True``) or ``nn.Module`` MLPs, as ``ModelCache``
        takes them, or ``sparse_mlp.QuantizedMLP`` (quantize_mlp's). Only one
        layer is converted at a time.
      dtype: "float32", "bfloat16" or "float16" to convert to, or "int8" /
        "q4" to quantize to (groups of ``group`` along H; each neuron's down
        column quantized along H); default: the weights' own.
      alignment: bundle alignment in bytes (a power of two >= 512); default
        4096, or 512 for quantized files.
      neurons: None (all) or a range ``(begin, end)`` of neurons per layer:
        the file holds only that slice (one rank's share of a model).
      progress: show a progress bar (tqdm) over the layers.
    Returns the file's layout (``info``'s dict).
    """
    if not hasattr(layers, "__len__"):
        raise TypeError(f"layers must be a sequence, got {type(layers).__name__}")
    count = len(layers)
    if count == 0:
        raise ValueError("layers must hold at least one layer, got 0")
    iterator = iter(layers)
    writer = None
    bar = _progress(count, path) if progress else None
    for index in range(count):
        layer = next(iterator)
        if isinstance(layer, QuantizedMLP) or dtype in QUANTIZED:
            writer = _write_quantized(writer, path, layer, index, count, dtype, group, alignment,
                                      down_neuron_major, neurons, num_threads)
            if bar is not None:
                bar.update(1)
            continue
        gate, up, down = layer_triple(layer, index)
        gate, up, down = (weight(gate, "gate"), weight(up, "up"), weight(down, "down"))
        gate, up, down = (_convert(gate, dtype), _convert(up, dtype), _convert(down, dtype))
        if writer is None:
            name = _dtype_name(up)
            if name is None:
                raise TypeError(f"layer 0: up must be float32, bfloat16 or float16, got "
                                f"{up.dtype}")
            total, hidden = up.shape
            begin, end = (0, total) if neurons is None else neurons
            if not (0 <= begin < end <= total):
                raise ValueError(f"neurons must be a range (begin, end) within [0, {total}], "
                                 f"got {neurons}")
            writer = _sparse_mlp.BundleWriter(
                str(path), hidden, end - begin, count, name, gated=gate is not None,
                alignment=DEFAULT_ALIGNMENT if alignment is None else alignment,
                neuron_begin=begin, model_intermediate_size=total, num_threads=num_threads)
        writer.append_layer(gate, up, down, down_neuron_major=down_neuron_major)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    writer.finish()
    return writer.layout()


def _write_quantized(writer, path, layer, index, count, dtype, group, alignment,
                     down_neuron_major, neurons, num_threads):
    """One layer of a quantized file (quantized here unless given so);
    returns the writer, created at the first layer."""
    if isinstance(layer, QuantizedMLP):
        q = layer
        if dtype is not None and dtype != q.fmt:
            raise ValueError(f"layer {index}: the layer is {q.fmt}, dtype asks for {dtype}")
    else:
        gate, up, down = layer_triple(layer, index)
        if down_neuron_major:
            down = down.t() if is_torch(down) else down.T
        try:
            q = quantize_mlp(gate, up, down, dtype, group=group, num_threads=num_threads)
        except ValueError as e:
            raise ValueError(f"layer {index}: {e}") from None
    if writer is None:
        total, hidden = q.intermediate_size, q.hidden_size
        begin, end = (0, total) if neurons is None else neurons
        if not (0 <= begin < end <= total):
            raise ValueError(f"neurons must be a range (begin, end) within [0, {total}], "
                             f"got {neurons}")
        writer = _sparse_mlp.BundleWriter(
            str(path), hidden, end - begin, count, q.fmt, gated=q.gate is not None,
            alignment=QUANTIZED_ALIGNMENT if alignment is None else alignment,
            neuron_begin=begin, model_intermediate_size=total, num_threads=num_threads,
            quant_group=q.group)
    writer.append_layer(None if q.gate is None else q.gate.numpy_rows(), q.up.numpy_rows(),
                        q.down.numpy_rows(), down_neuron_major=True)
    return writer


def _progress(total, path):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="layer", desc=f"writing {path}")


def convert(source, path, *, dtype=None, alignment=None, neurons=None,
            num_threads=1, progress=False, group=32):
    """Converts a checkpoint's MLP weights to a bundle file.

    `source`: a llama2.c checkpoint (``.bin``: w1 / w3 / w2 per layer), a
    Hugging Face safetensors file, or a directory or ``*.index.json`` of
    sharded ones (``model.layers.N.mlp.{gate,up,down}_proj.weight``).
    Weights are memory-mapped, one layer converted (or quantized: ``dtype``
    "int8" / "q4", groups of ``group``) at a time."""
    source = str(source)
    if source.endswith(".bin"):
        layers = llama2c_layers(source)
    else:
        layers = safetensors_layers(source)
    return write(path, layers, dtype=dtype, alignment=alignment, neurons=neurons,
                 num_threads=num_threads, progress=progress, group=group)


def info(path):
    """The file's header as a dict (validated: the file's size, the header
    checksum; bundles are not read)."""
    return Reader(path, verify=False).layout


def io_engines():
    """[(name, available, reason)] for the read engines on this machine."""
    return [tuple(e) for e in _sparse_mlp.io_engines()]


class Reader:
    """Reads bundles from a file asynchronously (see store/bundle_reader.h).

    Args:
      engine: "auto" (io_uring where allowed, else pread), "io_uring", "pread".
      queue_depth: reads in flight (random reads need depth: see
        ``bazel run //bench:store``).
      io_threads: the pread engine's threads.
      verify: check each bundle's XXH3 checksum on arrival.
      direct_io: "auto" (O_DIRECT where the file system allows it), "require",
        "never" (through the page cache).
    """

    def __init__(self, path, *, engine="auto", queue_depth=32, io_threads=4, verify=True,
                 direct_io="auto"):
        self._native = _sparse_mlp.BundleReader(str(path), engine=engine,
                                                queue_depth=queue_depth, io_threads=io_threads,
                                                verify=verify, direct_io=direct_io)
        self.layout = self._native.layout()
        self.path = str(path)

    @property
    def engine(self):
        return self._native.engine

    @property
    def direct_io(self):
        return self._native.direct_io

    def stats(self):
        return self._native.stats()

    def read(self, layer, neurons, out=None):
        """Bundles of `neurons` (a sequence of this file's neuron indices) of
        `layer` (an int, or a sequence of one layer per neuron) as a
        ``[n, rows, H]`` tensor (rows: gate, up, down; or up, down), in the
        file's dtype (torch if available, else NumPy; NumPy has no
        bfloat16). `out`: an optional ``[n, rows * H]`` destination."""
        neurons = np.ascontiguousarray(np.asarray(neurons, dtype=np.int64).reshape(-1))
        if np.ndim(layer) == 0:
            layers = np.full(neurons.shape, int(layer), dtype=np.int64)
        else:
            layers = np.ascontiguousarray(np.asarray(layer, dtype=np.int64).reshape(-1))
        rows = 3 if self.layout["gated"] else 2
        hidden = self.layout["hidden_size"]
        dtype = self.layout["dtype"]
        if out is None:
            if torch is not None:
                out = torch.empty(len(neurons), rows * hidden,
                                  dtype=getattr(torch, dtype))
            elif dtype == "bfloat16":
                raise TypeError("reading a bfloat16 file needs torch (NumPy has no bfloat16)")
            else:
                out = np.empty((len(neurons), rows * hidden), dtype=dtype)
        self._native.read_into(layers, neurons, out)
        return out.reshape(len(neurons), rows, hidden)
