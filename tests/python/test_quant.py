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


if __name__ == "__main__":
    unittest.main()
