"""Checkpoint readers for the store's converter: each yields one layer's
(gate, up, down) at a time as memory-mapped tensors (down ``[H, I]``, as
``nn.Linear`` keeps it), so converting never holds more than a layer."""

import json
import math
import os
import struct

import numpy as np

try:
    import torch
except ImportError:
    torch = None


class _Layers:
    """A sized, lazily evaluated sequence of layers."""

    def __init__(self, count, get):
        self._count, self._get = count, get

    def __len__(self):
        return self._count

    def __iter__(self):
        return (self._get(k) for k in range(self._count))


def llama2c_layers(path):
    """The MLPs of a llama.c / llama2.c checkpoint (float32): w1 (gate), w3
    (up), w2 (down) per layer."""
    size = os.path.getsize(path)
    if size < 28:
        raise OSError(f"{path}: too short for a llama2.c checkpoint ({size} bytes)")
    with open(path, "rb") as f:
        dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("7i", f.read(28))
    if min(dim, hidden, layers, heads, kv_heads, seq_len) <= 0 or dim % heads:
        header = (dim, hidden, layers, heads, kv_heads, vocab, seq_len)
        raise OSError(f"{path}: not a llama2.c checkpoint (header {header})")
    kv_dim = dim * kv_heads // heads
    floats = np.memmap(path, dtype=np.float32, mode="r", offset=28,
                       shape=((size - 28) // 4,))
    # Offsets in floats: embedding, rms_att, wq, wk, wv, wo, rms_ffn, then w1, w2, w3.
    start = abs(vocab) * dim + layers * dim + layers * dim * dim + 2 * layers * kv_dim * dim \
        + layers * dim * dim + layers * dim
    per = hidden * dim
    end = start + 3 * layers * per
    if end > floats.shape[0]:
        raise OSError(f"{path}: truncated: the MLP weights end at byte {28 + 4 * end}, "
                      f"the file has {size}")

    def layer(l):
        w1 = floats[start + l * per:start + (l + 1) * per].reshape(hidden, dim)
        w2 = floats[start + (layers + l) * per:start + (layers + l + 1) * per].reshape(dim, hidden)
        w3 = floats[start + (2 * layers + l) * per:
                    start + (2 * layers + l + 1) * per].reshape(hidden, dim)
        return (w1, w3, w2)

    return _Layers(layers, layer)


_SAFETENSORS_DTYPES = {"F32": ("float32", 4), "BF16": ("bfloat16", 2), "F16": ("float16", 2)}


class _SafetensorsFile:
    def __init__(self, path):
        self.path = path
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise OSError(f"{path}: too short for a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise OSError(f"{path}: header length {n} exceeds the file ({size} bytes)")
            try:
                self.header = json.loads(f.read(n))
            except ValueError as e:
                raise OSError(f"{path}: unreadable safetensors header: {e}") from None
        self.data_start = 8 + n
        self.size = size

    def tensor(self, name):
        entry = self.header.get(name)
        if entry is None:
            raise OSError(f"{self.path}: no tensor {name}")
        dtype = entry.get("dtype")
        if dtype not in _SAFETENSORS_DTYPES:
            raise OSError(f"{self.path}: {name} has dtype {dtype}; the store takes F32, BF16, F16")
        name_dtype, elem = _SAFETENSORS_DTYPES[dtype]
        begin, end = entry["data_offsets"]
        shape = entry["shape"]
        if end - begin != math.prod(shape) * elem or self.data_start + end > self.size:
            raise OSError(f"{self.path}: {name}: offsets {(begin, end)} disagree with shape "
                          f"{shape} or the file size")
        # Copy-on-write mapping: writable for torch.frombuffer, the file
        # never changes.
        raw = np.memmap(self.path, dtype=np.uint8, mode="c", offset=self.data_start + begin,
                        shape=(end - begin,))
        if name_dtype == "bfloat16":
            if torch is None:
                raise OSError(f"{self.path}: {name} is bfloat16; reading it needs torch")
            return torch.frombuffer(raw, dtype=torch.bfloat16).view(*shape)
        return raw.view(name_dtype).reshape(shape)


def safetensors_layers(source):
    """The MLPs of a Hugging Face checkpoint in safetensors form: a file, a
    directory (``model.safetensors`` or a sharded index), or an
    ``*.index.json``; tensors ``model.layers.N.mlp.{gate,up,down}_proj.weight``."""
    source = str(source)
    if os.path.isdir(source):
        index = os.path.join(source, "model.safetensors.index.json")
        source = index if os.path.exists(index) else os.path.join(source, "model.safetensors")
    if source.endswith(".json"):
        with open(source) as f:
            weight_map = json.load(f)["weight_map"]
        base = os.path.dirname(source)
        files = {}

        def lookup(name):
            shard = weight_map.get(name)
            if shard is None:
                raise OSError(f"{source}: no tensor {name}")
            if shard not in files:
                files[shard] = _SafetensorsFile(os.path.join(base, shard))
            return files[shard].tensor(name)
        names = weight_map.keys()
    else:
        single = _SafetensorsFile(source)
        lookup = single.tensor
        names = single.header.keys()
    layers = sorted({int(n.split(".")[2]) for n in names
                     if n.startswith("model.layers.") and ".mlp.up_proj.weight" in n})
    if not layers or layers != list(range(len(layers))):
        raise OSError(f"{source}: no model.layers.N.mlp.up_proj.weight tensors for N = 0..L-1 "
                      f"(found layers {layers[:8]})")

    def layer(l):
        prefix = f"model.layers.{l}.mlp."
        gate_name = prefix + "gate_proj.weight"
        gate = lookup(gate_name) if gate_name in names else None
        return (gate, lookup(prefix + "up_proj.weight"), lookup(prefix + "down_proj.weight"))

    return _Layers(len(layers), layer)
