"""sparse_mlp.store: writers (in-memory layers, llama2.c, safetensors), the
reader, the command line, and bad files. Each bundle is compared with the
reference (gate row, up row, down column) built by indexing the sources."""

import json
import os
import struct
import tempfile
import unittest

import numpy as np
import torch

from sparse_mlp import store
from sparse_mlp.store.__main__ import main as store_main

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "stories260K.bin")


def tmpdir():
    return tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR"))


def reference(gate, up, down, neuron, down_neuron_major=False):
    column = down[neuron] if down_neuron_major else down[:, neuron]
    rows = ([] if gate is None else [gate[neuron]]) + [up[neuron], column]
    return torch.stack([torch.as_tensor(np.asarray(r)) if not torch.is_tensor(r) else r
                        for r in rows])


def random_layers(gen, count, i, h, dtype, gated=True):
    return [((torch.randn(i, h, generator=gen).to(dtype) if gated else None),
             torch.randn(i, h, generator=gen).to(dtype),
             torch.randn(h, i, generator=gen).to(dtype)) for _ in range(count)]


def check_all(test, path, layers, begin=0, down_neuron_major=False, **reader_args):
    reader = store.Reader(path, **reader_args)
    count = reader.layout["intermediate_size"]
    for l, (gate, up, down) in enumerate(layers):
        got = reader.read(l, list(range(count)))
        for n in range(count):
            want = reference(gate, up, down, begin + n, down_neuron_major)
            test.assertTrue(torch.equal(got[n], want.to(got.dtype)),
                            f"{path}: layer {l} neuron {n}")


class WriteReadTest(unittest.TestCase):
    def test_every_dtype_and_form(self):
        gen = torch.Generator().manual_seed(1)
        with tmpdir() as d:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                for gated in (True, False):
                    layers = random_layers(gen, 3, 40, 37, dtype, gated)
                    path = os.path.join(d, f"{dtype}_{gated}.spmlb")
                    layout = store.write(path, layers, alignment=512)
                    self.assertEqual(layout["num_layers"], 3)
                    self.assertEqual(layout["gated"], gated)
                    for engine in ("io_uring", "pread"):
                        check_all(self, path, layers, engine=engine)
                    check_all(self, path, layers, direct_io="never")

    def test_numpy_modules_neuron_major_slices_and_conversion(self):
        gen = torch.Generator().manual_seed(2)
        layers = random_layers(gen, 2, 64, 48, torch.float32)
        with tmpdir() as d:
            path = os.path.join(d, "np.spmlb")
            store.write(path, [tuple(t.numpy() for t in l) for l in layers])
            check_all(self, path, layers)
            nm = [(g, u, dn.t().contiguous()) for g, u, dn in layers]
            store.write(path, nm, down_neuron_major=True)
            check_all(self, path, layers)
            modules = []
            for g, u, dn in layers:
                m = torch.nn.Module()
                m.gate_proj, m.up_proj, m.down_proj = (torch.nn.Linear(48, 64, bias=False),
                                                       torch.nn.Linear(48, 64, bias=False),
                                                       torch.nn.Linear(64, 48, bias=False))
                m.gate_proj.weight.data, m.up_proj.weight.data, m.down_proj.weight.data = g, u, dn
                modules.append(m)
            store.write(path, modules)
            check_all(self, path, layers)
            layout = store.write(path, layers, neurons=(10, 30))
            self.assertEqual((layout["neuron_begin"], layout["intermediate_size"],
                              layout["model_intermediate_size"]), (10, 20, 64))
            check_all(self, path, layers, begin=10)
            store.write(path, layers, dtype="bfloat16")
            check_all(self, path, [tuple(t.bfloat16() for t in l) for l in layers])

    def test_bad_arguments(self):
        gen = torch.Generator().manual_seed(3)
        layers = random_layers(gen, 1, 8, 8, torch.float32)
        with tmpdir() as d:
            path = os.path.join(d, "x.spmlb")
            with self.assertRaisesRegex(ValueError, "at least one layer"):
                store.write(path, [])
            with self.assertRaisesRegex(ValueError, "alignment must be a power of two"):
                store.write(path, layers, alignment=1000)
            with self.assertRaisesRegex(ValueError, "neurons must be a range"):
                store.write(path, layers, neurons=(4, 40))
            with self.assertRaisesRegex(TypeError, "torch.Tensor or numpy.ndarray"):
                store.write(path, [(None, "up", "down")])
            mixed = layers + [tuple(t.bfloat16() for t in layers[0])]
            with self.assertRaisesRegex(TypeError, "layer 1: the weights are bfloat16"):
                store.write(path, mixed)
            self.assertFalse(os.path.exists(path))
            self.assertFalse(os.path.exists(path + ".partial"))
            store.write(path, layers)
            reader = store.Reader(path)
            with self.assertRaisesRegex(ValueError, "neuron 8 out of range"):
                reader.read(0, [8])
            with self.assertRaisesRegex(ValueError, "out must be"):
                reader.read(0, [1], out=torch.empty(1, 5))
            with self.assertRaisesRegex(ValueError, "engine"):
                store.Reader(path, engine="aio")
            with self.assertRaisesRegex(ValueError, "queue_depth must be in"):
                store.Reader(path, queue_depth=0)


