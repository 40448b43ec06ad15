"""sparse_mlp.quantize / quantize_mlp and the forward over quantized rows:
round trips against float64, zero-copy views, the native forward against
a float64 forward on the dequantized weights, bad input refused."""

import unittest

import numpy as np
import torch

import sparse_mlp
from sparse_mlp import quant


def reference(x, gate, up, down, indices=None):
    """float64 gated SiLU MLP on dequantized weights; down [H, I]."""
    x, gate, up, down = (t.double() for t in (x, gate, up, down))
    if indices is not None:
        idx = torch.as_tensor(indices, dtype=torch.long)
        gate, up, down = gate[idx], up[idx], down[:, idx]
    h = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
    return h @ down.T


class QuantizeTest(unittest.TestCase):
    def test_round_trip_and_views(self):
        gen = torch.Generator().manual_seed(0)
        for fmt, group in (("int8", 32), ("int8", 64), ("int8", 0), ("q4", 32), ("q4", 64)):
            w = torch.randn(24, 128, generator=gen) * 0.05
            q = sparse_mlp.quantize(w, fmt, group=group)
            self.assertEqual(q.shape, (24, 128))
            self.assertEqual(q.data.data_ptr(), q.rows.data_ptr())  # views, no copies
            self.assertEqual(q.scales.dtype, torch.float16)
            self.assertEqual(q.scales.shape, (24, 128 // (group or 128)))
            back = q.dequantize()
            self.assertEqual(back.shape, w.shape)
            self.assertEqual(back.dtype, torch.float32)
            g = group or 128
            scales = q.scales.float().repeat_interleave(g, dim=1)
            err = (back.double() - w.double()).abs()
            if fmt == "int8":
                self.assertTrue(bool((err <= scales.double() * 0.5 + 1e-9).all()), fmt)
            else:
                self.assertLess(float(err.max()), float(scales.max()) * 1.5, fmt)

    def test_numpy_in_numpy_out(self):
        w = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float32)
        q = sparse_mlp.quantize(w, "int8", group=32)
        self.assertIsInstance(q.rows, np.ndarray)
        self.assertTrue(np.shares_memory(q.data, q.rows))
        self.assertTrue(np.shares_memory(q.scales, q.rows))
        self.assertEqual(q.dequantize().shape, (8, 64))

    def test_bad_input(self):
        w = torch.randn(4, 64)
        w[2, 17] = float("nan")
        with self.assertRaisesRegex(ValueError, "row 2: weight 17"):
            sparse_mlp.quantize(w, "int8")
        with self.assertRaisesRegex(ValueError, "int8 group 48"):
            sparse_mlp.quantize(torch.randn(4, 96), "int8", group=48)
        with self.assertRaisesRegex(ValueError, "q4 group 128"):
            sparse_mlp.quantize(torch.randn(4, 256), "q4", group=128)
        with self.assertRaisesRegex(ValueError, "outside float16's range"):
            sparse_mlp.quantize(torch.full((2, 64), 1e-12), "q4")
        with self.assertRaisesRegex(ValueError, "fmt must be one of"):
            sparse_mlp.quantize(torch.randn(4, 64), "int4")
        with self.assertRaisesRegex(TypeError, "floating point"):
            sparse_mlp.quantize(np.ones((4, 64), dtype=np.int32), "int8")
        with self.assertRaisesRegex(ValueError, "down must be"):
            sparse_mlp.quantize_mlp(torch.randn(8, 64), torch.randn(8, 64), torch.randn(8, 64))


class QuantizedForwardTest(unittest.TestCase):
    def test_matches_float64_on_dequantized_weights(self):
        gen = torch.Generator().manual_seed(3)
        i, h = 96, 128
        for fmt, group in (("int8", 32), ("int8", 0), ("q4", 32), ("q4", 64)):
            gate, up = torch.randn(i, h, generator=gen) * 0.3, torch.randn(i, h, generator=gen) * 0.3
            down = torch.randn(h, i, generator=gen) * 0.3
            q = sparse_mlp.quantize_mlp(gate, up, down, fmt, group=group)
            self.assertEqual(q.down.shape, (h, i))
            dg, du, dd = q.gate.dequantize(), q.up.dequantize(), q.down.dequantize()
            self.assertEqual(dd.shape, (h, i))
            for tokens in (1, 3, 16):
                x = torch.randn(tokens, h, generator=gen)
                for indices in (None, torch.tensor([0, 5, 6, 40, 95])):
                    for threads in (1, 2):
                        y = sparse_mlp.mlp_forward(x, q.gate, q.up, q.down, indices=indices,
                                                   num_threads=threads)
                        want = reference(x, dg, du, dd, indices)
                        err = float((y.double() - want).abs().max())
                        self.assertLess(err, 1e-4 * float(want.abs().max()) + 1e-5,
                                        f"{fmt} {group} T={tokens} {indices is not None}")
            y1 = sparse_mlp.mlp_forward(x[0], q.gate, q.up, q.down)
            self.assertEqual(y1.shape, (h,))

    def test_quantized_weights_come_together(self):
        q = sparse_mlp.quantize_mlp(torch.randn(8, 64), torch.randn(8, 64), torch.randn(64, 8))
        with self.assertRaisesRegex(TypeError, "come together"):
            sparse_mlp.mlp_forward(torch.randn(64), q.gate, q.up, torch.randn(64, 8))
        with self.assertRaisesRegex(ValueError, "indices must be in"):
            quant.mlp_forward_quantized(torch.randn(64), q, indices=[8])


class QuantizedStoreTest(unittest.TestCase):
    def test_write_and_serve_from_the_tier(self):
        import os
        import tempfile
        gen = torch.Generator().manual_seed(4)
        i, h, layers = 64, 128, 3
        mlps = [(torch.randn(i, h, generator=gen) * 0.2, torch.randn(i, h, generator=gen) * 0.2,
                 torch.randn(h, i, generator=gen) * 0.2) for _ in range(layers)]
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as tmp:
            for fmt, group in (("int8", 32), ("q4", 64)):
                path = os.path.join(tmp, f"{fmt}.spmlb")
                layout = sparse_mlp.store.write(path, mlps, dtype=fmt, group=group)
                self.assertEqual(layout["dtype"], fmt)
                self.assertEqual(layout["quant_group"], group)
                self.assertEqual(layout["alignment"], 512)  # small bundles, little padding
                q = [sparse_mlp.quantize_mlp(*m, fmt, group=group) for m in mlps]
                self.assertEqual(layout["bundle_bytes"], 3 * q[0].up.rows.shape[1])
                self.assertEqual(sparse_mlp.store.info(path)["dtype"], fmt)
                # QuantizedMLP layers write the same bytes.
                again = os.path.join(tmp, f"{fmt}_again.spmlb")
                sparse_mlp.store.write(again, q)
                with open(path, "rb") as a, open(again, "rb") as b:
                    self.assertEqual(a.read(), b.read())
                tier = sparse_mlp.ModelCache.from_file(path, budget_bytes=32 << 20)
                self.assertEqual(tier.dtype, fmt)
                for step in range(6):
                    l = step % layers
                    mask = torch.rand(i, generator=gen) < 0.4
                    x = torch.randn(h, generator=gen)
                    y = tier.step(l, mask, x)
                    want = sparse_mlp.mlp_forward(x, q[l].gate, q[l].up, q[l].down,
                                                  indices=torch.nonzero(mask).squeeze(1))
                    self.assertLess(float((y - want).abs().max()),
                                    1e-5 * float(want.abs().max()) + 1e-6, f"{fmt} step {step}")
                with self.assertRaisesRegex(ValueError, "layer 0: the layer is int8"):
                    sparse_mlp.store.write(os.path.join(tmp, "bad.spmlb"),
                                           [sparse_mlp.quantize_mlp(*mlps[0], "int8")],
                                           dtype="q4")


def random_mlp(gen, i, h, scale=0.3):
    return (torch.randn(i, h, generator=gen) * scale, torch.randn(i, h, generator=gen) * scale,
            torch.randn(h, i, generator=gen) * scale)


class LinearLayoutTest(unittest.TestCase):
    def test_down_along_i_matches_float64(self):
        gen = torch.Generator().manual_seed(8)
        i, h = 96, 128
        for fmt, group in (("int8", 32), ("int8", 0), ("q4", 32)):
            q = sparse_mlp.quantize_mlp(*random_mlp(gen, i, h), fmt, group=group, linear=True)
            self.assertFalse(q.down.transposed)
            self.assertEqual(q.down.shape, (h, i))
            self.assertEqual(q.down.rows.shape[0], h)  # one row per output, along I
            x = torch.randn(4, h, generator=gen)
            for threads in (1, 2):
                y = sparse_mlp.mlp_forward(x, q.gate, q.up, q.down, num_threads=threads)
                want = reference(x, q.gate.dequantize(), q.up.dequantize(), q.down.dequantize())
                self.assertLess(float((y.double() - want).abs().max()),
                                1e-4 * float(want.abs().max()) + 1e-5, f"{fmt} {group}")
            with self.assertRaisesRegex(ValueError, "indices need each neuron's down column"):
                sparse_mlp.mlp_forward(x, q.gate, q.up, q.down, indices=[1, 2])
        with self.assertRaisesRegex(ValueError, "down: .*int8 group 64"):
            sparse_mlp.quantize_mlp(*random_mlp(gen, 96, 128), "int8", group=64, linear=True)


class QuantizedCacheTest(unittest.TestCase):
    def test_weight_cache_over_quantized_rows(self):
        gen = torch.Generator().manual_seed(11)
        i, h = 80, 128
        for fmt, group in (("int8", 32), ("q4", 64)):
            q = sparse_mlp.quantize_mlp(*random_mlp(gen, i, h), fmt, group=group)
            for layout in ("split", "interleaved", "fused"):
                mask = torch.rand(i, generator=gen) < 0.3
                c = sparse_mlp.WeightCache(mask, q.gate, q.up, q.down, layout=layout,
                                           num_threads=2)
                self.assertEqual(c.dtype, fmt)
                for step in range(8):
                    mask = torch.rand(i, generator=gen) < 0.1 + 0.05 * step
                    x = torch.randn(3, h, generator=gen)
                    y = c.step(mask, x)
                    c.verify()
                    idx = torch.nonzero(mask).squeeze(1)
                    want = sparse_mlp.mlp_forward(x, q.gate, q.up, q.down, indices=idx)
                    self.assertLess(float((y - want).abs().max()),
                                    1e-5 * float(want.abs().max()) + 1e-6,
                                    f"{fmt} {layout} step {step}")
                    self.assertTrue(torch.equal(c.forward(x), y))
                    # Views: the packed rows, as QuantizedTensor, slot order.
                    up = c.up()
                    self.assertIsInstance(up, sparse_mlp.QuantizedTensor)
                    slots = c.active_indices()
                    self.assertTrue(torch.equal(up.dequantize(), q.up.dequantize()[slots]))
                    self.assertTrue(torch.equal(c.down_rows().dequantize(),
                                                q.down.dequantize().T[slots]))
                with self.assertRaisesRegex(ValueError, "needs float rows"):
                    c.down_hidden_major()
                with self.assertRaisesRegex(TypeError, "x must be float32"):
                    c.forward(torch.randn(h).bfloat16())

    def test_bad_quantized_sources_change_nothing(self):
        gen = torch.Generator().manual_seed(12)
        w = random_mlp(gen, 32, 64)
        q8 = sparse_mlp.quantize_mlp(*w, "int8", group=32)
        q4 = sparse_mlp.quantize_mlp(*w, "q4", group=32)
        lin = sparse_mlp.quantize_mlp(*w, "int8", group=32, linear=True)
        mask = torch.zeros(32, dtype=torch.bool)
        with self.assertRaisesRegex(ValueError, "gate_weight is q4 group 32"):
            sparse_mlp.WeightCache(mask, q4.gate, q8.up, q8.down)
        with self.assertRaisesRegex(TypeError, "down_weight must be a QuantizedTensor"):
            sparse_mlp.WeightCache(mask, q8.gate, q8.up, w[2])
        with self.assertRaisesRegex(ValueError, "quantized along I"):
            sparse_mlp.WeightCache(mask, lin.gate, lin.up, lin.down)
        with self.assertRaisesRegex(ValueError, "concat_gate_up needs float rows"):
            sparse_mlp.WeightCache(mask, q8.gate, q8.up, q8.down, concat_gate_up=True)
        c = sparse_mlp.WeightCache(mask, q8.gate, q8.up, q8.down)
        with self.assertRaises(ValueError):
            c.update(torch.ones(31, dtype=torch.bool))
        self.assertEqual(c.num_active, 0)
        c.verify()

    def test_model_cache_of_quantized_layers(self):
        gen = torch.Generator().manual_seed(13)
        i, h = 64, 128
        layers = [sparse_mlp.quantize_mlp(*random_mlp(gen, i, h), "int8", group=64)
                  for _ in range(3)]
        m = sparse_mlp.ModelCache(layers, active_fraction=0.5, num_threads=2)
        self.assertEqual(m.footprint()["weight_bytes"],
                         sum(q.nbytes for q in layers))
        for step in range(5):
            masks = [torch.rand(i, generator=gen) < 0.5 for _ in layers]
            m.update_many(masks)
            x = torch.randn(h, generator=gen)
            for l, q in enumerate(layers):
                m[l].verify()
                want = sparse_mlp.mlp_forward(x, q.gate, q.up, q.down,
                                              indices=torch.nonzero(masks[l]).squeeze(1))
                self.assertLess(float((m.forward(l, x) - want).abs().max()),
                                1e-5 * float(want.abs().max()) + 1e-6)
        q4 = sparse_mlp.quantize_mlp(*random_mlp(gen, i, h), "q4", group=64)
        with self.assertRaisesRegex(ValueError, "layer 1 is q4 group 64"):
            sparse_mlp.ModelCache([layers[0], q4])


class QuantizedModuleTest(unittest.TestCase):
    def test_llama_skip_mlp_paths_match_the_reference(self):
        gen = torch.Generator().manual_seed(14)
        i, h = 96, 128
        w = random_mlp(gen, i, h)
        x = torch.randn(3, h, generator=gen)
        mask = torch.rand(i, generator=gen) < 0.4
        for fmt in ("int8", "q4"):
            ref = sparse_mlp.LlamaSkipMLP.from_dense(*w, 0.5, False, weights=fmt)
            self.assertIsNone(getattr(ref, "gate_proj", None))  # no float weights kept
            self.assertEqual(ref.quantized.fmt, fmt)
            for direct in (False, True):
                m = sparse_mlp.LlamaSkipMLP.from_dense(*w, 0.5, True, weights=fmt, direct=direct)
                for args in ((x,), (x, mask)):
                    y, want = m(*args), ref(*args)
                    self.assertLess(float((y - want).abs().max()),
                                    1e-5 * float(want.abs().max()) + 1e-6,
                                    f"{fmt} direct={direct} mask={len(args) > 1}")
                self.assertEqual(m(x.bfloat16()).dtype, torch.bfloat16)
            # Gate-first keeps the top k by |silu(dequantized gate x)|.
            m = sparse_mlp.LlamaSkipMLP.from_dense(*w, 0.5, True, weights=fmt)
            m(x[:1])
            act = torch.nn.functional.silu(x[:1] @ m.quantized.gate.dequantize().T).abs()
            want = torch.zeros(i, dtype=torch.bool)
            want[act[0].topk(m.k).indices] = True
            kept = torch.zeros(i, dtype=torch.bool)
            kept[m.weight_cache.active_indices()] = True
            self.assertTrue(torch.equal(kept, want), fmt)
        q = sparse_mlp.quantize_mlp(*w, "int8")
        m = sparse_mlp.LlamaSkipMLP.from_dense(q.gate, q.up, q.down, 0.5)
        self.assertIs(m.quantized.up, q.up)
        with self.assertRaisesRegex(ValueError, "weights='q4' but the projections"):
            sparse_mlp.LlamaSkipMLP.from_dense(q.gate, q.up, q.down, weights="q4")

    def test_sparsify_quantized(self):
        gen = torch.Generator().manual_seed(15)
        h, i = 64, 96

        class MLP(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.gate_proj = torch.nn.Linear(h, i, bias=False)
                self.up_proj = torch.nn.Linear(h, i, bias=False)
                self.down_proj = torch.nn.Linear(i, h, bias=False)

            def forward(self, x):
                return self.down_proj(torch.nn.functional.silu(self.gate_proj(x)) *
                                      self.up_proj(x))

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = torch.nn.ModuleList([MLP() for _ in range(3)])

            def forward(self, x):
                for layer in self.layers:
                    x = x + layer(x)
                return x

        torch.manual_seed(0)
        model = Model()
        x = torch.randn(2, h, generator=gen)
        with torch.no_grad():
            dense = model(x)
            with self.assertRaisesRegex(ValueError, "weights must be None or one of"):
                sparse_mlp.sparsify(model, 0.5, weights="int4")
            self.assertIsInstance(model.layers[0], MLP)  # unchanged after the error
            sparse_mlp.sparsify(model, 0.0, weights="int8", group=32)
            self.assertEqual(model.layers[1].quantized.fmt, "int8")
            # Every neuron kept: the dense model on the dequantized weights.
            y = model(x)
            ref = x.clone()
            for layer in model.layers:
                q = layer.quantized
                ref = ref + sparse_mlp.mlp_forward(ref, q.gate.dequantize(), q.up.dequantize(),
                                                   q.down.dequantize())
            self.assertLess(float((y - ref).abs().max()), 1e-4 * float(ref.abs().max()))
            self.assertLess(float((y - dense).abs().max()), 0.05 * float(dense.abs().max()))
            sparse_mlp.densify(model)
            self.assertTrue(torch.equal(model(x), dense))


class QuantizedGateTierTest(unittest.TestCase):
    def test_flash_gate_first_with_a_quantized_gate(self):
        import os
        import tempfile
        gen = torch.Generator().manual_seed(16)
        i, h, layers = 64, 128, 2
        mlps = [random_mlp(gen, i, h, 0.2) for _ in range(layers)]
        with tempfile.TemporaryDirectory(dir=os.environ.get("TEST_TMPDIR")) as tmp:
            path = os.path.join(tmp, "gateless.spmlb")
            sparse_mlp.store.write(path, [(None, u, d) for _, u, d in mlps], dtype="int8",
                                   group=32)
            gates = [sparse_mlp.quantize(g, "int8", group=32) for g, _, _ in mlps]
            tier = sparse_mlp.FlashModelCache(path, 32 << 20, gates=gates, sparsity=0.5)
            for step in range(4):
                l = step % layers
                x = torch.randn(h, generator=gen)
                y = tier.step(l, None, x)
                q = sparse_mlp.quantize_mlp(*mlps[l], "int8", group=32)
                direct = sparse_mlp.LlamaSkipMLP.from_dense(gates[l], q.up, q.down, 0.5,
                                                            direct=True)
                want = direct(x)
                self.assertLess(float((y - want).abs().max()),
                                1e-5 * float(want.abs().max()) + 1e-6, f"step {step}")


def round_x(x):
    """x rounded to int8 per block of 32 as the native code rounds it
    (float32: scale = max|x| / 127, q = rint(x * (1 / scale)))."""
    x = x.detach().float().numpy().astype(np.float32)
    blocks = x.reshape(x.shape[0], -1, 32)
    scale = (np.abs(blocks).max(axis=2, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    q = np.clip(np.rint(blocks * inv), -127, 127)
    return torch.from_numpy((q * scale).astype(np.float32).reshape(x.shape))


class RoundedXTest(unittest.TestCase):
    def test_quantize_x_matches_float64_on_the_rounded_x(self):
        gen = torch.Generator().manual_seed(21)
        i, h = 96, 128
        for fmt, group in (("int8", 32), ("int8", 0), ("q4", 32)):
            q = sparse_mlp.quantize_mlp(*random_mlp(gen, i, h), fmt, group=group)
            dg, du, dd = q.gate.dequantize(), q.up.dequantize(), q.down.dequantize()
            x = torch.randn(3, h, generator=gen)
            xr = round_x(x)
            for indices in (None, torch.tensor([1, 4, 9, 50, 95])):
                y = sparse_mlp.mlp_forward(x, q.gate, q.up, q.down, indices=indices,
                                           quantize_x=True)
                want = reference(xr, dg, du, dd, indices)
                self.assertLess(float((y.double() - want).abs().max()),
                                1e-4 * float(want.abs().max()) + 1e-5, f"{fmt} {group}")
                # x's rounding is visible: the float-x result differs.
                y32 = sparse_mlp.mlp_forward(x, q.gate, q.up, q.down, indices=indices)
                self.assertFalse(torch.equal(y, y32))
            # The cache and the module give the same as the forward.
            mask = torch.zeros(i, dtype=torch.bool)
            mask[[1, 4, 9, 50, 95]] = True
            c = sparse_mlp.WeightCache(mask, q.gate, q.up, q.down)
            self.assertFalse(c.quantize_x)
            c.quantize_x = True
            want = sparse_mlp.mlp_forward(x, q.gate, q.up, q.down, indices=torch.nonzero(mask)
                                          .squeeze(1), quantize_x=True)
            self.assertLess(float((c.forward(x) - want).abs().max()),
                            1e-5 * float(want.abs().max()) + 1e-6)
            m = sparse_mlp.LlamaSkipMLP.from_dense(q.gate, q.up, q.down, 0.0, quantize_x=True)
            self.assertLess(float((m(x, mask) - want).abs().max()),
                            1e-5 * float(want.abs().max()) + 1e-6)
        with self.assertRaisesRegex(ValueError, "quantize_x applies to quantized weights"):
            sparse_mlp.mlp_forward(x, *random_mlp(gen, i, h), quantize_x=True)
        with self.assertRaisesRegex(ValueError, "not a multiple of 32"):
            q40 = sparse_mlp.quantize_mlp(*random_mlp(gen, 8, 40), "int8", group=0)
            sparse_mlp.mlp_forward(torch.randn(40), q40.gate, q40.up, q40.down, quantize_x=True)


if __name__ == "__main__":
    unittest.main()