class BadFileTest(unittest.TestCase):
    def test_missing_truncated_corrupt(self):
        gen = torch.Generator().manual_seed(4)
        layers = random_layers(gen, 2, 16, 64, torch.float32)
        with tmpdir() as d:
            path = os.path.join(d, "bad.spmlb")
            with self.assertRaisesRegex(OSError, "cannot open"):
                store.Reader(path)
            layout = store.write(path, layers)
            with open(path, "rb") as f:
                raw = bytearray(f.read())
            with open(path, "wb") as f:
                f.write(raw[:-4096])
            with self.assertRaisesRegex(OSError, "truncated"):
                store.info(path)
            corrupt = bytearray(raw)
            corrupt[layout["header_bytes"] + 3 * layout["bundle_stride"] + 5] ^= 0x40
            with open(path, "wb") as f:
                f.write(corrupt)
            reader = store.Reader(path)
            with self.assertRaisesRegex(OSError, "layer 0 neuron 3 .*checksum mismatch"):
                reader.read(0, [2, 3, 4])
            reader.read(0, [2, 4])  # the others are fine
            corrupt = bytearray(raw)
            corrupt[0:8] = b"NOTABUND"
            with open(path, "wb") as f:
                f.write(corrupt)
            with self.assertRaisesRegex(OSError, "not a sparse_mlp bundle file"):
                store.info(path)


def write_safetensors(path, tensors):
    """A minimal safetensors writer (the format: u64 header length, JSON,
    raw little-endian data)."""
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 \
            else t.contiguous().numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


class ConvertTest(unittest.TestCase):
    def test_llama2c(self):
        raw = np.fromfile(DATA, dtype=np.uint8)
        dim, hidden, nl, heads, kv, vocab, seq = struct.unpack("7i", raw[:28].tobytes())
        with tmpdir() as d:
            path = os.path.join(d, "stories.spmlb")
            self.assertEqual(store_main(["convert", DATA, path]), 0)
            layout = store.info(path)
            self.assertEqual((layout["hidden_size"], layout["intermediate_size"],
                              layout["num_layers"], layout["dtype"]),
                             (dim, hidden, nl, "float32"))
            # The reference from the checkpoint's own layout (w1, w2, w3 after
            # the attention weights).
            floats = torch.from_numpy(raw[28:].view(np.float32).copy())
            kv_dim = dim * kv // heads
            start = abs(vocab) * dim + nl * dim + 2 * nl * dim * dim + 2 * nl * kv_dim * dim \
                + nl * dim
            per = hidden * dim
            w1 = floats[start:start + nl * per].view(nl, hidden, dim)
            w2 = floats[start + nl * per:start + 2 * nl * per].view(nl, dim, hidden)
            w3 = floats[start + 2 * nl * per:start + 3 * nl * per].view(nl, hidden, dim)
            check_all(self, path, [(w1[l], w3[l], w2[l]) for l in range(nl)])
            self.assertEqual(store_main(["info", path]), 0)

    def test_safetensors_single_and_sharded(self):
        gen = torch.Generator().manual_seed(5)
        layers = random_layers(gen, 3, 24, 16, torch.bfloat16)
        tensors = {"model.embed_tokens.weight": torch.randn(10, 16).bfloat16()}
        for l, (g, u, dn) in enumerate(layers):
            tensors[f"model.layers.{l}.mlp.gate_proj.weight"] = g
            tensors[f"model.layers.{l}.mlp.up_proj.weight"] = u
            tensors[f"model.layers.{l}.mlp.down_proj.weight"] = dn
        with tmpdir() as d:
            single = os.path.join(d, "model.safetensors")
            write_safetensors(single, tensors)
            out = os.path.join(d, "st.spmlb")
            store.convert(single, out)
            check_all(self, out, layers)
            # Sharded: layer 0 in one shard, the rest in another, an index.
            shard_dir = os.path.join(d, "sharded")
            os.mkdir(shard_dir)
            first = {k: v for k, v in tensors.items() if "layers.0." in k}
            rest = {k: v for k, v in tensors.items() if k not in first}
            write_safetensors(os.path.join(shard_dir, "a.safetensors"), first)
            write_safetensors(os.path.join(shard_dir, "b.safetensors"), rest)
            with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
                json.dump({"weight_map": {**{k: "a.safetensors" for k in first},
                                          **{k: "b.safetensors" for k in rest}}}, f)
            store.convert(shard_dir, out, dtype="float32")
            check_all(self, out, [tuple(t.float() for t in l) for l in layers])
            with self.assertRaisesRegex(OSError, "no model.layers.N.mlp.up_proj.weight"):
                write_safetensors(single, {"x": torch.zeros(2, 2)})
                store.convert(single, out)
            self.assertEqual(store_main(["convert", os.path.join(d, "missing.safetensors"), out]),
                             1)


if __name__ == "__main__":
    unittest.main()
